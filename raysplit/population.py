"""The population: which clients are online at each moment of simulated time (the ``population:`` config).

Pure and deterministic from the seed (numpy only), so the same clients are online at the same simulated
second whatever runs the simulation. An idle client costs nothing here but, for ``trace``, its intervals:
a model answers for the clients it is asked about.

- ``always``: every client, at every moment (the papers' world).
- ``share``: time runs in slots of ``slot_s``; in each slot every client is online with probability
  ``online_share``, drawn from (seed, slot) — a client online in consecutive slots stays online across them.
- ``diurnal``: client k is online for ``online_s`` of every ``period_s``, from a phase of its own drawn from the seed.
- ``trace``: the on-line intervals of a CSV file (``client,start_s,end_s``, half-open [start, end)); a client
  not in the file is never online; after the last interval ends nobody is. FedScale's form of a device trace.

Times are simulated seconds since the run began (network.py prices every round).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from raysplit.config import ExperimentConfig, PopulationConfig
from raysplit.errors import ConfigError

NEVER = math.inf
_STREAM = 0x706F70        # the population's random streams ("pop"), apart from the data's and the schedule's


class Availability:
    """Who is online: ``online(t)`` (the sorted ids of the clients online at t) and ``offline_at(k, t)`` (when
    client k, online at t, goes offline: t itself if it is not online)."""

    def __init__(self, num_clients: int):
        self.n = num_clients

    def online(self, t: float) -> np.ndarray:
        return np.arange(self.n)

    def offline_at(self, client: int, t: float) -> float:
        return NEVER

    def next_online(self, t: float) -> float:
        """The first moment >= t at which some client is online (NEVER if none ever is again)."""
        return t

    def dynamic(self) -> bool:
        """Whether who is online changes with time (the schedule then waits for the clock to choose)."""
        return False


class Share(Availability):
    def __init__(self, num_clients: int, share: float, slot_s: float, seed: int):
        super().__init__(num_clients)
        self.share, self.slot_s, self.seed = share, slot_s, seed

    def _slot(self, s: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _STREAM, 1, s]).random(self.n) < self.share

    def online(self, t: float) -> np.ndarray:
        return np.flatnonzero(self._slot(int(t // self.slot_s)))

    def offline_at(self, client: int, t: float) -> float:
        s = int(t // self.slot_s)
        while self._slot(s)[client]:
            s += 1
            if s - t // self.slot_s > 10_000:     # online_share 1: never leaves
                return NEVER
        return max(t, s * self.slot_s)

    def next_online(self, t: float) -> float:
        s = int(t // self.slot_s)
        while not self._slot(s).any():
            s += 1
        return max(t, s * self.slot_s)

    def dynamic(self) -> bool:
        return self.share < 1.0


class Diurnal(Availability):
    def __init__(self, num_clients: int, period_s: float, online_s: float, seed: int):
        super().__init__(num_clients)
        self.period_s, self.online_s = period_s, min(online_s, period_s)
        self.phase = np.random.default_rng([seed, _STREAM, 2]).uniform(0.0, period_s, num_clients)

    def _into(self, t: float) -> np.ndarray:
        return np.mod(t - self.phase, self.period_s)

    def online(self, t: float) -> np.ndarray:
        return np.flatnonzero(self._into(t) < self.online_s)

    def offline_at(self, client: int, t: float) -> float:
        if self.online_s >= self.period_s:
            return NEVER
        into = float(self._into(t)[client])
        return t + self.online_s - into if into < self.online_s else t

    def next_online(self, t: float) -> float:
        if len(self.online(t)):
            return t
        return t + float(np.min(self.period_s - self._into(t)))

    def dynamic(self) -> bool:
        return self.online_s < self.period_s


class Trace(Availability):
    def __init__(self, num_clients: int, intervals: dict[int, np.ndarray]):
        super().__init__(num_clients)
        self.intervals = intervals            # client -> (m, 2) sorted, disjoint [start, end)

    def online(self, t: float) -> np.ndarray:
        return np.array(sorted(k for k, iv in self.intervals.items() if self._at(iv, t) is not None), dtype=np.int64)

    @staticmethod
    def _at(iv: np.ndarray, t: float) -> int | None:
        i = int(np.searchsorted(iv[:, 0], t, side="right")) - 1
        return i if i >= 0 and t < iv[i, 1] else None

    def offline_at(self, client: int, t: float) -> float:
        iv = self.intervals.get(client)
        i = None if iv is None else self._at(iv, t)
        return t if i is None else float(iv[i, 1])

    def next_online(self, t: float) -> float:
        best = NEVER
        for iv in self.intervals.values():
            if self._at(iv, t) is not None:
                return t
            i = int(np.searchsorted(iv[:, 0], t))          # the first interval starting after t
            if i < len(iv):
                best = min(best, float(iv[i, 0]))
        return best

    def dynamic(self) -> bool:
        return True


def read_trace(path: str, num_clients: int) -> dict[int, np.ndarray]:
    """A trace file's intervals per client: CSV rows ``client,start_s,end_s`` (a header row is allowed);
    intervals of one client may touch (they are joined) but not overlap."""
    where = "population.trace_file"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(where, path, f"a readable CSV file of client,start_s,end_s rows ({getattr(e, 'strerror', None) or e})") from None
    by_client: dict[int, list[tuple[float, float]]] = {}
    for line, row in enumerate(rows, 1):
        if not row or (line == 1 and row[0].strip().lower() == "client"):
            continue
        try:
            k, start, end = int(row[0]), float(row[1]), float(row[2])
        except (ValueError, IndexError):
            raise ConfigError(f"{where} line {line}", ",".join(row), "client,start_s,end_s: an integer and two numbers") from None
        if not 0 <= k < num_clients:
            raise ConfigError(f"{where} line {line}", ",".join(row), f"a client id in 0..{num_clients - 1} (data.num_clients)")
        if not (0 <= start < end) or not math.isfinite(end):
            raise ConfigError(f"{where} line {line}", ",".join(row), "an interval with 0 <= start_s < end_s (finite)")
        by_client.setdefault(k, []).append((start, end))
    if not by_client:
        raise ConfigError(where, path, "a CSV file with at least one client,start_s,end_s row")
    out = {}
    for k, ivs in sorted(by_client.items()):
        ivs.sort()
        joined = [list(ivs[0])]
        for start, end in ivs[1:]:
            if start < joined[-1][1]:
                raise ConfigError(where, path, f"intervals that do not overlap (client {k}: [{joined[-1][0]:g}, "
                                  f"{joined[-1][1]:g}) and [{start:g}, {end:g}) overlap)")
            if start == joined[-1][1]:
                joined[-1][1] = end
            else:
                joined.append([start, end])
        out[k] = np.array(joined, dtype=float)
    return out


def availability(cfg: ExperimentConfig) -> Availability:
    """The config's availability model (a trace file is read and checked here)."""
    p, n = cfg.population, cfg.data.num_clients
    if p.availability == "share":
        return Share(n, p.online_share, p.slot_s, cfg.seed)
    if p.availability == "diurnal":
        return Diurnal(n, p.period_s, p.online_s, cfg.seed)
    if p.availability == "trace":
        return Trace(n, read_trace(p.trace_file, n))
    return Availability(n)


