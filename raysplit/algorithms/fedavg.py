"""Federated averaging (McMahan et al.): each round the server sends the global weights to a sampled share
of the clients; each trains the whole network for ``local_epochs`` on its own batches and sends its
weights back; the server averages them weighted by the clients' sample counts."""
from __future__ import annotations

from raysplit.algorithms.whole_model import WholeModelAlgorithm
from raysplit.schedule import participants


class FedAvg(WholeModelAlgorithm):
    def run_round(self, r: int) -> dict:
        clients = participants(self.cfg, r)
        weights = self.server.send_global.remote((r, 0), clients)
        stats, server_calls = [], []
        for k in clients:
            upload, st = self.hosts.client_host[k].local_train.options(num_returns=2).remote(k, r, weights)
            # summed in client order as uploads arrive, so few are held at once
            server_calls.append(self.server.accumulate.remote(upload))
            stats.append(st)
        server_calls.append(self.server.finish_average.remote())
        return self.collect(stats, server_calls, f"round {r + 1}/{self.cfg.training.rounds}")
