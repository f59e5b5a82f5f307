"""Large-batch synchronous SGD (data-parallel): at every step each client computes the gradient of the
whole network on its local batch, the server averages the gradients (weighted by batch size, so N clients
of batch b equal one batch of N·b) and steps, and the new weights go back to the clients.

A round is ``local_epochs`` epochs; step t of an epoch uses every participating client's batch t (the same
batches as its sequential SplitNN turn), so clients with fewer batches sit out the last steps. With a population
(population.py), a client takes part in the steps that end before it goes offline (timeline.py: ``lockstep_fates``).
"""
from __future__ import annotations

import math
from collections import defaultdict

from raysplit.algorithms.whole_model import SERVER, WholeModelAlgorithm
from raysplit.timeline import lockstep_fates, step_sizes


class LargeBatchSGD(WholeModelAlgorithm):
    population_support = frozenset({"availability", "deadline"})

    def run_round(self, r: int) -> dict:
        cfg, hosts = self.cfg, self.hosts
        clients = sorted(self.round_clients(r))       # client order: the sums do not depend on the draw's order
        steps = {k: math.ceil(len(self.plan.client_indices[k]) / cfg.training.batch_size) for k in clients}
        limits: dict[int, int] = {}
        if self.timed():
            prices = self.prices(whole=True)
            one_epoch = {k: step_sizes(len(self.plan.client_indices[k]), cfg.training.batch_size, 1) for k in clients}
            self.fates = lockstep_fates(prices, self.availability, clients, one_epoch, cfg.training.local_epochs,
                                        self.now_s + self.wait_s, SERVER, prices.model_bytes,
                                        cfg.population.deadline_s)
            limits = {f.client: f.steps for f in self.fates if f.steps < f.planned}
        taken = dict.fromkeys(clients, 0)
        epochs, stats, server_calls, step = cfg.training.local_epochs, [], [], 0
        for e in range(epochs):
            for t in range(max(steps.values())):
                clock = (r, step)
                active = [k for k in clients if t < steps[k] and taken[k] < limits.get(k, taken[k] + 1)]
                if not active:
                    continue
                for k in active:
                    taken[k] += 1
                weights = self.on(self.server, "send_global", clock, active)
                by_worker: dict = defaultdict(list)
                for k in active:
                    by_worker[hosts.client_host[k]].append(k)
                uploads = {}
                for worker, ks in by_worker.items():
                    *ups, st = self.on(worker, "local_gradients", ks, clock, r * epochs + e, t, weights,
                                       num_returns=len(ks) + 1)
                    uploads.update(zip(ks, ups))
                    stats.append(st)
                for k in active:                    # client order: the sum does not depend on the hosting
                    server_calls.append(self.on(self.server, "accumulate", uploads.pop(k)))
                server_calls.append(self.on(self.server, "finish_step"))
                step += 1
        return self.collect(stats, server_calls, self.round_desc(r))
