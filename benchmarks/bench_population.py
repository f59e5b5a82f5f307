"""Population: does an idle client cost anything? The same 100 participants a round out of 1,000, 10,000 and
100,000 virtual clients, for sequential SplitNN, SplitFed v1 and v2, and FedAvg.

Data: ``synthetic_federated`` (FedProx's synthetic(alpha, beta), 60 features, 10 classes), its natural partition,
the same number of samples per client at every population (``--samples-per-client``, equal sizes by default, so
a round's 100 participants do the same arithmetic whatever the population). Model: ``mlp`` cut at ``relu1``.

Each run is a fresh process with a fresh local Ray (``raysplit run``'s code path, writing its results directory
and a checkpoint every round, as a user's run does), timed from the log: the *round period* is the time between
two rounds' log lines (training, ledger and FLOP drains, the results tables priced and written, the checkpoint);
the first round (start-up) and the last (it evaluates the model on a test set that grows with the data) are
left out; ``train`` is the round's own ``wall_s`` (training and drains only). Memory: PSS summed over the run's
driver and every process it started (Ray's and the party hosts'), sampled every 0.25 s over the whole run,
data generation included; the peak. Populations are interleaved (each repeat runs every population of an
algorithm in a rotated order), so machine drift hits them alike; medians over repeats.

    PYTHONPATH=. python benchmarks/bench_population.py                  # records benchmarks/README.md's section
    PYTHONPATH=. python benchmarks/bench_population.py --algorithms fedavg --populations 1000 100000 --repeats 1 --no-record
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADING = "## Population: 1,000 to 100,000 clients, 100 a round"
ALGORITHMS = {  # name -> config overrides
    "sequential": ["algorithm=splitnn", "schedule=sequential"],
    "v1": ["algorithm=splitfed", "splitfed=v1"],
    "v2": ["algorithm=splitfed", "splitfed=v2"],
    "fedavg": ["algorithm=fedavg"],
}
ROUND_LINE = re.compile(r"^round (\d+)/(\d+): ")


def experiment(clients: int, algorithm: str, args, out: str) -> "config.ExperimentConfig":  # noqa: F821
    from raysplit import catalog

    raw = {
        "name": f"population-{algorithm}-{clients}", "seed": 0, "output_dir": out,
        "data": {"dataset": "synthetic_federated", "partition": "natural", "num_clients": clients,
                 "synthetic_samples": args.samples_per_client * clients, "synthetic_shape": [args.features],
                 "synthetic_classes": args.classes, "sizes": args.sizes},
        "model": {"name": "mlp", "cut_layers": ["relu1"]},
        "training": {"rounds": args.rounds, "batch_size": args.batch_size, "clients_per_round": args.per_round,
                     "lr": 0.05, "momentum": 0.9},
        "runtime": {"workers": args.workers, "worker": {"num_cpus": 0.5}, "server": {"num_cpus": 0.5},
                    "eval_every": args.rounds + 1},
    }
    return catalog.config_from_dict(raw, [*ALGORITHMS[algorithm], *args.set])


class Stamps(logging.Handler):
    """When each of raysplit's log lines of interest was emitted (perf_counter seconds)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rounds: dict[int, float] = {}
        self.started = None

    def emit(self, record: logging.LogRecord) -> None:
        msg, now = record.getMessage(), time.perf_counter()
        m = ROUND_LINE.match(msg)
        if m:
            self.rounds[int(m.group(1))] = now
        elif " clients on " in msg and self.started is None:      # logged once the party hosts have started
            self.started = now