def most_online(cfg: ExperimentConfig, model: Availability) -> float:
    """How many clients can be online at once at most (expected, for the seeded models): for checking that a
    round can have the clients it asks for."""
    p, n = cfg.population, cfg.data.num_clients
    if isinstance(model, Trace):
        return len(model.intervals)
    if isinstance(model, Share):
        return n * p.online_share
    if isinstance(model, Diurnal):
        return n * model.online_s / model.period_s
    return n


def check(cfg: ExperimentConfig, per_round: int) -> Availability:
    """The availability model, refused in one line where a round could never have ``per_round`` clients."""
    p = cfg.population
    if p.availability == "trace" and not p.trace_file:
        raise ConfigError("population.trace_file", None, "a CSV file of client,start_s,end_s rows when "
                          "population.availability is trace")
    if p.availability != "trace" and p.trace_file:
        raise ConfigError("population.trace_file", p.trace_file, f"null unless population.availability is trace "
                          f"(it is {p.availability})")
    model = availability(cfg)
    ceiling = most_online(cfg, model)
    if per_round > ceiling + 1e-9:
        field = "training.clients_per_round" if cfg.training.clients_per_round is not None else "training.participation"
        value = cfg.training.clients_per_round if field.endswith("round") else cfg.training.participation
        raise ConfigError(field, value, f"at most the clients online at once ({ceiling:g} under population "
                          f"availability {p.availability}; {per_round} selected a round)")
    return model


def describe(p: PopulationConfig) -> str:
    """One line for logs and figure titles."""
    what = {"always": "always online", "share": f"{p.online_share:g} online per {p.slot_s:g} s slot",
            "diurnal": f"online {p.online_s / 3600:g} h of every {p.period_s / 3600:g} h",
            "trace": f"trace {Path(p.trace_file or '').name}"}[p.availability]
    if p.deadline_s is not None:
        what += f", deadline {p.deadline_s:g} s"
    if p.over_select > 1:
        what += f", over-selection {p.over_select:g}x"
    return what
