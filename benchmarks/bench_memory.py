"""Peak memory of a FedAvg run, process by process: `raysplit run`'s code path (driver, Ray's own processes,
one worker actor hosting every client, the server actor) against the same round in one plain process.

PSS (proportional set size: a page shared by n processes counts 1/n in each) is sampled every 0.25 s over this
process and every process it started; the per-process figure is each process's own peak, the total the peak
of the sum. Each configuration runs in a fresh subprocess (a fresh Ray), one round of all of Fashion-MNIST.

    PYTHONPATH=. python benchmarks/bench_memory.py [--clients 100 500]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 2 ** 30


def measure(clients: int, plain: bool) -> dict:
    import ray  # noqa: F401  (puts ray's bundled psutil on the path)
    import psutil

    sys.path.insert(0, str(HERE))
    from bench_job import job_config
    from bench_scale import MemoryPeak

    from raysplit import config
    from raysplit.experiment import prepare, run

    class PerProcess(MemoryPeak):
        """Also each process's own peak, and what each held at the moment of the total's peak."""
        def __init__(self):
            super().__init__()
            self.each, self.names, self.at_peak = defaultdict(int), {}, {}

        def sample(self) -> None:
            me = psutil.Process(os.getpid())
            now = {}
            for p in [me, *me.children(recursive=True)]:
                try:
                    pss, name = p.memory_full_info().pss, " ".join(p.cmdline()).strip()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                now[p.pid] = pss
                self.each[p.pid] = max(self.each[p.pid], pss)
                self.names[p.pid] = "driver" if p.pid == me.pid else name.split(" --")[0][-60:]
            if sum(now.values()) > self.peak_pss:
                self.peak_pss, self.at_peak = sum(now.values()), now

    cfg = config.from_dict(job_config(clients, 1, 64), [])
    with PerProcess() as mem:
        if plain:
            from bench_fedavg import plain_round
            from raysplit.topology import ComposedNet

            plan = prepare(cfg)
            plain_round(plan, ComposedNet(plan.topology, copy.deepcopy(plan.modules)), 0)
        else:
            run(cfg, progress=False, write=False)
    each = sorted(((mem.each[pid] / GIB, mem.at_peak.get(pid, 0) / GIB, mem.names[pid]) for pid in mem.each),
                  reverse=True)
    return {"total": mem.peak_pss / GIB, "processes": each}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)      # clients, plain|raysplit: in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1] == "plain")))
        return 0
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    for clients in args.clients:
        for kind in ("raysplit", "plain"):
            out = subprocess.run([sys.executable, __file__, "--one", str(clients), kind], env=env, capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"FedAvg, {clients} clients, {kind}: peak PSS {r['total']:.2f} GiB, all processes; "
                  "each process's own peak / what it held at the total's peak:")
            for gib, at_peak, name in r["processes"]:
                if gib >= 0.01:
                    print(f"    {gib:5.2f} / {at_peak:5.2f} GiB  {name}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
