"""Sequential SplitNN: clients take turns, handing the client-side weights and optimizer state on.

Driver: ``SplitNN`` submits the round's turns in order, a call per run of consecutive clients on one host,
passing the hand-off (an ObjectRef) from call to call, peer-to-peer or through the server; over links (the
default), one call per worker host, which hand on to each other directly (``link.Mesh``), through the server
over their links when hand-offs go through it.
Program: ``SequentialTurns``, on every host.
"""
from __future__ import annotations

import copy
import logging
from contextlib import nullcontext

from raysplit.accounting import TrainStats, receive
from raysplit.algorithms.base import Algorithm, compose
from raysplit.data import batches
from raysplit.engine import SEGMENTS, SegmentServer, party_id
from raysplit.graph import CLIENT, ComposedNet
from raysplit.hosts import Hosts
from raysplit.link import Mesh, opened
from raysplit.schedule import participants
from raysplit.timeline import DONE, sequential_fates

log = logging.getLogger(__name__)


class SequentialTurns(SegmentServer):
    """On a data holder's host: a client's turn (take the hand-off, train on local batches, hand off); on the
    server: relay a hand-off; on every host: serve its segments. ``transport``: "link" runs a call's turns over
    direct links to the peers (raysplit/link.py), "ray" calls them through Ray at every step."""

    def __init__(self, host, modules, transport: str = "ray", handoff: str = "peer"):
        super().__init__(host, modules)
        self.transport, self.handoff = transport, handoff
        self.mesh: Mesh | None = None

    def client_state(self) -> dict:
        """The client-side segments' weights and optimizer state: what a hand-off carries."""
        state = self.store.state()
        return {part: {n: v for n, v in d.items() if self.host.topo.segment(n).owner == CLIENT}
                for part, d in state.items()}

    def hand_off(self, state: dict, src: str, dst: str, round_: int) -> dict:
        self.host.ledger.round = round_
        return {"model": self.host.ledger.send(src, dst, "weights", state["model"]),
                "optim": self.host.ledger.send(src, dst, "optimizer_state", state["optim"])}

    def relay(self, payload: dict, dst: str, round_: int) -> dict:
        """Server-mediated hand-off: the server passes the client-side weights on to the next client."""
        return self.hand_off(self.host.receive(payload), "server", dst, round_)

    def train_turn(self, client: int, round_: int, payload: dict | None, next_party: str | None,
                   steps: int | None = None) -> tuple[dict | None, dict]:
        """One client's turn in a sequential round. (Topologies without virtual clients run one turn per
        round on the first data holder's host.) ``steps``: the client goes offline after this many steps
        (population.py): they are run and counted, the client-side weights go back to what it received, and
        that hand-off goes on from the party that sent it."""
        h, training = self.host, self.training
        me = party_id(h.topo.segments[0].owner, client)
        received = h.receive(payload) if payload is not None else None
        if received is not None:
            self.store.load(received)
        elif steps is not None:
            received = copy.deepcopy(self.client_state())       # nobody finished before: the initial weights
        h.seed_torch(round_, client)
        stats, step = TrainStats(), 0
        epochs = training.local_epochs
        for e in range(epochs):
            for idx in batches(h.client_indices[client], training.batch_size, h.seed, round_ * epochs + e, client):
                if step == steps:
                    break
                stats.add(self.engine.step(self.store, client, (round_, step), idx))
                step += 1
        if steps is not None:                     # gone: its work is discarded
            self.store.load(received)
            if payload is None or next_party is None:
                return (None if payload is None else received), stats.as_lists()
            return self.hand_off(received, payload["model"].src, next_party, round_), stats.as_lists()
        state = self.client_state()
        if next_party is not None:
            state = self.hand_off(state, me, next_party, round_)
        return state, stats.as_lists()

    def train_turns(self, clients: list[int], round_: int, payload: dict | None, last_next: str | None,
                    limits: dict[int, int] | None = None) -> tuple[dict, dict]:
        """Consecutive turns of clients hosted here, in one call: each hands on to the next through the
        ledger exactly as across hosts (same bytes, same arithmetic), without a Ray round trip per client.
        ``limits``: {client: steps} of the clients that go offline in the middle of their turn."""
        stats = TrainStats()
        with self.engine.linked() if self.transport == "link" else nullcontext():
            payload = self._turns(clients, round_, payload, last_next, stats, limits=limits or {})
        return payload, stats.as_lists()

    def _turns(self, clients: list[int], round_: int, payload: dict | None, last_next: str | None,
               stats: TrainStats, relay: bool = False, limits: dict[int, int] | None = None) -> dict:
        """``relay``: each hand-off goes to the server, which passes it on (``handoff: server`` over links;
        with Ray calls the driver asks the server to relay)."""
        has_clients = CLIENT in self.host.topo.roles   # vertical: nothing to hand on
        limits = limits or {}
        for i, k in enumerate(clients):
            nxt = last_next if i + 1 == len(clients) else party_id(CLIENT, clients[i + 1]) if has_clients else None
            steps = limits.get(k)
            # a client gone in the middle passes on what it received: from the server, when it came from there
            via = relay and nxt and (steps is None or payload is None or payload["model"].src != "server")
            payload, st = self.train_turn(k, round_, payload, "server" if via else nxt, steps)
            if via:
                payload = self._relay(payload, nxt, round_)
            stats.add(st)
        return payload

    def _relay(self, payload: dict, dst: str, round_: int) -> dict:
        reply = self.engine.call_peer("server", "relay", 1, payload, dst, round_)
        return opened(reply)

    # a round over links: one call per worker host, hand-offs straight from host to host (link.Mesh)

    def mesh_address(self) -> tuple:
        if self.mesh is None:
            self.mesh = Mesh()
        return self.mesh.address

    def join_mesh(self, me: int, addresses: list[tuple]) -> bool:
        return self.mesh.join(me, addresses)

    def train_round(self, runs: list[list[int]], hosts: list[int], me: int, round_: int, payload: dict | None,
                    last_next: str | None, limits: dict[int, int] | None = None) -> tuple[dict | None, dict]:
        """This host's runs of the round (``hosts[i]``: the worker host of ``runs[i]``; this is host ``me``), in
        the round's order: each takes the hand-off from the previous run's host and sends its own to the next
        run's host. The host of the last run returns the hand-off to the next round's first client."""
        stats, mine = TrainStats(), [i for i, h in enumerate(hosts) if h == me]
        with self.engine.linked() if mine else nullcontext():
            for i in mine:
                if i > 0:
                    payload = self.mesh.recv(hosts[i - 1])
                nxt = party_id(CLIENT, runs[i + 1][0]) if i + 1 < len(runs) else last_next
                payload = self._turns(runs[i], round_, payload, nxt, stats, relay=self.handoff == "server",
                                      limits=limits)
                if i + 1 < len(runs):
                    self.mesh.send(hosts[i + 1], payload)
        return (payload if hosts[-1] == me else None), stats.as_lists()


