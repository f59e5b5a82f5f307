"""The asynchronous split schedule in simulated seconds (algorithms/async_split.py runs what it plans).

``concurrency`` clients work at once, with no round barrier. A client that starts downloads the latest global
client-side weights from the fed server, then runs its steps: each step is the client's own part (its compute
and the step's transfers, ``Prices.step_parts_s``) followed by its turn at the server, which takes the steps of
all clients one at a time in the order they arrive (first come, first served). After its last step the client
uploads its weights; when they arrive they are mixed into the global ones (or discarded as stale), and a new
client, drawn from the seed among those online and not already working, takes the free place. A client that
goes offline in the middle (population.py) stops after its last whole step and sends nothing; its place is
taken at that moment.

A "round" is the next ``needed`` arrivals of finished clients: the clients still working at its end go on in
the next round, from where they are; the place its last arrival frees is taken as the next round begins (at
the same simulated moment), so a client's batches are drawn for the round it starts in, as a sequential turn's. Everything is decided here before a round runs, exactly from the prices:
the round's events in time order (starts with the weights' version, steps with their place in the server's
order, finishes with their mixing weight, drops), the fates of the clients that ended in it, and its span.
The state between rounds is plain numbers and lists (a checkpoint holds it).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from raysplit.config import ExperimentConfig
from raysplit.population import NEVER, Availability
from raysplit.timeline import DONE, DROPPED, OFFLINE, STALE, Fate, Prices, step_sizes

_STREAM = 0x6173          # the draws of clients ("as"), apart from the data's, the schedule's and the population's


@dataclass(frozen=True)
class Event:
    """One thing that happens in an asynchronous round. start: the client takes the global weights of ``version``;
    step: its local step ``step`` runs, ``ticket``-th of the round at the server; finish: its weights arrive,
    ``staleness`` versions late, and are mixed in with weight ``mix`` (None: discarded as stale); drop: it went
    offline (its unfinished work is discarded)."""
    kind: str
    client: int
    t: float
    step: int = -1
    ticket: int = -1
    version: int = -1
    staleness: int = -1
    mix: float | None = None


class AsyncTimeline:
    """The event simulation of an asynchronous run, one round at a time (``next_round``)."""

    def __init__(self, cfg: ExperimentConfig, prices: Prices, avail: Availability, client_sizes: list[int],
                 hub: str, concurrency: int):
        self.cfg, self.prices, self.avail, self.hub, self.concurrency = cfg, prices, avail, hub, concurrency
        self.client_sizes = client_sizes
        self.weights_bytes = prices.client_weights_bytes()
        self.t = 0.0              # the simulated time: the end of the last round
        self.version = 0          # updates the global client-side weights took
        self.server_free = 0.0    # when the server is done with the steps that reached it so far
        self.draws = 0            # clients drawn so far (each draw has a random stream of its own)
        self.seq = 0              # ties in time are taken in the order they were planned
        self.heap: list[tuple] = []          # (time, seq, kind, client, step): each working client's next event
        self.flights: dict[int, dict] = {}   # client -> its work: start_s, version, own and server parts of its steps, ...

    # ---------------------------------------------------------------- state (checkpoints)
    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("t", "version", "server_free", "draws", "seq", "heap", "flights")}

    def load(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    # ---------------------------------------------------------------- the simulation
    def _push(self, t: float, kind: str, client: int, step: int = -1) -> None:
        heapq.heappush(self.heap, (t, self.seq, kind, client, step))
        self.seq += 1

    def _go_on(self, k: int, t: float, kind: str, step: int = -1) -> None:
        """The client's next event at ``t``, unless it goes offline first (then it drops then)."""
        off = self.flights[k]["off"]
        self._push(*((t, kind, k, step) if t <= off + 1e-12 else (off, "drop", k)))

    def _fill(self, events: list[Event]) -> None:
        """Free places are taken by clients drawn among those online now and not already working."""
        while len(self.flights) < self.concurrency:
            online = self.avail.online(self.t)
            free = online[~np.isin(online, list(self.flights))] if self.flights else online
            if not len(free):
                return                # the place waits for the next client to finish or drop
            k = int(np.random.default_rng([self.cfg.seed, _STREAM, self.draws]).choice(free))
            self.draws += 1
            t = self.cfg.training
            sizes = step_sizes(self.client_sizes[k], t.batch_size, t.local_epochs)
            own, server = self.prices.step_parts_s(k, sizes)
            self.flights[k] = dict(start_s=self.t, version=self.version, own=own.tolist(),
                                   server=server.tolist(), done=0, off=self.avail.offline_at(k, self.t),
                                   up=self.prices.upload_s(k, self.hub, self.weights_bytes))
            events.append(Event("start", k, self.t, version=self.version))
            self._go_on(k, self.t + self.prices.download_s(k, self.hub, self.weights_bytes) + float(own[0]), "arrive", 0)

    def next_round(self, r: int, needed: int) -> tuple[list[Event], list[Fate], float]:
        """Round ``r``: simulate until ``needed`` finished clients' weights have arrived. Returns the round's events
        in time order, the fates of the clients that ended in it, and its span in simulated seconds."""
        a = self.cfg.asynchrony
        events: list[Event] = []
        fates: list[Fate] = []
        begin, arrived, ticket = self.t, 0, 0
        self._fill(events)
        while arrived < needed:
            if not self.heap:         # nobody working: wait for a client to come online
                self.t = self.avail.next_online(self.t)
                if self.t == NEVER:
                    raise RuntimeError(f"no client is online at or after {begin:g} simulated seconds: asynchronous "
                                       f"round {r + 1} cannot go on")
                self._fill(events)
                continue
            t, _, kind, k, j = heapq.heappop(self.heap)
            self.t, f = t, self.flights[k]
            if kind == "arrive":      # step j reaches the server: its turn comes after the steps that came before
                end = max(t, self.server_free) + f["server"][j]
                if end > f["off"] + 1e-12:
                    self._push(f["off"], "drop", k)
                    continue
                self.server_free, f["done"] = end, j + 1
                events.append(Event("step", k, t, step=j, ticket=ticket))
                ticket += 1
                if j + 1 < len(f["own"]):
                    self._go_on(k, end + f["own"][j + 1], "arrive", j + 1)
                else:
                    self._go_on(k, end + f["up"], "finish")
                continue
            del self.flights[k]
            steps = len(f["own"])
            if kind == "finish":
                staleness = self.version - f["version"]
                fresh = a.max_staleness is None or staleness <= a.max_staleness
                mix = a.mix * (1 + staleness) ** -a.staleness_exponent if fresh else None
                self.version += fresh
                arrived += 1
                events.append(Event("finish", k, t, staleness=staleness, mix=mix))
                fates.append(Fate(k, f["start_s"], t, steps, steps, DONE if fresh else STALE))
            else:
                events.append(Event("drop", k, t))
                fates.append(Fate(k, f["start_s"], t, f["done"], steps, DROPPED if f["done"] else OFFLINE))
            if arrived < needed:      # (the round's last arrival: its place is taken as the next round begins)
                self._fill(events)
        return events, fates, self.t - begin
