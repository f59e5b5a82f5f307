"""SplitFed (Thapa et al., arXiv 2004.12088): split learning with the parallel schedule.

Each round, the participating clients (``schedule.participants``: a fraction or a count, sampled from the
seed) all start from the global client-side weights, which the averaging point sends them, and train with a
fresh optimizer on their local batches, in parallel on the worker actors. At the end of the round they send
their client-side weights back, and the averaging point takes their average weighted by sample count (FedAvg).

The averaging point (``training.averaging_point``) is, as in the SplitFed paper, a party of its own by
default: the **fed server** (``fed_server``, its own actor and ledger name), so that the main server never
receives client-side weights (in ``u_shaped`` they include the client's label-side head, which U-shaped
exists to keep from the server). ``server`` makes the main server average, for users who accept that.

- **v1**: each client trains against its own copy of the server-side segments (a fresh optimizer each
  round); at the end of the round the copies are averaged the same way. Clients are independent, so a
  worker trains its clients one after another and the server keeps only the copies of clients in flight
  or waiting to be averaged (at most ``FOLD_WINDOW`` per worker beyond those training).
- **v2**: one server-side model (its optimizer persists across rounds) takes the clients' steps one after
  another in a fixed order: round-robin by step over the participants in their canonical order
  (``schedule.interleave``). Workers run their clients' steps in that order, so client-side work overlaps
  across workers while the server model sees the same sequence whatever the number of workers.

Averages are summed in the round's canonical order, so results do not depend on how clients are mapped to
worker actors (invariant 4, docs/architecture.md). Every step is the engine's ``step``; every weight transfer to and
from the averaging point is a ``weights`` entry in the ledger.

Programs: ``SplitFedWorker`` on the worker hosts (each training client gets its own store: a copy of the
client-side segments), ``SplitFedServer`` on every other host with segments (v1: a store per training
client; v2: one store and a turnstile), ``FedServer`` (the averaging of the client-side weights) on the fed
server's host, or inside the main server's program when it is the averaging point. The driver, ``SplitFed``,
only submits calls and passes ObjectRefs.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager, nullcontext

from raysplit.accounting import TrainStats
from raysplit.algorithms.base import compose
from raysplit.algorithms.splitnn import SplitNN
from raysplit.averaging import OrderedSums
from raysplit.config import Resources
from raysplit.data import batches
from raysplit.engine import SEGMENTS, SegmentServer, SegmentStore, party_id
from raysplit.errors import ConfigError
from raysplit.graph import CLIENT, ComposedNet, Topology
from raysplit.hosts import Hosts
from raysplit.schedule import clients_per_round, interleave
from raysplit.timeline import DONE, DROPPED, parallel_fates

FED_SERVER = "fed_server"
# the fed server only averages state dicts: no CPU reserved (so every config that fits without it still fits),
# one torch thread
FED_SERVER_RESOURCES = Resources(num_cpus=0.0, torch_threads=1)


def round_batches(host, k: int, round_: int) -> list:
    """Client ``k``'s batches of a round: all its local epochs, in order (the same draw on any host)."""
    t = host.training
    return [idx for e in range(t.local_epochs)
            for idx in batches(host.client_indices[k], t.batch_size, host.seed, round_ * t.local_epochs + e, k)]


def global_model(plan, hosts: Hosts, point: str) -> ComposedNet:
    """The global client-side weights held at ``point`` with every host's server-side segments: for evaluation."""
    states = dict(hosts.get(hosts.call(hosts.roles[point], SEGMENTS, "global_client_weights")))
    for h in hosts.roles.values():
        states.update(hosts.get(hosts.call(h, SEGMENTS, "segment_states")))
    return compose(plan, states)


