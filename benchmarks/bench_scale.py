"""Scale: 100 and 500 Fashion-MNIST clients, sequential SplitNN vs SplitFed v1 / v2 on a pool of worker actors.

For each (clients, schedule) one run on a local Ray: the first round warms up, the next ``--rounds`` are
timed (median wall time per round, from metrics.csv's ``wall_s``: training, ledger and FLOP drains, no
evaluation). Meanwhile a sampler sums the memory of every process of the run — this driver and all its
descendants (Ray's GCS, raylet, the party hosts' worker processes) — as PSS (shared pages split between
the processes sharing them, so torch's libraries count once) and as RSS (shared pages counted in every
process), and keeps the peaks.

The reference is the same arithmetic in one process without Ray: the unsplit network trained on the very
same batches (every client's, in the round's order) with the same torch threads as one party host.
``throughput / reference`` = reference time / raysplit time for one round; ``speed-up`` = sequential time /
parallel time with the same worker actors.

    PYTHONPATH=. python benchmarks/bench_scale.py                      # writes benchmarks/README.md's section
    PYTHONPATH=. python benchmarks/bench_scale.py --clients 100 --schedules v1 --rounds 1 --no-record
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path

import ray
import torch

import psutil   # after ray: ray[default] ships it (ray/thirdparty_files, put on sys.path by `import ray`)

from raysplit import config
from raysplit.data import batches
from raysplit.experiment import prepare, run
from raysplit.engine import make_optimizer
from raysplit.host import configure_torch
from raysplit.schedule import client_order
from raysplit.topology import ComposedNet

HERE = Path(__file__).resolve().parent
HEADING = "## Scale: 100 and 500 clients"
SCHEDULES = {  # name -> config overrides
    "sequential": ["algorithm=splitnn", "schedule=sequential"],
    "v1": ["schedule=parallel", "splitfed=v1"],
    "v2": ["schedule=parallel", "splitfed=v2"],
}


class MemoryPeak(threading.Thread):
    """Peak of the memory summed over this process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0

    def sample(self) -> None:
        me = psutil.Process(os.getpid())
        pss = rss = 0
        procs = [me, *me.children(recursive=True)]
        for p in procs:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss, rss = pss + info.pss, rss + info.rss
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(procs))

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.sample()
            self.stop_flag.wait(self.interval)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.join()
        self.sample()


def experiment(clients: int, schedule: str, args) -> config.ExperimentConfig:
    raw = {
        "name": f"scale-{clients}-{schedule}", "seed": 0,
        "data": {"dataset": "fashion_mnist", "num_clients": clients, "partition": "iid",
                 "train_samples": args.train_samples, "test_samples": 1000},
        "model": {"name": "fmnist_cnn", "cut_layers": ["pool2"]},
        "training": {"rounds": args.rounds + 1, "batch_size": args.batch_size, "optimizer": "sgd", "lr": 0.05,
                     "momentum": 0.9},
        "runtime": {"workers": args.workers, "worker": {"num_cpus": 0.5}, "server": {"num_cpus": 0.5},
                    "eval_every": args.rounds + 1},
    }
    return config.from_dict(raw, [*SCHEDULES[schedule], *args.set])


