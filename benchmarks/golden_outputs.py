"""Golden outputs: check that a refactor leaves raysplit's behaviour bitwise unchanged.

Runs every shipped config (experiments/*.yaml, experiments/paper/*.yaml, docs/examples/my_lab.yaml), shortened
with ``--set`` overrides to a few seconds each, plus variants that cover the main code paths (hand-off through
the server, Ray step transport, two worker actors, FedAvg, large-batch SGD, centralized, SplitFed v1/v2, ...),
through the real command line (``raysplit.cli.main``) in one Python process sharing one local Ray. Then compares
two such snapshots table by table: metrics.csv, ledger.csv and flops.csv, summary.json (and a compare run's
comparison.csv) exactly, less what measures time, and the trained weights (model/*.pt) tensor by tensor.

    # before the refactor (a worktree of the old commit; PYTHONPATH makes its packages win over the editable install)
    git worktree add /tmp/before HEAD && cp benchmarks/golden_outputs.py /tmp/before/benchmarks/
    cd /tmp/before && PYTHONPATH=/tmp/before python benchmarks/golden_outputs.py run --out /tmp/golden_before
    # after it
    cd /work/main && PYTHONPATH=/work/main python benchmarks/golden_outputs.py run --out /tmp/golden_after
    python benchmarks/golden_outputs.py compare /tmp/golden_before /tmp/golden_after    # exit 0: all the same

    python benchmarks/golden_outputs.py list                 # the runs and their command lines
    python benchmarks/golden_outputs.py run --out DIR --only vanilla   # the runs whose name contains "vanilla"

``run`` writes DIR/<name>/ per run (a compare run: DIR/<name>/<method>/ per method), DIR/_logs/<name>.log (each
run's terminal output), DIR/failures.txt (one line per failed run; empty when none) and DIR/runs.txt (each run's
name, seconds and command line). A failed run is recorded and the next one starts.

Excluded from the comparison, as measurements of time (they differ between two runs of the same code):
  * every column / key whose name starts with ``wall_s`` or ``sim_``: wall_s(_cum) is the wall-clock time of a
    round; sim_* is the simulated time on the config's network, priced with this machine's measured FLOP/s
    (network.machine_flops, cached in ~/.cache/raysplit/machine.json) where the config leaves
    network.*.flops_per_s unset, so it is machine-dependent; the bytes and FLOPs it is priced from are compared.
  * config.yaml and run.log (they hold the measured FLOP/s, timestamps and paths), checkpoints/ (same state
    as model/ and the tables) and pictures (PNG).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]          # the repository (or worktree) this script lies in

# ------------------------------------------------------------------------------------------------ the runs

FMNIST_SHORT = ["data.train_samples=300", "data.test_samples=200"]


def _load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def shorten(raw: dict) -> list[str]:
    """``--set`` overrides that make a config run in seconds, keeping every feature it turns on."""
    data, training = raw.get("data", {}) or {}, raw.get("training", {}) or {}
    attacks, privacy = raw.get("attacks", {}) or {}, raw.get("privacy", {}) or {}
    sets = [f"training.rounds={min(int(training.get('rounds', 3)), 2)}"]
    clients = int(data.get("num_clients", 10))
    if clients > 1:                          # 1: vertical topologies (one sample space) need exactly one
        sets.append(f"data.num_clients={min(clients, 3)}")
    if data.get("dataset", "fashion_mnist") in ("fashion_mnist", "cifar10", "cifar100"):
        sets += FMNIST_SHORT
    if data.get("dataset") == "synthetic" and int(data.get("synthetic_samples", 2048)) > 256:
        sets.append("data.synthetic_samples=256")
    if int(training.get("batch_size", 64)) > 32:
        sets.append("training.batch_size=32")
    if attacks.get("model_inversion"):
        sets += ["attacks.aux_samples=64", "attacks.targets=4", "attacks.decoder_epochs=2"]
    if attacks.get("label_inference"):
        sets.append("attacks.probe=64")
    if privacy.get("leakage_probe"):
        sets.append("privacy.leakage_probe=64")
    return sets


# per config (its file's stem): further overrides, after shorten()'s
EXTRA = {
    # 3 clients at participation 0.1 would train a single client a round: 2 of 4 exercise sampling and averaging
    "splitfed_fmnist": ["data.num_clients=4", "training.participation=0.5"],
}

VANILLA = "experiments/vanilla_fmnist.yaml"
SPLITFED = "experiments/splitfed_fmnist.yaml"
MY_LAB = "docs/examples/my_lab.yaml"

# (name, config, further overrides): the main code paths beyond the configs as shipped
VARIANTS = [
    ("vanilla_fmnist-handoff_server", VANILLA, ["handoff=server"]),
    ("vanilla_fmnist-step_transport_ray", VANILLA, ["runtime.step_transport=ray"]),
    ("vanilla_fmnist-workers_2", VANILLA, ["runtime.workers=2", "runtime.worker.num_cpus=0.5"]),
    ("vanilla_fmnist-fedavg", VANILLA, ["algorithm=fedavg"]),
    ("vanilla_fmnist-large_batch_sgd", VANILLA, ["algorithm=large_batch_sgd"]),
    ("vanilla_fmnist-centralized", VANILLA, ["algorithm=centralized"]),
    ("vanilla_fmnist-splitfed_v1", VANILLA, ["algorithm=splitfed", "schedule=parallel"]),
    ("vanilla_fmnist-splitfed_v2", VANILLA, ["algorithm=splitfed", "schedule=parallel", "splitfed=v2"]),
    ("vanilla_fmnist-misc", VANILLA, ["data.partition=dirichlet", "training.client_order=shuffled",
                                      "training.optimizer=adam", "training.lr=0.001", "training.local_epochs=2",
                                      "compression.activation=float16", "runtime.eval_every=2"]),
    ("splitfed_fmnist-v2", SPLITFED, ["splitfed=v2"]),
    ("splitfed_fmnist-averaging_server", SPLITFED, ["training.averaging_point=server", "runtime.workers=1",
                                                    "runtime.worker.num_cpus=1"]),
    ("privacy_nopeek_fmnist-nopeek_noise", "experiments/privacy_nopeek_fmnist.yaml",
     ["privacy.nopeek=1.0", "privacy.activation_noise=0.5", "privacy.clip=5.0"]),
    ("privacy_label_inference_fmnist-gradient_noise", "experiments/privacy_label_inference_fmnist.yaml",
     ["privacy.gradient_noise=0.00001"]),
    # labels sent by a holder to the server: randomized response on them (a topology whose labels leave their holder)
    ("vertical_breast_cancer-label_epsilon_sum", "experiments/vertical_breast_cancer.yaml",
     ["privacy.label_epsilon=2.0", "vertical.combine=sum"]),
    ("u_shaped_fmnist-splitfed_v1", "experiments/u_shaped_fmnist.yaml", ["algorithm=splitfed", "schedule=parallel"]),
    ("my_lab-fedprox", MY_LAB, ["algorithm=fedprox"]),
]


def configs() -> list[Path]:
    """The shipped configs, as paths relative to ROOT."""
    found = sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "experiments" / "paper").glob("*.yaml"))
    found.append(ROOT / MY_LAB)
    return [p.relative_to(ROOT) for p in found]


def plan(out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv of raysplit.cli.main) for every run, in order."""
    runs = []

    def add(name: str, config: Path, extra: list[str] = ()) -> None:
        raw = _load_yaml(ROOT / config)
        command = "compare" if raw.get("compare") else "run"     # a sweep: section: its base config, plain run
        sets = shorten(raw) + EXTRA.get(config.stem, []) + list(extra)
        argv = [command, str(config)] + [a for s in sets for a in ("--set", s)] + ["--out", str(out / name), "--quiet"]
        if command == "compare":
            argv.append("--no-plots")
        runs.append((name, argv))

    for config in configs():
        add(config.stem, config)
    for name, config, extra in VARIANTS:
        add(name, Path(config), extra)
    return runs


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("raysplit: error:") or ln.startswith("raysplit: interrupted"):
            return ln
    return lines[-1] if lines else "no output"


