"""A whole FedAvg job, start to exit: `raysplit run` vs a plain single-process script doing the same arithmetic.

Both are fresh processes timed from launch to exit: import, load Fashion-MNIST, train ROUNDS FedAvg rounds of
CLIENTS clients (one worker actor and the server on Ray, 1 torch thread each; the plain script trains with 1
thread too), evaluate on the test set after every round (both in the launching process, default threads).
raysplit also starts Ray and its party hosts, meters FLOPs, keeps the ledger, checkpoints and writes its
results directory: that is the tax measured here. The plain script is ``--plain`` of this file (the loop of
bench_fedavg.py); the final test accuracies of both are printed and must agree.

Runs alternate (raysplit, plain, raysplit, ...); the medians are compared. Then one in-process run of
raysplit's phases (imports, data, Ray, party hosts, first round) says where the start-up goes.

    PYTHONPATH=. python benchmarks/bench_job.py [--clients 100] [--rounds 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def job_config(clients: int, rounds: int, batch: int) -> dict:
    return {"name": "bench_job", "seed": 0, "algorithm": "fedavg",
            "data": {"dataset": "fashion_mnist", "num_clients": clients},
            "model": {"name": "fmnist_cnn", "cut_layers": ["pool2"]},
            "training": {"rounds": rounds, "batch_size": batch, "lr": 0.05, "momentum": 0.9},
            "runtime": {"workers": 1, "worker": {"num_cpus": 1}, "server": {"num_cpus": 1}}}


def plain(config_path: str) -> None:
    """The same job in this process: load, train, evaluate each round; print the last accuracy."""
    import torch

    from raysplit import config
    from raysplit.experiment import evaluate, prepare
    from raysplit.host import configure_torch
    from raysplit.topology import ComposedNet
    sys.path.insert(0, str(HERE))
    from bench_fedavg import plain_round

    cfg = config.load(config_path)
    plan = prepare(cfg)
    net = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    eval_threads = torch.get_num_threads()
    for r in range(cfg.training.rounds):
        configure_torch(1, cfg.runtime.deterministic)
        plain_round(plan, net, r)
        torch.set_num_threads(eval_threads)
        acc = evaluate(net, plan.dataset.test_x, plan.dataset.test_y)
    print(json.dumps({"test_acc": next(iter(acc.values()))[0]}))


def phases(config_path: str) -> None:
    """raysplit's start-up, phase by phase, in this process (seconds since launch of each phase's end)."""
    t0 = time.perf_counter()
    out = {}
    import ray
    import torch  # noqa: F401

    from raysplit import config
    from raysplit.algorithms import FedAvg
    from raysplit.experiment import prepare
    from raysplit.runtime import connect
    out["imports"] = time.perf_counter() - t0
    cfg = config.load(config_path)
    plan = prepare(cfg)
    out["config + data"] = time.perf_counter() - t0
    connect(None)
    out["Ray started"] = time.perf_counter() - t0
    algo = FedAvg(plan, progress=False)
    algo.start()
    out["party hosts ready"] = time.perf_counter() - t0
    algo.run_round(0)
    out["first round done"] = time.perf_counter() - t0
    algo.stop()
    ray.shutdown()
    print(json.dumps(out))


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    ap.add_argument("--phases", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        return plain(args.plain)
    if args.phases:
        return phases(args.phases)
    import pandas as pd
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="bench_job_"))
    cfg_path = tmp / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job_config(args.clients, args.rounds, args.batch_size)))
    t_ray, t_plain, acc_ray, acc_plain = [], [], None, None
    for i in range(args.repeats):
        out_dir = tmp / f"run{i}"
        wall, _ = timed([str(Path(sys.executable).with_name("raysplit")), "run", str(cfg_path), "--out", str(out_dir), "--quiet"])
        t_ray.append(wall)
        acc_ray = float(pd.read_csv(next(out_dir.rglob("metrics.csv")))["test_acc"].iloc[-1])
        wall, stdout = timed([sys.executable, __file__, "--plain", str(cfg_path)])
        t_plain.append(wall)
        acc_plain = json.loads(stdout.strip().splitlines()[-1])["test_acc"]
        print(f"repeat {i + 1}: raysplit {t_ray[-1]:.1f} s, plain {wall:.1f} s, ratio {t_ray[-1] / wall:.3f}", flush=True)
    _, stdout = timed([sys.executable, __file__, "--phases", str(cfg_path)])
    marks = json.loads(stdout.strip().splitlines()[-1])
    ratio = statistics.median(t_ray) / statistics.median(t_plain)
    print(f"\nwhole FedAvg job, {args.clients} clients x {args.rounds} rounds, batch {args.batch_size}: raysplit "
          f"{statistics.median(t_ray):.1f} s, plain {statistics.median(t_plain):.1f} s (medians of {args.repeats}); "
          f"ratio {ratio:.3f} (target <= 1.15); test accuracy raysplit {acc_ray:.4f}, plain {acc_plain:.4f}")
    print("raysplit start-up (seconds since launch): " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