def reference_round_seconds(plan, threads: int) -> float:
    """One round's arithmetic in this process: every client's batches, in order, through the unsplit network."""
    cfg, ds = plan.cfg, plan.dataset
    configure_torch(threads, cfg.runtime.deterministic)
    net = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    opt = make_optimizer(net.parameters(), cfg.training)
    t0 = time.perf_counter()
    for k in client_order(cfg, 0):
        for idx in batches(plan.client_indices[k], cfg.training.batch_size, cfg.seed, 0, k):
            x, y = torch.from_numpy(ds.train_x[idx]), torch.from_numpy(ds.train_y[idx])
            loss = torch.nn.functional.cross_entropy(net(x)["y"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def measure(clients: int, schedule: str, args) -> dict:
    cfg = experiment(clients, schedule, args)
    with MemoryPeak() as mem:
        result = run(cfg, progress=False, write=False)
    walls = list(result.metrics["wall_s"])[1:]          # round 1 warms up
    return dict(clients=clients, schedule=schedule, round_s=statistics.median(walls), rounds=walls,
                peak_pss=mem.peak_pss, peak_rss=mem.peak_rss, processes=mem.peak_processes,
                test_acc=float(result.metrics["test_acc"].iloc[-1]))


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def table(rows: list[dict], refs: dict[int, float]) -> str:
    seq = {r["clients"]: r["round_s"] for r in rows if r["schedule"] == "sequential"}
    out = ["| clients | schedule | wall s / round (median) | rounds timed (s) | reference s / round | throughput / reference "
           "| speed-up over sequential | peak memory, all processes: PSS GiB | RSS GiB | processes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = refs[r["clients"]]
        speed = f"{seq[r['clients']] / r['round_s']:.2f}" if r["clients"] in seq and r["schedule"] != "sequential" else "—"
        out.append(f"| {r['clients']} | {r['schedule']} | {r['round_s']:.2f} | {', '.join(f'{w:.1f}' for w in r['rounds'])} "
                   f"| {ref:.2f} | {ref / r['round_s']:.3f} | {speed} | {gib(r['peak_pss'])} | {gib(r['peak_rss'])} "
                   f"| {r['processes']} |")
    return "\n".join(out)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, {gib(psutil.virtual_memory().total)} GiB RAM; Python "
            f"{platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}")


def record(text: str) -> None:
    """Replace (or append) this benchmark's section of benchmarks/README.md; other sections are left alone."""
    path = HERE / "README.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{HEADING}\n\n{text.strip()}\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section
    path.write_text(new.rstrip("\n") + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[100, 500])
    p.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES))
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per run (after one warm-up round)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=12000, help="Fashion-MNIST training subset")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reference-repeats", type=int, default=3)
    p.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/README.md alone")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every schedule, e.g. handoff=server (repeatable)")
    args = p.parse_args(argv)

    started, load0 = datetime.now(), os.getloadavg()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    idle = MemoryPeak()
    idle.sample()
    rows, refs = [], {}
    try:
        for clients in args.clients:
            plan = prepare(experiment(clients, "sequential", args))
            refs[clients] = statistics.median(reference_round_seconds(plan, 1) for _ in range(args.reference_repeats))
            print(f"{clients} clients: reference {refs[clients]:.2f} s/round", flush=True)
            for schedule in args.schedules:
                rows.append(measure(clients, schedule, args))
                r = rows[-1]
                print(f"{clients} clients, {schedule}: {r['round_s']:.2f} s/round ({refs[clients] / r['round_s']:.3f} of "
                      f"the reference's throughput), peak PSS {gib(r['peak_pss'])} GiB, RSS {gib(r['peak_rss'])} GiB",
                      flush=True)
    finally:
        ray.shutdown()
    text = table(rows, refs)
    print(text)
    if args.no_record:
        return
    cmd = "PYTHONPATH=. python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else os.sys.argv[1:])
    record(f"""Command: `{cmd.strip()}` ({started:%Y-%m-%d %H:%M}, {(datetime.now() - started).seconds // 60} min).
Machine: {machine()}. Load average {load0[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end: other
sessions were running on the same 2 cores, so absolute times are noisy; ratios were taken in the same run.

Setup: Fashion-MNIST, the first {args.train_samples} training samples split IID over the clients, `fmnist_cnn` cut
at `pool2`, batch {args.batch_size}, SGD; every client takes part in every round (one local epoch), so a round
is the same arithmetic for every schedule. {args.workers} worker actors host the virtual clients (`num_cpus: 0.5`
each, like the server; one torch thread per host). Wall time per round: median of {args.rounds} timed rounds
after a warm-up round. Reference: the unsplit network on the same batches in one process, one torch thread,
median of {args.reference_repeats}. Peak memory: sampled every 0.25 s, summed over the driver and every Ray
process it started; an idle Ray (before any party host) was PSS {gib(idle.peak_pss)} GiB / RSS {gib(idle.peak_rss)} GiB.

{text}
""")


if __name__ == "__main__":
    main()