def cmd_run(args) -> int:
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"golden_outputs: {out} is not empty; give a new directory", file=sys.stderr)
        return 2
    (out / "_logs").mkdir(parents=True, exist_ok=True)
    runs = [(n, a) for n, a in plan(out) if not args.only or any(o in n for o in args.only)]
    os.chdir(ROOT)                       # config paths are relative to the repository
    # the user's modules of docs/examples (my_lab) must be importable by Ray's workers whichever run starts Ray
    # (the CLI adds a config's folder to the workers' PYTHONPATH only when it is the one that starts Ray)
    extra_paths = [str(ROOT / MY_LAB).rsplit("/", 1)[0]]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys(extra_paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    from raysplit import cli

    import raysplit
    print(f"golden_outputs: raysplit from {Path(raysplit.__file__).parent}; {len(runs)} runs into {out}", flush=True)
    failures, timings = [], []
    t_all = time.perf_counter()
    for i, (name, argv) in enumerate(runs, 1):
        t0 = time.perf_counter()
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(_Tee(buf)), contextlib.redirect_stderr(_Tee(buf)):
                rc = cli.main(list(argv))
        except BaseException as e:               # noqa: BLE001 (recorded; the next run starts)
            if isinstance(e, KeyboardInterrupt):
                raise
            buf.write(traceback.format_exc())
            rc, buf_err = 1, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        else:
            buf_err = None
        dt = time.perf_counter() - t0
        (out / "_logs" / f"{name}.log").write_text("raysplit " + shlex.join(argv) + "\n" + buf.getvalue())
        timings.append((name, dt, argv))
        if rc == 0 and (out / name).is_dir():
            status = "ok"
        else:
            why = buf_err or _error_line(buf.getvalue())
            failures.append(f"{name}: exit {rc}: {why}")
            status = f"FAILED ({why})"
        print(f"[{i:2d}/{len(runs)}] {name:48s} {dt:6.1f}s  {status}", flush=True)
    total = time.perf_counter() - t_all
    (out / "failures.txt").write_text("".join(f + "\n" for f in failures))
    (out / "runs.txt").write_text("".join(f"{n}\t{dt:.1f}s\traysplit {shlex.join(a)}\n" for n, dt, a in timings))
    print(f"golden_outputs: {len(runs) - len(failures)} of {len(runs)} runs ok in {total:.0f}s; "
          f"failures: {out / 'failures.txt'}" + (f" ({len(failures)})" if failures else " (none)"), flush=True)
    return 1 if failures else 0


def cmd_list(args) -> int:
    for name, argv in plan(Path(args.out)):
        print(f"{name}\n    raysplit {shlex.join(argv)}")
    return 0


# ------------------------------------------------------------------------------------------------ the comparison

def is_timing(name: str) -> bool:
    """A column or key that measures time (see the module docstring)."""
    return name.startswith("wall_s") or name.startswith("sim_")


def _read_csv(path: Path, drop_timing: bool):
    """The table as text, cell by cell: pandas writes each float as its shortest round-trip repr, so equal
    text is bitwise-equal values (and no parser's rounding can hide a difference)."""
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if drop_timing:
        df = df[[c for c in df.columns if not is_timing(c)]]
    return df


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def diff_tables(a: Path, b: Path, drop_timing: bool) -> str | None:
    """None if the two CSV tables are identical (less timing columns), else the first difference."""
    if not a.is_file() or not b.is_file():
        return f"{a.name} only in {'A' if a.is_file() else 'B'}" if a.is_file() or b.is_file() else None
    da, db = _read_csv(a, drop_timing), _read_csv(b, drop_timing)
    if list(da.columns) != list(db.columns):
        only_a = [c for c in da.columns if c not in db.columns]
        only_b = [c for c in db.columns if c not in da.columns]
        if only_a or only_b:
            return f"{a.name}: columns only in A {only_a}, only in B {only_b}"
        return f"{a.name}: columns in another order"
    if da.shape != db.shape:
        return f"{a.name}: {da.shape[0]} rows in A, {db.shape[0]} in B"
    if da.equals(db):
        return None
    for i in range(len(da)):
        for col in da.columns:
            x, y = da[col].iat[i], db[col].iat[i]
            if x != y:
                return f"{a.name}: row {i} column {col}: {x!r} vs {y!r}"
    return f"{a.name}: differs"


def diff_summary(a: Path, b: Path) -> str | None:
    if not a.is_file() or not b.is_file():
        return f"{a.name} only in {'A' if a.is_file() else 'B'}" if a.is_file() or b.is_file() else None
    ja, jb = (json.loads(p.read_text()) for p in (a, b))
    ja, jb = ({k: v for k, v in j.items() if not is_timing(k)} for j in (ja, jb))
    if ja.keys() != jb.keys():
        return f"summary.json: keys only in A {sorted(ja.keys() - jb.keys())}, only in B {sorted(jb.keys() - ja.keys())}"
    for k in ja:
        if not _same_value(ja[k], jb[k]):
            return f"summary.json: {k}: {ja[k]!r} vs {jb[k]!r}"
    return None


def diff_models(a: Path, b: Path) -> str | None:
    """The trained weights (model/*.pt), tensor by tensor, bitwise."""
    import torch

    fa = sorted(p.name for p in (a / "model").glob("*.pt"))
    fb = sorted(p.name for p in (b / "model").glob("*.pt"))
    if fa != fb:
        return f"model/: files {fa} in A, {fb} in B"
    for name in fa:
        sa = torch.load(a / "model" / name, map_location="cpu", weights_only=True)
        sb = torch.load(b / "model" / name, map_location="cpu", weights_only=True)
        if list(sa) != list(sb):
            return f"model/{name}: keys {list(sa)[:4]}... in A, {list(sb)[:4]}... in B"
        for key in sa:
            ta, tb = sa[key], sb[key]
            if ta.dtype != tb.dtype or ta.shape != tb.shape:
                return f"model/{name}: {key} is {ta.dtype}{list(ta.shape)} in A, {tb.dtype}{list(tb.shape)} in B"
            if not torch.equal(ta, tb):
                return f"model/{name}: {key} differs (max |A-B| {float((ta.double() - tb.double()).abs().max()):.3g})"
    return None


def diff_run(a: Path, b: Path) -> list[str]:
    diffs = [diff_tables(a / "metrics.csv", b / "metrics.csv", drop_timing=True),
             diff_tables(a / "ledger.csv", b / "ledger.csv", drop_timing=True),
             diff_tables(a / "flops.csv", b / "flops.csv", drop_timing=True),
             diff_summary(a / "summary.json", b / "summary.json"),
             diff_models(a, b)]
    return [d for d in diffs if d]


def results_dirs(top: Path) -> set[str]:
    """Folders holding metrics.csv (a run) or comparison.csv (a compare run), relative to ``top``."""
    found = {p.parent for p in top.rglob("metrics.csv")} | {p.parent for p in top.rglob("comparison.csv")}
    return {str(p.relative_to(top)) for p in found if not any(part.startswith(".") for part in p.relative_to(top).parts)}


def cmd_compare(args) -> int:
    a, b = Path(args.a), Path(args.b)
    for d in (a, b):
        if not d.is_dir():
            print(f"golden_outputs: {d} is not a directory", file=sys.stderr)
            return 2
    ra, rb = results_dirs(a), results_dirs(b)
    bad = 0
    for rel in sorted(ra | rb):
        if rel not in rb or rel not in ra:
            print(f"{rel}: only in {'A' if rel in ra else 'B'} ({a if rel in ra else b})")
            bad += 1
            continue
        da, db = a / rel, b / rel
        if (da / "metrics.csv").is_file() or (db / "metrics.csv").is_file():
            diffs = diff_run(da, db)
        else:
            diffs = []
        if (da / "comparison.csv").is_file() or (db / "comparison.csv").is_file():
            d = diff_tables(da / "comparison.csv", db / "comparison.csv", drop_timing=True)
            diffs += [d] if d else []
        print(f"{rel}: {'same' if not diffs else '; '.join(diffs)}")
        bad += bool(diffs)
    fa, fb = (d / "failures.txt" for d in (a, b))
    if fa.is_file() and fb.is_file():
        la = [ln.split(":", 1)[0] for ln in fa.read_text().splitlines() if ln.strip()]
        lb = [ln.split(":", 1)[0] for ln in fb.read_text().splitlines() if ln.strip()]
        if la or lb:
            print(f"failures.txt: failed in A: {la or 'none'}; failed in B: {lb or 'none'}")
            bad += la != lb
    print(f"golden_outputs: {len(ra & rb)} results directories in both, {bad} differ or are missing"
          + ("" if bad else ": all the same"))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="golden_outputs.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run every shipped config (shortened) and the variants into DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory")
    p.add_argument("--only", action="append", metavar="TEXT", help="only the runs whose name contains TEXT (repeatable)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("compare", help="compare two snapshots; exit 0 only if everything is the same")
    p.add_argument("a", metavar="DIR_A")
    p.add_argument("b", metavar="DIR_B")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("list", help="print the runs and their command lines")
    p.add_argument("--out", default="DIR", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_list)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
