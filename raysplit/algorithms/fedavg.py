"""Federated averaging (McMahan et al.): each round the server sends the global weights to a sampled share
of the clients; each trains the whole network for ``local_epochs`` on its own batches and sends its
weights back; the server averages them weighted by the clients' sample counts."""
from __future__ import annotations

from tqdm import tqdm

from raysplit.accounting import merge_stats
from raysplit.algorithms.whole_model import WHOLE, WholeModelAlgorithm
from raysplit.schedule import participants


class FedAvg(WholeModelAlgorithm):
    def run_round(self, r: int) -> dict:
        clients = participants(self.cfg, r)
        weights = self.on(self.server, "send_global", (r, 0), clients)
        # one streaming call per worker for all its clients: no Ray task per client
        hosts = self.hosts
        mine = hosts.clients_by_host(clients)
        streams = {key: hosts.stream(hosts.client_host[ks[0]], WHOLE, "train_clients", ks, r, weights)
                   for key, ks in mine.items()}
        server_calls = []
        with tqdm(clients, desc=self.round_desc(r), unit="client", leave=False, disable=not self.progress) as bar:
            for k in bar:      # summed in client order as uploads arrive, so few are held at once
                upload = hosts.next_item(streams[id(hosts.client_host[k])])
                server_calls.append(self.on(self.server, "accumulate", upload))
        server_calls.append(self.on(self.server, "finish_average"))
        stats = {}          # each worker's clients' stats, last in its stream
        for key, ks in mine.items():
            stats.update(zip(ks, hosts.get(hosts.next_item(streams[key]))))
        out: dict = {}
        for k in clients:   # merged in client order: the same float sums however clients are hosted
            merge_stats(out, stats[k])
        hosts.get(server_calls)          # surfaces any error of the server's calls
        return out
