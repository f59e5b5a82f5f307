"""Asynchronous split learning (``schedule: async``): clients work at once with no round barrier, as in
SecretFlow's ``split_async`` and SLPerf's asynchronous vanilla SL, with FedAsync's staleness-weighted mixing of
the client-side weights (Xie et al., arXiv 1903.03934).

``clients_per_round`` clients are at work at any moment. Each starts from the latest global client-side weights,
which the fed server sends it, with a fresh optimizer; one server-side model (its optimizer kept) takes every
client's steps in the order they reach it; a finished client uploads its weights and the fed server mixes them in
(``asynchrony``: mix, staleness_exponent, max_staleness); another client takes its place at once. A round is the
next ``clients_per_round`` arrivals of finished clients, and its simulated time is the span in which they came:
async_timeline.py plans every event before the round runs, exactly from the prices, and the hosts carry it out.
With one client at a time and mix 1 it is sequential SplitNN with hand-offs through the fed server.

Programs: ``AsyncWorker`` on the worker hosts (a store per working client, kept across rounds while it works),
SplitFed v2's ``SplitFedServer`` on the server-side hosts (its turnstile takes the steps in the planned order),
``LatestWeights`` on the fed server. The driver submits a worker call per stretch of its events (a stretch begins
with a client's start and ends with a client's finish, so no call waits for weights that wait for it) and the
fed server's sends and mixes in time order.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from raysplit.accounting import TrainStats
from raysplit.algorithms.base import Algorithm
from raysplit.algorithms.splitfed import (FED_SERVER, FED_SERVER_RESOURCES, SplitFed, SplitFedServer, global_model,
                                          round_batches)
from raysplit.async_timeline import AsyncTimeline
from raysplit.engine import SEGMENTS, SegmentServer, party_id
from raysplit.graph import CLIENT, ComposedNet
from raysplit.hosts import Hosts
from raysplit.schedule import clients_per_round


class AsyncWorker(SegmentServer):
    """Worker side: the clients at work on this host, each with its own copy of the client-side segments and its
    batches, across calls and rounds until it finishes (its weights go to the fed server) or drops."""

    def __init__(self, host, modules, transport: str = "ray"):
        super().__init__(host, modules)
        self.transport = transport
        self.working: dict[int, tuple] = {}     # client -> (its store, its batches, the round it started in)

    def _begin(self, k: int, round_: int, weights: dict | None, state: dict | None = None) -> None:
        store = self.store.copy(self.training, weights)
        if state is not None:
            store.load(state)
        self.working[k] = (store, round_batches(self.host, k, round_), round_)

    def run(self, round_: int, items: list[tuple], *start_weights) -> tuple[dict, dict]:
        """Carry out a stretch of the round's events on this host, in order: ("start", k) takes the next of
        ``start_weights``; ("step", ticket, k, j); ("finish", k) sends k's weights to the fed server; ("drop", k).
        Returns ({client: weights sent}, train stats)."""
        h, stats, sent, weights = self.host, TrainStats(), {}, iter(start_weights)
        with self.engine.linked() if self.transport == "link" else nullcontext():
            for kind, *args in items:
                if kind == "start":
                    self._begin(args[0], round_, h.receive(next(weights)))
                elif kind == "step":
                    ticket, k, j = args
                    store, steps, began = self.working[k]
                    h.seed_torch(began, k, j)
                    stats.add(self.engine.step(store, k, (round_, ticket), steps[j]))
                elif kind == "finish":
                    store = self.working.pop(args[0])[0]
                    h.ledger.round = round_
                    sent[args[0]] = h.ledger.send(party_id(CLIENT, args[0]), FED_SERVER, "weights", store.weights())
                else:
                    del self.working[args[0]]
        return sent, stats.as_lists()

    def state(self) -> dict:
        """The clients at work (between rounds): their weights, optimizer state and the round they began in."""
        return {k: {"store": store.state(), "round": began} for k, (store, _, began) in self.working.items()}

    def load_state(self, state: dict) -> None:
        self.working = {}
        for k, s in self.host.receive(state).items():
            self._begin(k, s["round"], None, s["store"])


class LatestWeights:
    """The fed server of the asynchronous schedule: the latest global client-side weights, sent to each client that
    starts and mixed with each finished client's weights as they arrive."""

    def __init__(self, host, client_init: dict):
        self.host, self.weights = host, client_init

    # the host serves calls in threads (the server-side hosts' options): each call names the one before it in time
    # (``after``), which Ray finishes first, so sends and mixes happen in the planned order

    def send(self, client: int, round_: int, *after) -> tuple[dict, None]:
        """The latest weights to a starting client, and a token for the next call to wait for."""
        self.host.ledger.round = round_
        return self.host.ledger.send(FED_SERVER, party_id(CLIENT, client), "weights", self.weights), None

    def mix(self, client: int, mix: float | None, sent: dict, *after) -> None:
        """g + mix (w - g) for every floating-point tensor (others: the client's); ``mix`` None: stale, discarded."""
        w = self.host.receive(sent)[client]
        if mix is not None:
            self.weights = {n: {key: torch.lerp(g, w[n][key], mix) if g.is_floating_point() else w[n][key]
                                for key, g in sd.items()} for n, sd in self.weights.items()}

    def global_client_weights(self) -> dict:
        return self.weights

    def segment_states(self) -> dict:
        return {}

    def state(self) -> dict:
        return {"weights": self.weights}

    def load_state(self, state: dict) -> None:
        self.weights = self.host.receive(state)["weights"]


