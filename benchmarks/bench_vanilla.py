"""Vanilla SplitNN on Ray vs the same arithmetic in one process (the `centralized` algorithm).

Same model (FmnistCNN), data (a Fashion-MNIST subset), batch size, number of steps and torch threads
(1 per party: the Ray actors get num_cpus=1; the reference runs with torch.set_num_threads(1)). Each repeat
times one round (one epoch over the subset) of each, after a warm-up round of each that also pays the
one-off FLOP counting. Reports the median ratio SplitNN-on-Ray / reference.

    python benchmarks/bench_vanilla.py [--samples 12800] [--batch-size 64] [--clients 10] [--repeats 5] [--transport link|ray] [--inline-mb 16]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date

import ray
import torch

from raysplit import config
from raysplit.algorithms import Centralized, SplitNN
from raysplit.data import batches
from raysplit.experiment import prepare
from raysplit.schedule import client_order


def replay_round(ref: Centralized, plan, r: int) -> None:
    """The reference round: the unsplit network in this process on exactly the batches SplitNN's clients
    train in round ``r``, in the same order (the equivalence oracle's replay), so both do the same arithmetic."""
    cfg = plan.cfg
    for k in client_order(cfg, r):
        for idx in batches(plan.client_indices[k], cfg.training.batch_size, cfg.seed, r, k):
            ref.train_batch(idx)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=12800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--handoff", default="peer")
    ap.add_argument("--transport", default="link", choices=["link", "ray"], help="runtime.step_transport")
    ap.add_argument("--inline-mb", type=float, default=0,
                    help="Ray's max_direct_call_object_size in MB (0: Ray's default, 100 KB): larger objects go "
                         "through the shared-memory object store, smaller ones inline in the actor call")
    args = ap.parse_args()
    cfg = config.from_dict({
        "name": "bench_vanilla", "data": {"dataset": "fashion_mnist", "num_clients": args.clients,
                                          "train_samples": args.samples},
        "model": {"name": "fmnist_cnn", "cut_layers": ["pool2"]}, "handoff": args.handoff,
        "training": {"rounds": 2 * args.repeats + 2, "batch_size": args.batch_size},
        "runtime": {"workers": 1, "worker": {"num_cpus": 1}, "server": {"num_cpus": 1},
                    "step_transport": args.transport},
    })
    plan = prepare(cfg)
    system = {"max_direct_call_object_size": int(args.inline_mb * 2**20)} if args.inline_mb else {}
    os.environ.setdefault("RAY_worker_niceness", "0")   # as raysplit.runtime.connect does
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=system)
    split, ref = SplitNN(plan, progress=False), Centralized(plan, progress=False)
    split.start()
    ref.start()
    steps = sum(-(-len(p) // args.batch_size) for p in plan.client_indices)
    split.run_round(0), replay_round(ref, plan, 0)        # warm-up: actor start, FLOP counting, allocator
    ratios, t_split, t_ref = [], [], []
    for r in range(1, args.repeats + 1):
        t0 = time.perf_counter()
        split.run_round(r)
        t1 = time.perf_counter()
        replay_round(ref, plan, r)
        t2 = time.perf_counter()
        t_split.append(t1 - t0)
        t_ref.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
        print(f"repeat {r}: raysplit {t1 - t0:.2f}s  reference {t2 - t1:.2f}s  ratio {ratios[-1]:.3f}", flush=True)
    # the same arithmetic: both trained the same batches in the same order, so the weights agree to rounding
    a, b = split.model().state_dict(), ref.model().state_dict()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    split.stop()
    print(f"\n{date.today()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
          f"in the reference, torch {torch.__version__}, ray {ray.__version__}")
    print(f"{steps} steps of batch {args.batch_size}, {args.clients} clients, hand-off {args.handoff}, "
          f"step transport {args.transport}, "
          f"inline objects up to {args.inline_mb or 0.1:g} MB")
    print(f"median per step: raysplit {statistics.median(t_split) / steps * 1e3:.2f} ms, "
          f"reference {statistics.median(t_ref) / steps * 1e3:.2f} ms")
    print(f"median ratio raysplit / reference: {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"max |parameter difference| after {args.repeats + 1} rounds: {diff:.1e}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
