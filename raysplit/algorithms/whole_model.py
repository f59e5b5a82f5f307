"""What FedAvg and large-batch SGD share: every party holds the whole network, not a segment.

They run on the same party hosts as SplitNN (worker actors hosting virtual clients, and a server actor),
with every transfer through the hosts' ledgers and every FLOP through their meters, so the three methods
are measured on identical terms. The server actor holds the global model; the driver only submits
calls and passes ObjectRefs between actors (it never fetches weights or gradients).
"""
from __future__ import annotations

import copy

import ray

from raysplit.algorithms.base import Plan, drain_hosts, gather_stats
from raysplit.runtime import Hosts, connect, start_hosts, stop_hosts
from raysplit.topology import ComposedNet

SERVER = "server"


class WholeModelAlgorithm:
    def __init__(self, plan: Plan, capture_ledger: bool = False, progress: bool = True):
        self.plan, self.cfg, self.capture, self.progress = plan, plan.cfg, capture_ledger, progress
        self.hosts: Hosts | None = None

    def start(self) -> None:
        p = self.plan
        connect(self.cfg.runtime.address)
        self.hosts = start_hosts(self.cfg, p.topology, p.modules, p.dataset.train_x, p.dataset.train_y,
                                 p.client_indices, self.capture, other_roles=[SERVER])
        self.server = self.hosts.roles[SERVER]
        modules_ref = ray.put(p.modules)        # the seeded initial network: the same start as SplitNN
        ray.get([h.init_whole_model.remote(modules_ref) for h in self.hosts.all])

    def collect(self, stats_refs: list, server_refs: list, desc: str) -> dict:
        """Merge the clients' train stats as they arrive; wait for (and surface any error of) the server's calls."""
        out = gather_stats(stats_refs, desc, self.progress, unit="call")
        ray.get(server_refs)
        return out

    def drain(self) -> tuple[list, dict]:
        return drain_hosts(self.hosts)

    def model(self) -> ComposedNet:
        net = ComposedNet(self.plan.topology, copy.deepcopy(self.plan.modules))
        net.load_state_dict(ray.get(self.server.whole_state.remote()))
        return net

    def stop(self) -> None:
        stop_hosts(self.hosts)
        self.hosts = None
