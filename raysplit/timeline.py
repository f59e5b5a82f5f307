"""A round's timeline in simulated seconds, known before it runs: what each client's work costs (``Prices``) and
what becomes of each participant (``sequential_fates``, ``parallel_fates``): who finishes, who goes offline in
the middle of its work, whose update misses the round's deadline.

Exact, not estimated: a step's messages and FLOPs depend only on its batch size, so the engine's own step is
run once per batch size on a host in this process that holds every role (``PartyHost`` without Ray, copies of
the segments and plug-ins): its ledger entries and metered FLOPs are what a step of that size sends and
computes anywhere, and network.py prices them for each client's link and speed. For sequential turns, whose
simulated time is a plain sum (network.py), a turn priced here takes exactly the time the run's own ledger and
FLOP tables give it.

A whole-model client (FedAvg) downloads the global weights, runs its steps (``count_flops`` of the whole
network, as its meter counts) and uploads its weights. A client of a parallel round is priced as if the server
served it alone (the hub's shared link and queue are network.py's post-hoc concern).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from raysplit.accounting import count_flops, payload_nbytes
from raysplit.config import ExperimentConfig
from raysplit.engine import SegmentServer, detached_state, party_id
from raysplit.graph import CLIENT, ComposedNet, Topology
from raysplit.host import PartyHost
from raysplit.network import Network
from raysplit.population import Availability

PROBE_CLIENT = 0


def step_sizes(n_samples: int, batch_size: int, epochs: int) -> list[int]:
    """The batch sizes of a client's steps in a round (partition.batches chunks its shuffled indices)."""
    full, rest = divmod(n_samples, batch_size)
    return ([batch_size] * full + ([rest] if rest else [])) * epochs


@dataclass(frozen=True)
class Cost:
    """One unit of work as the ledger and meter record it: messages [(src, dst, bytes)] and FLOPs {party: n},
    with the probe client's id in the party names."""
    messages: tuple
    flops: tuple

    def seconds(self, net: Network, *parties: str) -> float:
        """Priced for real parties: the probe's client/0 (and client/1, a hand-off's receiver) are ``parties``."""
        rename = {party_id(CLIENT, PROBE_CLIENT + i): p for i, p in enumerate(parties)}
        return (sum(net.message_s(rename.get(s, s), rename.get(d, d), 1, b) for s, d, b in self.messages)
                + sum(net.compute_s(rename.get(p, p), f) for p, f in self.flops))