class SplitFedWorker(SegmentServer):
    """Worker side: trains participating clients, each on its own copy of the client-side segments (only
    while it trains), and sends their weights to the averaging point. ``transport``: "link" runs a call's
    steps over direct links to the server-side hosts (raysplit/link.py), "ray" calls them through Ray."""

    def __init__(self, host, modules, averaging_point: str, transport: str = "ray"):
        super().__init__(host, modules)
        self.averaging_point, self.transport = averaging_point, transport

    def train(self, round_: int, plan: list[tuple[int, int, int]], client_global: dict,
              gone: frozenset = frozenset()) -> tuple[dict, dict]:
        """Run ``plan`` = [(clock step, client, local step)] in order. Each client trains a copy of the
        client-side segments, from ``client_global`` with a fresh optimizer; after its last step its weights
        go to the averaging point (not those of the clients ``gone`` offline in the middle: population.py).
        Returns ({client: weights}, train stats)."""
        stats = TrainStats()
        with self.engine.linked() if self.transport == "link" else nullcontext():
            sent = self._train(round_, plan, self.host.receive(client_global), stats, gone)
        return sent, stats.as_lists()

    def train_clients(self, round_: int, clients: list[int], steps: dict[int, int], client_global: dict,
                      gone: frozenset = frozenset()):
        """v1 over links: this worker's clients one after another in one call (a streaming generator), over
        links held for the call; yields each client's {client: weights} when it is done (so the driver folds
        it in while the next trains), then the train stats of all."""
        stats, client_global = TrainStats(), self.host.receive(client_global)
        with self.engine.linked():
            for k in clients:
                yield self._train(round_, [(j, k, j) for j in range(steps[k])], client_global, stats, gone)
        yield stats.as_lists()

    def _train(self, round_: int, plan: list[tuple[int, int, int]], client_global: dict, stats: TrainStats,
               gone: frozenset = frozenset()) -> dict:
        h, training = self.host, self.training
        last = {k: j for _, k, j in plan}
        live: dict[int, tuple[SegmentStore, list]] = {}
        sent: dict[int, dict] = {}
        for step, k, j in plan:
            if k not in live:
                live[k] = (self.store.copy(training, client_global), round_batches(h, k, round_))
            store, steps = live[k]
            h.seed_torch(round_, k, j)
            stats.add(self.engine.step(store, k, (round_, step), steps[j]))
            if j == last[k] and k in gone:
                del live[k]
            elif j == last[k]:
                h.ledger.round, h.ledger.step = round_, step
                sent[k] = h.ledger.send(party_id(CLIENT, k), self.averaging_point, "weights", store.weights())
                del live[k]
        return sent


class FedServer:
    """The averaging point of the client-side weights (SplitFed's "fed server"): holds the global client-side
    weights, sends them to each round's participants, folds the weights they send back into sample-weighted
    sums in the round's canonical order (early ones wait in a buffer, so results do not depend on the number
    of workers), and averages. A program of its own on the fed server's host, or a part of the main server's
    program when the server is the averaging point."""

    def __init__(self, host, party: str, client_init: dict):
        self.host, self.party, self.client_global = host, party, client_init
        self.lock = threading.Lock()     # folds may come in threads of their own (v1 over links)
        self.open_round(-1, [])

    def open_round(self, round_: int, order: list[int], kept: list[int] | None = None):
        """Start a round; send the global client-side weights to every participant and return them. ``kept``: the
        participants whose weights the round averages (default: all)."""
        self.sums = OrderedSums(order if kept is None else kept)
        if not order:
            return None
        self.host.ledger.round, self.host.ledger.step = round_, 0
        return self.host.ledger.send(self.party, [party_id(CLIENT, k) for k in order], "weights", self.client_global)

    def fold(self, entries: list[tuple[int, float]], *client_weights) -> None:
        """Add finished clients, [(client, weight)], with the workers' {client: weights} they sent here."""
        weights = {k: self.host.receive(w) for d in client_weights for k, w in d.items()}
        with self.lock:
            for k, n in entries:
                self.sums.fold("client", k, n, weights[k])

    def finish_round(self) -> None:
        if self.sums.position:          # a round whose every client dropped keeps the weights it had
            self.client_global = self.sums.mean("client", "client-side weights")

    def global_client_weights(self) -> dict:
        return self.client_global

    def segment_states(self) -> dict:
        return {}                  # the fed server holds no segment

    def state(self) -> dict:
        return {"client_global": self.client_global}

    def load_state(self, state: dict) -> None:
        self.client_global = self.host.receive(state)["client_global"]


