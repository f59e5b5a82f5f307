"""Large-batch synchronous SGD (data-parallel): at every step each client computes the gradient of the
whole network on its local batch, the server averages the gradients (weighted by batch size, so N clients
of batch b equal one batch of N·b) and steps, and the new weights go back to the clients.

A round is ``local_epochs`` epochs; step t of an epoch uses every client's batch t (the same batches as
its sequential SplitNN turn), so clients with fewer batches sit out the last steps.
"""
from __future__ import annotations

import math
from collections import defaultdict

from raysplit.algorithms.whole_model import WholeModelAlgorithm


class LargeBatchSGD(WholeModelAlgorithm):
    def run_round(self, r: int) -> dict:
        cfg, hosts = self.cfg, self.hosts
        steps = [math.ceil(len(idx) / cfg.training.batch_size) for idx in self.plan.client_indices]
        epochs, stats, server_calls, step = cfg.training.local_epochs, [], [], 0
        for e in range(epochs):
            for t in range(max(steps)):
                clock = (r, step)
                active = [k for k, s in enumerate(steps) if t < s]
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