class Prices:
    """Per-client prices of a run's work (seconds on the config's network)."""

    def __init__(self, cfg: ExperimentConfig, topology: Topology, modules: dict, plugins: list,
                 train_x: np.ndarray, train_y: np.ndarray, net: Network, whole: bool):
        self.cfg, self.net, self.whole = cfg, net, whole
        self._steps: dict[int, Cost] = {}
        if whole:
            self._net = ComposedNet(topology, copy.deepcopy(modules))
            self.model_bytes = payload_nbytes(detached_state(self._net))
            self._shape = train_x.shape[1:]
            return
        # threads as they are, no deterministic mode: this process's torch settings stay the driver's
        self.host = PartyHost("pricing", topology, topology.roles, cfg.training, cfg.seed,
                              threads=torch.get_num_threads(), deterministic=False,
                              plugins=copy.deepcopy(plugins), data_x=train_x, data_y=train_y)
        self.program = SegmentServer(self.host, copy.deepcopy(modules))
        self._handoff: Cost | None = None

    # ---------------------------------------------------------------- split steps (the engine's own)
    def _drained(self) -> Cost:
        entries, flops = self.host.ledger.drain(), self.host.meter.drain()
        return Cost(tuple((e.src, e.dst, e.nbytes) for e in entries), tuple((p, f) for (p, _), f in sorted(flops.items())))

    def _probe(self, size: int) -> Cost:
        with torch.random.fork_rng():
            self.program.engine.step(self.program.store, PROBE_CLIENT, (0, 0), np.arange(size))
        return self._drained()

    def step(self, size: int) -> Cost:
        if size not in self._steps:
            self._steps[size] = self._probe(size) if not self.whole else self._whole_step(size)
        return self._steps[size]

    def _client_state(self) -> dict:
        if not self._steps:
            self.step(1)
        topo = self.host.topo
        return {part: {n: v for n, v in d.items() if topo.segment(n).owner == CLIENT}
                for part, d in self.program.store.state().items()}

    def handoff(self) -> Cost:
        """A sequential hand-off: the client-side weights and optimizer state, client to client."""
        if self._handoff is None:
            state, ledger = self._client_state(), self.host.ledger
            src, dst = party_id(CLIENT, PROBE_CLIENT), party_id(CLIENT, PROBE_CLIENT + 1)
            ledger.send(src, dst, "weights", state["model"])
            ledger.send(src, dst, "optimizer_state", state["optim"])
            self._handoff = self._drained()
        return self._handoff

    def client_weights_bytes(self) -> int:
        """SplitFed: the client-side weights a client downloads and uploads each round."""
        return payload_nbytes(self._client_state()["model"])

    # ---------------------------------------------------------------- whole-model steps (FedAvg)
    def _whole_step(self, size: int) -> Cost:
        x = torch.zeros((size, *self._shape))
        fwd, bwd = count_flops(self._net, [x], False)
        return Cost((), ((party_id(CLIENT, PROBE_CLIENT), fwd + bwd),))

    # ---------------------------------------------------------------- a client's work in a round
    def steps_s(self, client: int, sizes: list[int]) -> np.ndarray:
        """The simulated seconds of each of a client's steps, in order."""
        me = party_id(CLIENT, client)
        return np.array([self.step(s).seconds(self.net, me) for s in sizes])

    def step_parts_s(self, client: int, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Each step's seconds in two parts: the client's own (its compute and every transfer of the step) and the
        other parties' compute (the server's, which clients working at once take turns at: async_timeline.py)."""
        probe = party_id(CLIENT, PROBE_CLIENT)
        others = np.array([sum(self.net.compute_s(p, f) for p, f in self.step(s).flops if p != probe) for s in sizes])
        return self.steps_s(client, sizes) - others, others

    def download_s(self, client: int, src: str, nbytes: int) -> float:
        return self.net.message_s(src, party_id(CLIENT, client), 1, nbytes)

    def upload_s(self, client: int, dst: str, nbytes: int) -> float:
        return self.net.message_s(party_id(CLIENT, client), dst, 1, nbytes)


# -------------------------------------------------------------------- what becomes of each participant

DONE, DROPPED, OFFLINE, LATE, SPARE, STALE = "done", "dropped", "offline", "late", "spare", "stale"
STATUSES = (DONE, DROPPED, OFFLINE, LATE, SPARE, STALE)


@dataclass
class Fate:
    """One participant's round: when its work began and ended (simulated seconds since the run began), the steps
    it ran of those it had, and its status: done; dropped (went offline in the middle: the steps it finished
    count, its result does not); offline (gone before its turn came); late (finished after the deadline: its
    upload crossed but the round did not wait for it); spare (over-selected: finished after the clients the
    round needed); stale (asynchronous rounds: its update came more than asynchrony.max_staleness versions late)."""
    client: int
    start_s: float
    end_s: float
    steps: int
    planned: int
    status: str = DONE
    began: bool = True          # False: a sequential turn the round's deadline came before (nothing ran)


def _steps_until(seconds: np.ndarray, budget: float) -> tuple[int, float]:
    """How many of these consecutive steps end within ``budget`` seconds, and the time they take."""
    cum = np.cumsum(seconds)
    done = int(np.searchsorted(cum, budget + 1e-12, side="right"))
    return done, float(cum[done - 1]) if done else 0.0


def sequential_fates(prices: Prices, avail: Availability, order: list[int], sizes: dict[int, list[int]],
                     t0: float, via_server: bool, holder: str | None,
                     deadline_s: float | None = None) -> tuple[list[Fate], str | None]:
    """Turns one after another from ``t0``, each after the hand-off into it: a client offline when its turn comes
    does nothing; one that goes offline in the middle stops after its last whole step and the hand-off goes on
    from the party that sent it; at ``t0 + deadline_s`` the round ends (the turn then running stops the same way,
    later ones do not begin: late). ``holder``: who holds the latest client-side weights when the round begins
    (None: nobody yet). Returns the fates and who holds them at the end."""
    end = math.inf if deadline_s is None else t0 + deadline_s
    net, t, fates = prices.net, t0, []
    handoff = prices.handoff()
    for k in order:
        me = party_id(CLIENT, k)
        if t >= end:                                    # the round is over: no hand-off, no turn
            fates.append(Fate(k, end, end, 0, len(sizes[k]), LATE, began=False))
            continue
        if holder is not None and holder != me:         # the hand-off into this turn, from its holder
            if via_server and holder != "server":
                t += handoff.seconds(net, holder, "server")
                holder = "server"
            t += handoff.seconds(net, holder, me)
        secs, until = prices.steps_s(k, sizes[k]), avail.offline_at(k, t)
        done, used = _steps_until(secs, min(until, end) - t)
        status = DONE if done == len(secs) else LATE if until > end else DROPPED if done else OFFLINE
        fates.append(Fate(k, t, t + used, done, len(secs), status))
        t += used
        if status == DONE:
            holder = me
    return fates, holder


def parallel_fates(prices: Prices, avail: Availability, order: list[int], sizes: dict[int, list[int]], t0: float,
                   hub: str, weights_bytes: int, deadline_s: float | None, needed: int) -> list[Fate]:
    """Clients working at once from ``t0``: each downloads ``weights_bytes`` from ``hub``, runs its steps and
    uploads as much; one that goes offline stops after its last whole step (no upload); one that would finish
    after ``t0 + deadline_s`` is late; of the rest, the first ``needed`` to finish are kept (over-selection)."""
    fates = []
    for k in order:
        down, up = prices.download_s(k, hub, weights_bytes), prices.upload_s(k, hub, weights_bytes)
        secs = prices.steps_s(k, sizes[k])
        budget = avail.offline_at(k, t0) - t0 - down
        done, used = _steps_until(secs, budget) if budget >= 0 else (0, 0.0)
        finished = done == len(secs) and used + up <= budget + 1e-12
        end = t0 + down + used + (up if finished else 0.0)
        status = DONE if finished else DROPPED
        if finished and deadline_s is not None and end - t0 > deadline_s + 1e-12:
            status = LATE
        fates.append(Fate(k, t0, end, done, len(secs), status))
    on_time = sorted((f for f in fates if f.status == DONE), key=lambda f: f.end_s)
    for f in on_time[needed:]:
        f.status = SPARE
    return fates


def lockstep_fates(prices: Prices, avail: Availability, order: list[int], epoch_sizes: dict[int, list[int]],
                   epochs: int, t0: float, hub: str, weights_bytes: int, deadline_s: float | None = None) -> list[Fate]:
    """Large-batch SGD's steps in lock-step from ``t0``: at step t of each epoch every client with a batch t
    downloads the weights, computes that batch's gradient and uploads it, and the step ends with the slowest.
    A client whose step would end after it goes offline takes no part in it or any later one (dropped); none
    takes part in a step that would end after ``t0 + deadline_s`` (late)."""
    end = math.inf if deadline_s is None else t0 + deadline_s
    off = {k: min(avail.offline_at(k, t0), end) for k in order}
    done, ends, gone, t = dict.fromkeys(order, 0), dict.fromkeys(order, t0), set(), t0
    for _ in range(epochs):
        for step in range(max((len(s) for s in epoch_sizes.values()), default=0)):
            took = {}
            for k in order:
                if k in gone or step >= len(epoch_sizes[k]):
                    continue
                secs = (prices.download_s(k, hub, weights_bytes) + prices.steps_s(k, [epoch_sizes[k][step]])[0]
                        + prices.upload_s(k, hub, weights_bytes))
                if t + secs <= off[k] + 1e-12:
                    took[k] = secs
                else:
                    gone.add(k)
            if took:
                t += max(took.values())
            for k in took:
                done[k], ends[k] = done[k] + 1, t
    left = {k: avail.offline_at(k, t0) <= end for k in order}    # gone offline, not stopped by the deadline
    return [Fate(k, t0, ends[k], done[k], epochs * len(epoch_sizes[k]),
                 DONE if k not in gone else LATE if not left[k] else DROPPED if done[k] else OFFLINE) for k in order]