class SplitFedServer(SegmentServer):
    """A server-side host in SplitFed: v1 runs each client's segment calls on that client's own copy of
    this host's segments, v2 runs them on the one model in the round's ticket order. v1 folds finished
    clients' copies into the round's sample-weighted sums in canonical order and averages them at the end of
    the round. ``averager``: the main server's ``FedServer`` when it is the averaging point."""

    TURN_TIMEOUT_S = 600.0

    def __init__(self, host, modules, version: str, averager: tuple[str, dict] | None = None):
        super().__init__(host, modules)
        self.version = version
        self.averager = FedServer(host, *averager) if averager else None
        # v2: segment calls this host gets per step (one per segment here, two for a non-head)
        self.calls_per_ticket = sum(1 + (not s.task) for s in host.topo.segments if s.owner in host.roles)
        self.cond = threading.Condition()
        self.open_round(-1, [])

    def open_round(self, round_: int, order: list[int], kept: list[int] | None = None):
        """Start a round with its participants in canonical order (at the averaging point: the global
        client-side weights sent to them); ``kept``: those whose work the round averages (default: all)."""
        self.round = round_
        self.copies: dict[int, SegmentStore] = {}         # v1: client -> its copy of this host's segments
        self.sums = OrderedSums(order if kept is None else kept)
        self.ticket, self.calls = 0, 0
        return self.averager.open_round(round_, order, kept) if self.averager else None

    def store_for(self, client) -> SegmentStore:
        if self.version == "v2":
            return self.store
        if client not in self.copies:
            self.copies[client] = self.store.copy(self.training)
        return self.copies[client]

    def seg_forward(self, client, name, clock, *args):
        with self.turn(clock):
            return super().seg_forward(client, name, clock, *args)

    def seg_backward(self, client, name, clock, *args):
        with self.turn(clock):
            return super().seg_backward(client, name, clock, *args)

    @contextmanager
    def turn(self, clock):
        """v2: the one server model takes steps in ticket order (the clock's step is the ticket); a call of a
        later step waits in its Ray thread until every call of the earlier steps has run here. v1: one call
        at a time (over links, each worker's calls come in a thread of their own; the host's ledger clock and
        meter serve one call at a time)."""
        if self.version != "v2":
            with self.cond:
                yield
            return
        round_, ticket = clock
        if round_ != self.round:
            raise RuntimeError(f"SplitFed v2: a step of round {round_} reached a host in round {self.round}")
        with self.cond:
            if not self.cond.wait_for(lambda: self.ticket == ticket, timeout=self.TURN_TIMEOUT_S):
                raise RuntimeError(f"SplitFed v2: step {ticket} waited {self.TURN_TIMEOUT_S:g}s for step {self.ticket}")
        try:
            yield
        finally:
            with self.cond:
                self.calls += 1
                if self.calls == self.calls_per_ticket:
                    self.ticket, self.calls = self.ticket + 1, 0
                    self.cond.notify_all()

    def fold(self, entries: list[tuple[int, float]], *client_weights) -> None:
        """Add finished clients, [(client, weight)]: v1's server-side copies to the round's weighted sums, in the
        round's canonical order whatever order clients finish in. ``client_weights``: at the averaging point,
        the workers' {client: weights}; elsewhere results this call must wait for (Ray resolves them first),
        ignored."""
        with self.cond:      # v1 over links: not while a segment call or another fold runs
            if self.averager:
                self.averager.fold(entries, *client_weights)
            for k, n in entries:
                # v1: a client that never called this host leaves its segments unchanged (v2: nothing to sum)
                own = self.copies.pop(k, None) or self.store
                self.sums.fold("server", k, n, (lambda own=own: {name: m.state_dict() for name, m in own.modules.items()})
                               if self.version == "v1" else {})

    def finish_round(self) -> None:
        """Averages (FedAvg): v1's server-side copies here (and the client-side weights at the averaging point)."""
        means = self.sums.mean("server", f"server-side copies (round {self.round})") if self.sums.position else {}
        self.copies = {}                      # the copies of clients whose work the round did not keep
        if self.averager:
            self.averager.finish_round()
        for n, sd in means.items():           # v1's average (v2 sums nothing)
            self.store.modules[n].load_state_dict(sd)

    def global_client_weights(self) -> dict | None:
        return self.averager.global_client_weights() if self.averager else None

    def state(self) -> dict:
        """At a round boundary (copies and sums are empty then)."""
        return {"store": self.store.state(), "averager": self.averager.state() if self.averager else None}

    def load_state(self, state: dict) -> None:
        state = self.host.receive(state)
        self.store.load(state["store"])
        if self.averager:
            self.averager.load_state(state["averager"])


