"""Sequential SplitNN: clients take turns, handing the client-side weights and optimizer state on."""
from __future__ import annotations

import ray

from raysplit.accounting import receive
from raysplit.algorithms.base import Plan, compose, drain_hosts, gather_stats
from raysplit.parties import party_id
from raysplit.runtime import Hosts, connect, start_hosts, stop_hosts
from raysplit.schedule import client_order
from raysplit.topology import CLIENT, ComposedNet


class SplitNN:
    """Sequential split learning: clients take turns; client-side weights and optimizer state are handed
    on to the next client, peer-to-peer or through the server (``handoff``)."""

    def __init__(self, plan: Plan, capture_ledger: bool = False, progress: bool = True):
        self.plan, self.cfg, self.capture, self.progress = plan, plan.cfg, capture_ledger, progress
        self.hosts: Hosts | None = None
        self.state_ref = None

    def start(self) -> None:
        p = self.plan
        connect(self.cfg.runtime.address)
        self.hosts = start_hosts(self.cfg, p.topology, p.modules, p.dataset.train_x, p.dataset.train_y,
                                 p.client_indices, self.capture, p.holder_ids)
        self.order = client_order(self.cfg, 0)

    def run_round(self, r: int) -> dict:
        order, last_round = self.order, r == self.cfg.training.rounds - 1
        next_order = None if last_round else client_order(self.cfg, r + 1)
        refs = []
        for i, k in enumerate(order):
            nxt = order[i + 1] if i + 1 < len(order) else (None if last_round else next_order[0])
            # client-side weights move on to the next client; topologies without clients have nothing to hand on
            dst = None if nxt is None or CLIENT not in self.plan.topology.roles else party_id(CLIENT, nxt)
            via_server = self.cfg.handoff == "server" and dst is not None
            state_ref, stats_ref = self.hosts.client_host[k].train_turn.options(num_returns=2).remote(
                k, r, self.state_ref, "server" if via_server else dst)
            if via_server:
                state_ref = self.hosts.roles["server"].relay.remote(state_ref, dst, r)
            self.state_ref = state_ref
            refs.append(stats_ref)
        self.order = next_order
        return gather_stats(refs, f"round {r + 1}/{self.cfg.training.rounds}", self.progress)

    def drain(self) -> tuple[list, dict]:
        return drain_hosts(self.hosts)

    def model(self) -> ComposedNet:
        states = dict(receive(ray.get(self.state_ref)["model"])) if self.state_ref is not None else {}
        for h in self.hosts.roles.values():
            states.update(ray.get(h.segment_states.remote(None)))
        return compose(self.plan, states)

    def stop(self) -> None:
        stop_hosts(self.hosts)
        self.hosts = None