class AsyncSplit(Algorithm):
    """Asynchronous split learning (``async_split``, ``schedule: async``)."""

    population_support = frozenset({"availability"})
    supports_topology = SplitFed.supports_topology

    def __init__(self, plan, capture_ledger: bool = False, progress: bool = True):
        super().__init__(plan, capture_ledger, progress)
        self.timeline: AsyncTimeline | None = None

    def timed(self) -> bool:
        return True               # every round is planned on the simulated clock

    def _timeline(self) -> AsyncTimeline:
        if self.timeline is None:
            self.timeline = AsyncTimeline(self.cfg, self.prices(), self.availability,
                                          [len(i) for i in self.plan.client_indices], FED_SERVER,
                                          clients_per_round(self.cfg))
        return self.timeline

    def start(self) -> None:
        p, cfg = self.plan, self.cfg
        # the server-side hosts let a later step's call wait (in a thread) for its turn
        self.hosts = hosts = Hosts.start(p, self.capture, role_options={"max_concurrency": 2 * cfg.runtime.workers + 2},
                                         extra_roles={FED_SERVER: FED_SERVER_RESOURCES})
        hosts.install(SEGMENTS, dict.fromkeys(hosts.workers, AsyncWorker), cfg.runtime.step_transport)
        client_init = {n: m.state_dict() for n, m in p.modules.items() if p.topology.segment(n).owner == CLIENT}
        for role, h in hosts.roles.items():
            if role == FED_SERVER:
                hosts.install(SEGMENTS, {h: LatestWeights}, client_init, segments=None)
            else:
                hosts.install(SEGMENTS, {h: SplitFedServer}, "v2", None)
        self.servers = [h for role, h in hosts.roles.items() if role != FED_SERVER]
        self.fed_turn = None         # the fed server's latest call (a handle): the next one waits for it

    def _after(self) -> list:
        return [] if self.fed_turn is None else [self.fed_turn]

    def run_round(self, r: int) -> dict:
        hosts, fed = self.hosts, self.hosts.roles[FED_SERVER]
        events, self.fates, self.span_s = self._timeline().next_round(r, clients_per_round(self.cfg))
        self.wait_s = 0.0
        hosts.wait([hosts.call(h, SEGMENTS, "open_round", r, []) for h in self.servers])   # tickets from 0
        index = {id(h): i for i, h in enumerate(hosts.workers)}
        stretches: dict[int, tuple[list, list]] = {}       # worker -> (its pending events, its starts' weights)
        stats = []

        def submit(w: int):
            items, weights = stretches.pop(w, ([], []))
            if items:
                sent, st = hosts.call(hosts.workers[w], SEGMENTS, "run", r, items, *weights, returns=2)
                stats.append((st, sum(kind == "finish" for kind, *_ in items)))
                return sent
            return None

        for e in events:
            w = index[id(hosts.client_host[e.client])]
            if e.kind == "start":
                submit(w)        # a stretch begins with a start: it waits for nothing but the weights it takes
                ref, self.fed_turn = hosts.call(fed, SEGMENTS, "send", e.client, r, *self._after(), returns=2)
                stretches[w] = ([("start", e.client)], [ref])
                continue
            items = stretches.setdefault(w, ([], []))[0]
            items.append(("step", e.ticket, e.client, e.step) if e.kind == "step" else (e.kind, e.client))
            if e.kind == "finish":
                self.fed_turn = hosts.call(fed, SEGMENTS, "mix", e.client, e.mix, submit(w), *self._after())
        for w in list(stretches):
            submit(w)
        out = hosts.gather_stats(stats, self.round_desc(r), self.progress)
        if self.fed_turn is not None:    # the round's last mix is done before anyone reads the global weights
            hosts.get(self.fed_turn)
        return out

    def state(self) -> dict:
        return {"hosts": self.hosts.states(SEGMENTS), "timeline": self._timeline().state()}

    def restore(self, state: dict, round_: int) -> None:
        self.hosts.load_states(SEGMENTS, state["hosts"])
        self._timeline().load(state["timeline"])

    def model(self) -> ComposedNet:
        return global_model(self.plan, self.hosts, FED_SERVER)
