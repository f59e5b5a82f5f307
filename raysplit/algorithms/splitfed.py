"""SplitFed (Thapa et al., arXiv 2004.12088): split learning with the parallel schedule.

Each round, the participating clients (``schedule.participants``: a fraction or a count, sampled from the
seed) all start from the global client-side weights, which the averaging point (the server, acting as the
"fed server") sends them, and train with a fresh optimizer on their local batches, in parallel on the
worker actors. At the end of the round they send their client-side weights back, and the averaging point
takes their average weighted by sample count (FedAvg).

- **v1**: each client trains against its own copy of the server-side segments (a fresh optimizer each
  round); at the end of the round the copies are averaged the same way. Clients are independent, so a
  worker trains its clients one after another and the server keeps only the copies of clients in flight
  or waiting to be averaged (at most ``FOLD_WINDOW`` per worker beyond those training).
- **v2**: one server-side model (its optimizer persists across rounds) takes the clients' steps one after
  another in a fixed order: round-robin by step over the participants in their canonical order
  (``schedule.interleave``). Workers run their clients' steps in that order, so client-side work overlaps
  across workers while the server model sees the same sequence whatever the number of workers.

Averages are summed in the round's canonical order, so results do not depend on how clients are mapped to
worker actors (DESIGN invariant 4). Every step is the engine's ``run_step``; every weight transfer to and
from the averaging point is a ``weights`` entry in the ledger.
"""
from __future__ import annotations

import math

import ray

from raysplit.algorithms.base import Plan, compose, gather_stats
from raysplit.algorithms.splitnn import SplitNN
from raysplit.errors import ConfigError
from raysplit.parties import AVERAGING_POINT
from raysplit.runtime import connect, start_hosts
from raysplit.schedule import interleave, participants
from raysplit.topology import CLIENT, ComposedNet


class SplitFed(SplitNN):
    """SplitFed v1 / v2 (``splitfed``): parallel rounds of split learning with federated averaging."""

    FOLD_WINDOW = 4   # v1: finished clients per worker whose server-side copies may wait to be averaged

    def __init__(self, plan: Plan, capture_ledger: bool = False, progress: bool = True):
        super().__init__(plan, capture_ledger, progress)
        topo, cfg = plan.topology, plan.cfg
        if AVERAGING_POINT not in topo.roles or CLIENT not in topo.roles:
            raise ConfigError("topology", cfg.topology, f"a topology with clients and a {AVERAGING_POINT} for splitfed")
        self.sizes = {k: len(idx) for k, idx in enumerate(plan.client_indices)}
        per_epoch = {k: math.ceil(n / cfg.training.batch_size) for k, n in self.sizes.items()}
        self.steps = {k: cfg.training.local_epochs * s for k, s in per_epoch.items()}

    def start(self) -> None:
        p, cfg = self.plan, self.cfg
        connect(cfg.runtime.address)
        # v2's server-side hosts let a later step's call wait (in a thread) for its turn
        options = {"max_concurrency": 2 * cfg.runtime.workers + 2} if cfg.splitfed == "v2" else None
        self.hosts = start_hosts(cfg, p.topology, p.modules, p.dataset.train_x, p.dataset.train_y,
                                 p.client_indices, self.capture, role_options=options)
        client_init = {n: m.state_dict() for n, m in p.modules.items() if p.topology.segment(n).owner == CLIENT}
        ray.get([h.splitfed_setup.remote(cfg.splitfed, client_init if role == AVERAGING_POINT else None)
                 for role, h in self.hosts.roles.items()])

    def run_round(self, r: int) -> dict:
        order = participants(self.cfg, r)
        roles = self.hosts.roles
        opened = {role: h.splitfed_open_round.remote(r, order) for role, h in roles.items()}
        ray.wait(list(opened.values()), num_returns=len(opened), fetch_local=False)  # open before any step
        client_global = opened[AVERAGING_POINT]
        entries = [(k, float(self.sizes[k])) for k in order]
        run = self._round_v1 if self.cfg.splitfed == "v1" else self._round_v2
        folds, stats = run(r, order, client_global, entries)
        ray.get(folds)
        ray.get([h.splitfed_finish_round.remote() for h in roles.values()])
        return self._gather(r, stats)

    def _round_v1(self, r, order, client_global, entries):
        """A task per client; the server averages each one's copies as soon as it and all before it are done."""
        window = self.FOLD_WINDOW * len(self.hosts.workers)
        folds, stats = [], []
        for i, (k, n) in enumerate(entries):
            if i >= window:   # bound the finished-but-not-yet-averaged server-side copies
                ray.wait(folds[i - window], num_returns=len(folds[i - window]), fetch_local=False)
            plan = [(j, k, j) for j in range(self.steps[k])]
            weights, st = self.hosts.client_host[k].splitfed_train.options(num_returns=2).remote(r, plan, client_global)
            folds.append([h.splitfed_fold.remote([(k, n)], weights if role == AVERAGING_POINT else st)
                          for role, h in self.hosts.roles.items()])
            stats.append(st)
        return [f for fs in folds for f in fs], stats

    def _round_v2(self, r, order, client_global, entries):
        """A task per worker running its clients' steps in ticket order; then one fold of all clients."""
        index = {id(h): i for i, h in enumerate(self.hosts.workers)}
        plans: dict[int, list] = {}
        for ticket, (k, j) in enumerate(interleave(order, {k: self.steps[k] for k in order})):
            plans.setdefault(index[id(self.hosts.client_host[k])], []).append((ticket, k, j))
        results = [self.hosts.workers[w].splitfed_train.options(num_returns=2).remote(r, plan, client_global)
                   for w, plan in sorted(plans.items())]
        weights, stats = [w for w, _ in results], [st for _, st in results]
        folds = [h.splitfed_fold.remote(entries, *(weights if role == AVERAGING_POINT else stats))
                 for role, h in self.hosts.roles.items()]
        return folds, stats

    def _gather(self, r: int, stats: list) -> dict:
        return gather_stats(stats, f"round {r + 1}/{self.cfg.training.rounds}", self.progress)

    def model(self) -> ComposedNet:
        states = dict(ray.get(self.hosts.roles[AVERAGING_POINT].splitfed_client_global.remote()))
        for h in self.hosts.roles.values():
            states.update(ray.get(h.segment_states.remote(None)))
        return compose(self.plan, states)
