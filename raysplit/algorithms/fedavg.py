"""Federated averaging (McMahan et al.): each round the server sends the global weights to a sampled share
of the clients; each trains the whole network for ``local_epochs`` on its own batches and sends its
weights back; the server averages them weighted by the clients' sample counts."""
from __future__ import annotations

from raysplit.algorithms.whole_model import WholeModelAlgorithm
from raysplit.schedule import participants


class FedAvg(WholeModelAlgorithm):
    def run_round(self, r: int) -> dict:
        clients = participants(self.cfg, r)
        weights = self.on(self.server, "send_global", (r, 0), clients)
        stats, server_calls = [], []
        for k in clients:
            upload, st = self.on(self.hosts.client_host[k], "local_train", k, r, weights, num_returns=2)
            # summed in client order as uploads arrive, so few are held at once
            server_calls.append(self.on(self.server, "accumulate", upload))
            stats.append(st)
        server_calls.append(self.on(self.server, "finish_average"))
        return self.collect(stats, server_calls, f"round {r + 1}/{self.cfg.training.rounds}")