class SplitFed(SplitNN):
    """SplitFed v1 / v2 (``splitfed``): parallel rounds of split learning with federated averaging."""

    population_support = frozenset({"availability", "deadline", "over_selection"})
    FOLD_WINDOW = 4   # v1: finished clients per worker whose server-side copies may wait to be averaged

    def __init__(self, plan, capture_ledger: bool = False, progress: bool = True):
        super().__init__(plan, capture_ledger, progress)
        topo, cfg = plan.topology, plan.cfg
        if self.supports_topology(topo):
            raise ConfigError("topology", cfg.topology, "a topology with clients and a server for splitfed")
        self.averaging_point = cfg.training.averaging_point     # (config.py refuses a party named fed_server)
        self.sizes = {k: len(idx) for k, idx in enumerate(plan.client_indices)}
        per_epoch = {k: math.ceil(n / cfg.training.batch_size) for k, n in self.sizes.items()}
        self.steps = {k: cfg.training.local_epochs * s for k, s in per_epoch.items()}

    @classmethod
    def supports_topology(cls, topology: Topology) -> str | None:
        """None if SplitFed can train ``topology`` (checked by ``prepare``), else what it needs."""
        if "server" not in topology.roles or CLIENT not in topology.roles:
            return (f"needs clients and a server (topology {topology.name} has parties {', '.join(topology.roles)})")
        return None

    def start(self) -> None:
        p, cfg = self.plan, self.cfg
        # v2's server-side hosts let a later step's call wait (in a thread) for its turn; over links, each
        # worker's link is served in a thread of its own for the whole call
        self.over_links = cfg.runtime.step_transport == "link"
        options = None
        if cfg.splitfed == "v2":
            options = {"max_concurrency": 2 * cfg.runtime.workers + 2}
        elif self.over_links:
            options = {"max_concurrency": cfg.runtime.workers + 2}
        point = self.averaging_point
        fed_server = {FED_SERVER: FED_SERVER_RESOURCES} if point == FED_SERVER else None
        self.hosts = hosts = Hosts.start(p, self.capture, role_options=options, extra_roles=fed_server)
        hosts.install(SEGMENTS, dict.fromkeys(hosts.workers, SplitFedWorker), point, cfg.runtime.step_transport)
        client_init = {n: m.state_dict() for n, m in p.modules.items() if p.topology.segment(n).owner == CLIENT}
        for role, h in hosts.roles.items():
            if role == FED_SERVER:
                hosts.install(SEGMENTS, {h: FedServer}, point, client_init, segments=None)
            else:
                hosts.install(SEGMENTS, {h: SplitFedServer}, cfg.splitfed, (point, client_init) if role == point else None)

    def run_round(self, r: int) -> dict:
        hosts, order = self.hosts, self.round_clients(r)
        # a population (population.py): what becomes of each participant, known before the round runs (timeline.py)
        self.round_steps, self.gone, kept = self.steps, frozenset(), None
        if self.timed():
            prices = self.prices()
            self.fates = parallel_fates(prices, self.availability, order, self.step_sizes(order),
                                        self.now_s + self.wait_s, self.averaging_point, prices.client_weights_bytes(),
                                        self.cfg.population.deadline_s, clients_per_round(self.cfg))
            kept = [f.client for f in self.fates if f.status == DONE]
            dropped = {f.client: f.steps for f in self.fates if f.status == DROPPED}
            self.round_steps, self.gone = {**self.steps, **dropped}, frozenset(dropped)
        opened = {role: hosts.call(h, SEGMENTS, "open_round", r, order, kept) for role, h in hosts.roles.items()}
        hosts.wait(list(opened.values()))        # open before any step
        client_global = opened[self.averaging_point]
        folded = set(order if kept is None else kept)
        entries = [(k, float(self.sizes[k])) for k in order]
        run = self._round_v2 if self.cfg.splitfed == "v2" else \
            self._round_v1_over_links if self.over_links else self._round_v1
        folds, stats = run(r, order, client_global, entries, folded)
        hosts.get(folds)
        hosts.get([hosts.call(h, SEGMENTS, "finish_round") for h in hosts.roles.values()])
        return hosts.gather_stats(stats, self.round_desc(r), self.progress)

    def _fold(self, clients: list, weights: list, stats: list) -> list:
        """Each server-side host folds the clients' copies in; the averaging point takes their weights too."""
        return [self.hosts.call(h, SEGMENTS, "fold", clients, *(weights if role == self.averaging_point else stats))
                for role, h in self.hosts.roles.items()]

    def _round_v1(self, r, order, client_global, entries, folded):
        """A task per client; the server averages each one's copies as soon as it and all before it are done."""
        hosts, window = self.hosts, self.FOLD_WINDOW * len(self.hosts.workers)
        folds, stats = [], []
        for i, (k, n) in enumerate(entries):
            if i >= window:   # bound the finished-but-not-yet-averaged server-side copies
                hosts.wait(folds[i - window])
            plan = [(j, k, j) for j in range(self.round_steps[k])]
            weights, st = hosts.call(hosts.client_host[k], SEGMENTS, "train", r, plan, client_global, self.gone,
                                     returns=2)
            # a client whose work the round does not keep: waited for, not averaged
            folds.append(self._fold([(k, n)], [weights], [st]) if k in folded else [st])
            stats.append(st)
        return [f for fs in folds for f in fs], stats

    def _round_v1_over_links(self, r, order, client_global, entries, folded):
        """A streaming call per worker, its clients one after another over its links; each client's copies
        are averaged as it is done, in canonical order. Backpressure keeps a worker at most FOLD_WINDOW
        finished clients ahead of the driver, which folds in canonical order."""
        hosts = self.hosts
        mine = hosts.clients_by_host(order)
        streams = {key: hosts.stream(hosts.client_host[ks[0]], SEGMENTS, "train_clients", r, ks,
                                     {k: self.round_steps[k] for k in ks}, client_global, self.gone,
                                     window=self.FOLD_WINDOW)
                   for key, ks in mine.items()}
        folds = []
        for k, n in entries:     # a client's item comes once it is done: its server-side copies are final
            weights = hosts.next_item(streams[id(hosts.client_host[k])])
            if k in folded:
                folds += self._fold([(k, n)], [weights], [])
        stats = [(hosts.next_item(streams[key]), len(ks)) for key, ks in mine.items()]
        return folds, stats

    def _round_v2(self, r, order, client_global, entries, folded):
        """A task per worker running its clients' steps in ticket order; then one fold of all clients."""
        hosts = self.hosts
        index = {id(h): i for i, h in enumerate(hosts.workers)}
        plans: dict[int, list] = {}
        for ticket, (k, j) in enumerate(interleave(order, {k: self.round_steps[k] for k in order})):
            plans.setdefault(index[id(hosts.client_host[k])], []).append((ticket, k, j))
        results = [hosts.call(hosts.workers[w], SEGMENTS, "train", r, plan, client_global, self.gone, returns=2)
                   for w, plan in sorted(plans.items())]
        weights, stats = [w for w, _ in results], [st for _, st in results]
        return self._fold([(k, n) for k, n in entries if k in folded], weights, stats), stats

    def model(self) -> ComposedNet:
        return global_model(self.plan, self.hosts, self.averaging_point)