def one(clients: int, algorithm: str, args) -> dict:
    """One run in this process (a fresh Ray): its round periods and its peak PSS over all processes."""
    import ray  # noqa: F401  (puts ray's bundled psutil on the path)
    import psutil

    sys.path.insert(0, str(HERE))
    from bench_scale import MemoryPeak

    from raysplit.experiment import prepare, run

    class Grouped(MemoryPeak):
        """Also what the driver, the party hosts and Ray's own processes held at the total's peak."""
        at_peak: dict = {}

        def sample(self) -> None:
            me = psutil.Process(os.getpid())
            now = {"driver": 0, "party hosts": 0, "Ray's own": 0}
            procs = [me, *me.children(recursive=True)]
            for p in procs:
                try:
                    pss, cmd = p.memory_full_info().pss, " ".join(p.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                now["driver" if p.pid == me.pid else "party hosts" if cmd.startswith("ray::PartyHost") else "Ray's own"] += pss
            if sum(now.values()) > self.peak_pss:
                self.peak_pss, self.at_peak = sum(now.values()), now
            self.peak_processes = max(self.peak_processes, len(procs))

    # the driver's own per-round work outside the round's wall_s, timed where the experiment loop calls it
    from raysplit import experiment as experiment_mod

    spent = {"tables": [], "checkpoint": []}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key].append(time.perf_counter() - t)
        return wrapper

    experiment_mod.tables = timed(experiment_mod.tables, "tables")
    experiment_mod.Checkpoints.save = timed(experiment_mod.Checkpoints.save, "checkpoint")
    stamps = Stamps()
    log = logging.getLogger("raysplit")
    log.setLevel(logging.INFO)
    log.addHandler(stamps)
    with tempfile.TemporaryDirectory(prefix="bench-population-") as tmp, Grouped() as mem:
        t0 = time.perf_counter()
        cfg = experiment(clients, algorithm, args, str(Path(tmp) / "run"))
        plan = prepare(cfg)
        t_prepared = time.perf_counter()
        ds = plan.dataset
        data_bytes = sum(a.nbytes for a in (ds.train_x, ds.train_y, ds.test_x, ds.test_y, ds.train_owner))
        result = run(cfg, plan=plan, progress=False)
        t_end = time.perf_counter()
        walls = [float(w) for w in result.metrics["wall_s"]]
    r = sorted(stamps.rounds)
    periods = [stamps.rounds[i] - stamps.rounds[i - 1] for i in r[1:-1]]     # rounds 2 .. R-1
    return dict(clients=clients, algorithm=algorithm, periods=periods, train=walls[1:-1], peak_pss=mem.peak_pss,
                # one call of each per round (the results' tables once more at the end): rounds 2 .. R-1
                at_peak=mem.at_peak, tables=spent["tables"][1:args.rounds - 1],
                checkpoint=spent["checkpoint"][1:args.rounds - 1],
                processes=mem.peak_processes, data_bytes=data_bytes, prepare_s=t_prepared - t0,
                start_s=(stamps.started or t_prepared) - t_prepared, first_round_s=stamps.rounds[r[0]] - (stamps.started or t_prepared),
                total_s=t_end - t0, test_acc=float(result.metrics["test_acc"].iloc[-1]))


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(runs: list[dict], populations: list[int], algorithms: list[str]) -> str:
    out = ["| algorithm | clients | round period s (median) | ratio to the first | train s (median) | ratio | results "
           "tables s | period less tables: ratio | peak PSS GiB, all processes (median) | ratio | data MiB | PSS less the data, GiB | ratio | "
           "prepare s | start s | repeats: round period s / peak PSS GiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in algorithms:
        base = None
        for n in populations:
            rs = [r for r in runs if r["algorithm"] == a and r["clients"] == n]
            if not rs:
                continue
            period = med([med(r["periods"]) for r in rs])
            train = med([med(r["train"]) for r in rs])
            pss = med([r["peak_pss"] for r in rs])
            net = med([r["peak_pss"] - r["data_bytes"] for r in rs])
            rest = med([med(r["periods"]) - med(r["tables"]) for r in rs])
            if base is None:
                base = (period, train, pss, net, rest)
            out.append(f"| {a} | {n:,} | {period:.3f} | {period / base[0]:.3f} | {train:.3f} | {train / base[1]:.3f} | "
                       f"{med([med(r['tables']) for r in rs]):.3f} | {rest / base[4]:.3f} | "
                       f"{gib(pss)} | {pss / base[2]:.3f} | {rs[0]['data_bytes'] / 2**20:.0f} | {gib(net)} | "
                       f"{net / base[3]:.3f} | "
                       f"{med([r['prepare_s'] for r in rs]):.1f} | {med([r['start_s'] for r in rs]):.1f} | "
                       + ", ".join(f"{med(r['periods']):.3f} / {gib(r['peak_pss'])}" for r in rs) + " |")
    return "\n".join(out)


def record(text: str) -> None:
    """Replace (or append) this benchmark's section of benchmarks/README.md; other sections are left alone."""
    path = HERE / "README.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{HEADING}\n\n{text.strip()}\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    path.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--populations", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    p.add_argument("--per-round", type=int, default=100, help="training.clients_per_round")
    p.add_argument("--rounds", type=int, default=6, help="rounds per run (the first and the last are not timed)")
    p.add_argument("--repeats", type=int, default=2, help="runs per (algorithm, population), interleaved")
    p.add_argument("--samples-per-client", type=int, default=10)
    p.add_argument("--sizes", choices=["equal", "lognormal"], default="equal")
    p.add_argument("--features", type=int, default=60)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run, e.g. runtime.step_transport=ray (repeatable)")
    p.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/README.md alone")
    p.add_argument("--save", metavar="JSON", help="also write every run's measurements to this file")
    p.add_argument("--load", metavar="JSON", action="append", default=[],
                   help="runs saved with --save to count in too (with --repeats 0: tabulate and record them only)")
    p.add_argument("--attempts", type=int, default=3, help="tries per run (a run whose Ray fails to start is retried)")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)      # clients, algorithm: one run in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args)))
        return 0
    if args.rounds < 3:
        p.error("--rounds: at least 3 (the first and the last are not timed)")

    started, load0 = datetime.now(), os.getloadavg()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    passed = sys.argv[1:] if argv is None else list(argv)
    runs = [r for path in args.load for r in json.loads(Path(path).read_text())]
    for rep in range(args.repeats):
        for a in args.algorithms:
            shift = rep % len(args.populations)              # rotate which population goes first
            for n in args.populations[shift:] + args.populations[:shift]:
                for attempt in range(1, args.attempts + 1):   # a busy machine: Ray's start can time out (30 s)
                    proc = subprocess.run([sys.executable, __file__, *passed, "--one", str(n), a], env=env,
                                          capture_output=True, text=True)
                    if proc.returncode == 0:
                        break
                    print(f"{a}, {n:,} clients: attempt {attempt} failed (exit {proc.returncode}): "
                          f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}", flush=True)
                if proc.returncode != 0:
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.append(r)
                if args.save:
                    Path(args.save).write_text(json.dumps(runs, indent=1) + "\n")
                print(f"repeat {rep + 1}, {a}, {n:,} clients: round period {med(r['periods']):.3f} s "
                      f"({', '.join(f'{x:.3f}' for x in r['periods'])}), train {med(r['train']):.3f} s, tables "
                      f"{med(r['tables']):.3f} s, checkpoint {med(r['checkpoint']):.3f} s, peak PSS "
                      f"{gib(r['peak_pss'])} GiB ({', '.join(f'{k} {gib(v)}' for k, v in r['at_peak'].items())}), data {r['data_bytes'] / 2**20:.0f} MiB, prepare {r['prepare_s']:.1f} s, "
                      f"hosts {r['start_s']:.1f} s, run {r['total_s']:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    text = table(runs, args.populations, args.algorithms)
    print(text)
    if args.no_record:
        return 0
    sys.path.insert(0, str(HERE))
    from bench_scale import machine

    shown = [a for i, a in enumerate(passed) if a != "--save" and (i == 0 or passed[i - 1] != "--save")]
    cmd = "PYTHONPATH=. python benchmarks/bench_population.py " + " ".join(shown)
    counts: dict = {}
    for r in runs:
        counts[r["algorithm"], r["clients"]] = counts.get((r["algorithm"], r["clients"]), 0) + 1
    low, high = min(counts.values(), default=0), max(counts.values(), default=0)
    runs_of = f"{low}" if low == high else f"{low}-{high}"
    record(f"""Command: `{cmd.strip()}` ({started:%Y-%m-%d %H:%M}, {(datetime.now() - started).seconds // 60} min).
Machine: {machine()}. Load average {load0[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other
sessions were running on the same 2 cores: absolute times are noisy; populations were interleaved).

Setup: `synthetic_federated` ({args.features} features, {args.classes} classes), its natural partition, {args.samples_per_client}
samples per client ({args.sizes} sizes) at every population; `mlp` cut at `relu1`, batch {args.batch_size}, SGD;
`training.clients_per_round: {args.per_round}`; {args.workers} worker actors and the server (`num_cpus: 0.5` each); a results
directory written and a checkpoint taken every round. {args.rounds} rounds a run; round period: the time between
two rounds' log lines, median over rounds 2..{args.rounds - 1} (round 1 starts up, round {args.rounds} evaluates), then
over the repeats ({runs_of} runs of each); train: the rounds' own `wall_s` (training and drains). Peak PSS over the whole run
(data generation, Ray start, every party host), summed over all processes; data: the training and test arrays and the
owners (held once in the object store; the driver holds the test set, and its copy of the training set while
generating it).

{text}
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