class SplitNN(Algorithm):
    """Sequential split learning: clients take turns; client-side weights and optimizer state are handed
    on to the next client, peer-to-peer or through the server (``handoff``)."""

    population_support = frozenset({"availability", "deadline"})

    def __init__(self, plan, capture_ledger: bool = False, progress: bool = True):
        super().__init__(plan, capture_ledger, progress)
        self.state_ref = None          # the hand-off in flight to the next run of turns (a handle)
        self.holder: str | None = None   # timed rounds: the party that holds the latest client-side weights
        self.over_links = False

    def start(self) -> None:
        p, cfg = self.plan, self.cfg
        self.state_ref = None
        over_links = cfg.runtime.step_transport == "link" and CLIENT in p.topology.roles
        # over links, each worker host holds a link to the server for the whole round: the server serves them
        # in threads of its own (one run of turns at a time, as the turns are sequential)
        options = {"max_concurrency": cfg.runtime.workers + 2} if over_links else None
        self.hosts = Hosts.start(p, self.capture, role_options=options)
        self.hosts.install(SEGMENTS, dict.fromkeys(self.hosts.all, SequentialTurns), cfg.runtime.step_transport,
                           cfg.handoff)
        self.order = participants(cfg, 0)
        self.over_links = over_links and self._join_mesh()

    def _join_mesh(self) -> bool:
        hosts, workers = self.hosts, self.hosts.workers
        addresses = hosts.get([hosts.call(w, SEGMENTS, "mesh_address") for w in workers])
        if all(hosts.get([hosts.call(w, SEGMENTS, "join_mesh", i, addresses) for i, w in enumerate(workers)])):
            return True
        log.warning("worker hosts cannot connect to each other: hand-offs go through the driver, a call per run")
        return False

    def run_round(self, r: int) -> dict:
        if self.timed():
            return self._timed_round(r)
        order, last_round = self.order, r == self.cfg.training.rounds - 1
        next_order = None if last_round else participants(self.cfg, r + 1)
        first_next = None if last_round else next_order[0]
        if self.over_links:
            refs = self._round_over_links(r, order, first_next)
        else:
            refs = self._round_by_calls(r, order, first_next)
        self.order = next_order
        return self.hosts.gather_stats(refs, self.round_desc(r), self.progress)

    def _timed_round(self, r: int) -> dict:
        """A round on the simulated clock (population.py): its participants are the clients online when it begins;
        the hand-off kept at the end of the last round goes on to the first of them, and a client that goes
        offline in the middle of its turn stops there (timeline.py says when, before the round runs)."""
        order = self.round_clients(r)
        if self.state_ref is not None and self.holder is not None and self.holder != party_id(CLIENT, order[0]):
            self.state_ref = self._hand_on(r, order[0])
        fates, holder = sequential_fates(self.prices(), self.availability, order, self.step_sizes(order),
                                         self.now_s + self.wait_s, self.cfg.handoff == "server", self.holder,
                                         self.cfg.population.deadline_s)
        limits = {f.client: f.steps for f in fates if f.status != DONE}
        order = [f.client for f in fates if f.began]
        if self.over_links:
            refs = self._round_over_links(r, order, None, limits)
        else:
            refs = self._round_by_calls(r, order, None, limits)
        self.fates, self.holder = fates, holder
        if holder is None:
            self.state_ref = None
        return self.hosts.gather_stats(refs, self.round_desc(r), self.progress)

    def _hand_on(self, r: int, first: int):
        """The client-side weights kept by the last round's last turn go to this round's first client (through
        the server with ``handoff: server``), recorded in this round's ledger."""
        hosts, dst, src = self.hosts, party_id(CLIENT, first), self.holder
        if self.cfg.handoff == "server" and src != "server":
            sent = hosts.call(hosts.client_host[first], SEGMENTS, "hand_off", self.state_ref, src, "server", r)
            return hosts.call(hosts.roles["server"], SEGMENTS, "relay", sent, dst, r)
        return hosts.call(hosts.client_host[first], SEGMENTS, "hand_off", self.state_ref, src, dst, r)

    def _round_by_calls(self, r: int, order: list[int], first_next: int | None, limits: dict | None = None) -> list:
        """A call per run of turns; the driver passes each hand-off (an ObjectRef) on to the next call."""
        has_clients = CLIENT in self.plan.topology.roles
        refs, done = [], 0
        for run in self._runs(order):
            done += len(run)
            k_next = order[done] if done < len(order) else first_next
            # client-side weights move on to the next client; topologies without clients have nothing to hand on
            dst = None if k_next is None or not has_clients else party_id(CLIENT, k_next)
            via_server = self.cfg.handoff == "server" and dst is not None
            state_ref, stats_ref = self.hosts.call(self.hosts.client_host[run[0]], SEGMENTS, "train_turns", run, r,
                                                   self.state_ref, "server" if via_server else dst, limits, returns=2)
            if via_server:
                state_ref = self.hosts.call(self.hosts.roles["server"], SEGMENTS, "relay", state_ref, dst, r)
            self.state_ref = state_ref
            refs.append((stats_ref, len(run)))
        return refs

    def _round_over_links(self, r: int, order: list[int], first_next: int | None, limits: dict | None = None) -> list:
        """A call per worker host: the hosts hand on to each other directly (SequentialTurns.train_round)."""
        runs, workers = self._runs(order), self.hosts.workers
        hosts = [workers.index(self.hosts.client_host[run[0]]) for run in runs]
        last_next = None if first_next is None else party_id(CLIENT, first_next)
        outs, refs = [], []
        for i, w in enumerate(workers):
            out, stats = self.hosts.call(w, SEGMENTS, "train_round", runs, hosts, i, r,
                                         self.state_ref if hosts[0] == i else None, last_next, limits, returns=2)
            outs.append(out)
            refs.append((stats, sum(len(run) for run, h in zip(runs, hosts) if h == i)))
        self.state_ref = outs[hosts[-1]]
        return refs

    def _runs(self, order: list[int]) -> list[list[int]]:
        """The round's turns as calls: consecutive clients on one host share a call when hand-offs go peer to
        peer or the host relays them through the server over its link (with Ray calls and hand-offs through
        the server, each hand-off is a driver's call of the server's)."""
        runs: list[list[int]] = []
        for k in order:
            if runs and (self.cfg.handoff == "peer" or self.over_links) and \
                    self.hosts.client_host[k] is self.hosts.client_host[runs[-1][-1]]:
                runs[-1].append(k)
            else:
                runs.append([k])
        return runs

    def state(self) -> dict:
        """Every host's segments and optimizers, and the hand-off in flight to the next round's first client."""
        handoff = receive(self.hosts.get(self.state_ref)) if self.state_ref is not None else None
        return {"hosts": self.hosts.states(SEGMENTS), "handoff": handoff, "holder": self.holder}

    def restore(self, state: dict, round_: int) -> None:
        self.hosts.load_states(SEGMENTS, state["hosts"])
        self.state_ref = None if state["handoff"] is None else self.hosts.put(state["handoff"])
        self.holder = state.get("holder")
        self.order = participants(self.cfg, round_)

    def model(self) -> ComposedNet:
        hosts = self.hosts
        states = dict(receive(hosts.get(self.state_ref)["model"])) if self.state_ref is not None else {}
        for h in hosts.roles.values():
            states.update(hosts.get(hosts.call(h, SEGMENTS, "segment_states")))
        return compose(self.plan, states)
