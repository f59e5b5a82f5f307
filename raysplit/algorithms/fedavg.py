"""Federated averaging (McMahan et al.): each round the server sends the global weights to a sampled share
of the clients; each trains the whole network for ``local_epochs`` on its own batches and sends its
weights back; the server averages them weighted by the clients' sample counts.

With a population (population.py), the round's clients are sampled among those online when it begins; one that
goes offline in the middle sends nothing, and an update that misses the deadline (or comes after the clients
the round needs, with over-selection) crosses the network but is not averaged (timeline.py: ``parallel_fates``).
"""
from __future__ import annotations

from tqdm import tqdm

from raysplit.accounting import merge_stats
from raysplit.algorithms.whole_model import SERVER, WHOLE, WholeModelAlgorithm
from raysplit.schedule import clients_per_round
from raysplit.timeline import DONE, DROPPED, parallel_fates


class FedAvg(WholeModelAlgorithm):
    population_support = frozenset({"availability", "deadline", "over_selection"})

    def run_round(self, r: int) -> dict:
        clients = self.round_clients(r)
        kept, limits = set(clients), {}
        if self.timed():
            prices = self.prices(whole=True)
            self.fates = parallel_fates(prices, self.availability, clients, self.step_sizes(clients),
                                        self.now_s + self.wait_s, SERVER, prices.model_bytes,
                                        self.cfg.population.deadline_s, clients_per_round(self.cfg))
            kept = {f.client for f in self.fates if f.status == DONE}
            limits = {f.client: f.steps for f in self.fates if f.status == DROPPED}
        weights = self.on(self.server, "send_global", (r, 0), clients)
        # one streaming call per worker for all its clients: no Ray task per client
        hosts = self.hosts
        mine = hosts.clients_by_host(clients)
        streams = {key: hosts.stream(hosts.client_host[ks[0]], WHOLE, "train_clients", ks, r, weights,
                                     {k: limits[k] for k in ks if k in limits} or None)
                   for key, ks in mine.items()}
        server_calls = []
        with tqdm(clients, desc=self.round_desc(r), unit="client", leave=False, disable=not self.progress) as bar:
            for k in bar:      # summed in client order as uploads arrive, so few are held at once
                upload = hosts.next_item(streams[id(hosts.client_host[k])])
                if k in kept:  # a late upload crossed (the ledger has it) but the round did not wait for it
                    server_calls.append(self.on(self.server, "accumulate", upload))
        if kept:
            server_calls.append(self.on(self.server, "finish_average"))
        stats = {}          # each worker's clients' stats, last in its stream
        for key, ks in mine.items():
            stats.update(zip(ks, hosts.get(hosts.next_item(streams[key]))))
        out: dict = {}
        for k in clients:   # merged in client order: the same float sums however clients are hosted
            merge_stats(out, stats[k])
        hosts.get(server_calls)          # surfaces any error of the server's calls
        return out
