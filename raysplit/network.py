"""Simulated time: what a run's ledger and FLOP tables would take on a given network (the ``network:`` config).

Post hoc and pure (pandas, no Ray): the same tables a results directory holds (ledger.csv per (round, src,
dst, kind): messages and bytes; flops.csv per (round, party, phase)) are priced under a network, so a run can
be re-priced on another network without running it again (results.py: ``simulate(results_dir, network=...)``).

Every party has an access link (up and down Mbit/s, a one-way latency) and a compute speed (FLOP/s), by role
(``network.client`` for every data holder, ``network.server``, ``network.others``), with per-client lists
or a seeded lognormal spread on top (config.py: NetworkConfig).

- A message from A to B takes  latency(A) + latency(B) + 8 * bytes / min(up(A), down(B)).
  A ledger row of m messages and b bytes takes m * (latency(A) + latency(B)) + 8 * b / min(up(A), down(B)).
- A party's compute takes flops / its FLOP/s.
- **Sequential** schedules (SplitNN's turns, vertical, every chain): nothing overlaps, a step's exchange
  waits for the previous one and a turn for the previous turn, so a round is the sum of all its message
  times plus the sum of all its compute times.
- **Parallel** schedules (SplitFed, FedAvg, large-batch SGD: the clients work at once) run in phases
  that wait for the slowest client: downloads (hub -> clients), the clients' compute (the slowest
  client's), uploads (clients -> hub), and the hub's compute (the server serves its clients' work one
  after another: the sum). A transfer phase through a hub P takes
      max_k(messages_k * latency_k) + max( max_k 8 * bytes_k / link_k,  8 * sum_k bytes_k / link_P )
  with link_k the client's own uplink (uploads) or downlink (downloads) and link_P the hub's downlink
  (uploads: FedAvg's uploads share the server's downlink) or uplink (downloads: a broadcast shares its
  uplink); with several hubs, the slowest. Messages between two clients or two non-clients are serial.
  Phase totals are per round: for large-batch SGD's per-step exchanges of equal size (and any protocol
  whose steps look alike) this equals the sum over steps; for SplitFed it prices each round's exchanges
  as one block per phase (no pipelining across clients at the server).
- sim_comm_s is the transfer part, sim_compute_s the compute part; sim_time_s = their sum, plus sim_wait_s
  where a population's round waited for its first client to come online (population.py). A parallel round with
  a deadline (population.deadline_s) ends at it: its comm and compute are scaled down to fit (late clients'
  uploads are in the ledger, but the round did not wait for them).
- **Asynchronous** rounds (``schedule: async``) overlap their clients' work and the server's turns in ways the
  tables cannot tell: their span is planned event by event (async_timeline.py) and kept in metrics.csv
  (``sim_span_s``); sim_time_s is that span, and sim_comm_s and sim_compute_s are scaled to add up to it. Priced
  under another network (``simulate``) they keep that span: on another network the events, and so the training,
  would be others.

The default compute speed is this machine's, measured once (``machine_flops``: a matmul and a convolution
on one thread) and cached, then written into a run's config.yaml (``resolve``), so its simulated times are
reproducible from the results directory.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from raysplit import config as config_mod
from raysplit.config import ExperimentConfig, LinkConfig, NetworkConfig, holder_names
from raysplit.errors import ConfigError

SIM_COLUMNS = ("sim_time_s", "sim_comm_s", "sim_compute_s")
KEPT = ("sim_wait_s", "sim_span_s")      # what the run itself knows (population.py, async_timeline.py), not priced here
ROLES = ("client", "server", "others")


# --------------------------------------------------------------------------- the machine's compute speed

def _cache_file() -> Path:
    return Path(os.environ.get("RAYSPLIT_CACHE", Path.home() / ".cache" / "raysplit")) / "machine.json"


def measure_flops(repeats: int = 30) -> float:
    """FLOP/s of one thread on a 256x256 matmul plus a FmnistCNN-like convolution (best of ``repeats``),
    counted as the meter counts: 2 FLOPs per multiply-accumulate."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # a party host runs on its own core(s); one is the unit
    try:
        with torch.no_grad():
            a, x, w = torch.randn(256, 256), torch.randn(64, 1, 28, 28), torch.randn(32, 1, 5, 5)
            flops = 2 * 256 ** 3 + 2 * 64 * 32 * 24 * 24 * 25
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                a @ a
                torch.nn.functional.conv2d(x, w)
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return flops / best


def machine_flops() -> float:
    """This machine's FLOP/s, measured once and cached (``$RAYSPLIT_CACHE``, default ~/.cache/raysplit):
    every later run, in any process, prices compute with the same number."""
    path = _cache_file()
    try:
        return float(json.loads(path.read_text())["flops_per_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = round(measure_flops(), -6)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"flops_per_s": value, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        try:
            os.link(tmp, path)          # the first process to measure wins; the others read its number
        except FileExistsError:
            value = float(json.loads(path.read_text())["flops_per_s"])
        finally:
            tmp.unlink()
    except (OSError, ValueError, KeyError):
        pass                            # a read-only home: use this process's measurement
    return value


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fill every unset compute speed with the machine's (in place), before the config is written."""
    for role in ROLES:
        link = getattr(cfg.network, role)
        if link.flops_per_s is None:
            link.flops_per_s = machine_flops()
    return cfg


# --------------------------------------------------------------------------- the parties' links

@dataclass(frozen=True)
class Link:
    up_bps: float
    down_bps: float
    latency_s: float
    flops_per_s: float


class Network:
    """Every party's link and speed, from a config's ``network`` section (unset speeds: the machine's)."""

    def __init__(self, net: NetworkConfig, num_clients: int, seed: int = 0, holders: tuple[str, ...] = ()):
        self.cfg, self.holders = net, set(holders)
        self.roles = {role: self._link(getattr(net, role)) for role in ROLES}
        c, n = net.client, num_clients
        base = dict(up_mbps=c.up_mbps, down_mbps=c.down_mbps, latency_ms=c.latency_ms,
                    flops_per_s=self.roles["client"].flops_per_s)
        columns = {key: np.full(n, float(v)) for key, v in base.items()}
        for key in columns:
            given = getattr(net.per_client, key)
            if given is not None:
                columns[key] = np.asarray(given, dtype=float)
        if net.spread > 0:              # heterogeneous clients: seeded, median 1, latency unchanged
            rng = np.random.default_rng([seed, 0x6E6574])
            for key in ("up_mbps", "down_mbps", "flops_per_s"):
                columns[key] = columns[key] * np.exp(net.spread * rng.standard_normal(n))
        # one row per client (bit/s, bit/s, s, FLOP/s); a client's Link is built when asked for: a population of
        # 100,000 would otherwise build 100,000 of them every time a run's tables are priced
        self._clients = np.stack([columns["up_mbps"] * 1e6, columns["down_mbps"] * 1e6, columns["latency_ms"] / 1e3,
                                  columns["flops_per_s"]], axis=1)

    @property
    def clients(self) -> list[Link]:
        return [Link(*map(float, row)) for row in self._clients]

    @staticmethod
    def _link(c: LinkConfig) -> Link:
        return Link(c.up_mbps * 1e6, c.down_mbps * 1e6, c.latency_ms / 1e3, c.flops_per_s or machine_flops())

    def is_client(self, party: str) -> bool:
        """Data holders: virtual clients (client/k) and vertical holders."""
        return party.split("/", 1)[0] == "client" or party in self.holders

    def link(self, party: str) -> Link:
        role, _, k = party.partition("/")
        if role == "client":
            return Link(*map(float, self._clients[int(k)])) if k and int(k) < len(self._clients) else self.roles["client"]
        if party in self.holders:
            return self.roles["client"]
        return self.roles["server" if role == "server" else "others"]

    def message_s(self, src: str, dst: str, messages: float, nbytes: float) -> float:
        """m messages of b bytes in all from src to dst: m latencies + the bytes at the slower end."""
        a, b = self.link(src), self.link(dst)
        return messages * (a.latency_s + b.latency_s) + 8 * nbytes / min(a.up_bps, b.down_bps)

    def compute_s(self, party: str, flops: float) -> float:
        return flops / self.link(party).flops_per_s


def describe(net: NetworkConfig) -> str:
    """One line for figure titles: the clients' and the server's links."""
    c, s = net.client, net.server
    spread = f", spread {net.spread:g}" if net.spread else ""
    return (f"clients {c.up_mbps:g}/{c.down_mbps:g} Mbit/s up/down, {c.latency_ms:g} ms{spread}; "
            f"server {s.up_mbps:g}/{s.down_mbps:g} Mbit/s, {s.latency_ms:g} ms")


def network_for(cfg: ExperimentConfig, network: NetworkConfig | dict | None = None) -> Network:
    """The config's network, or ``network`` instead: a NetworkConfig, or a raw ``network:`` mapping laid
    over the config's (keys it does not give keep the run's values, its measured compute speed included),
    validated as the config's is."""
    if isinstance(network, dict):
        raw = config_mod.to_dict(cfg)
        raw["network"] = _merged(raw["network"], network)
        network = config_mod.from_dict(raw).network
    holders = tuple(holder_names(cfg)) if cfg.topology == "vertical" else ()
    return Network(network or cfg.network, cfg.data.num_clients, cfg.seed, holders)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


# --------------------------------------------------------------------------- one round's time

def sequential_time(ledger: pd.DataFrame, flops: pd.DataFrame, net: Network) -> tuple[float, float]:
    """(comm, compute) seconds when nothing overlaps: sums."""
    comm = sum(net.message_s(r.src, r.dst, r.messages, r.bytes) for r in ledger.itertuples())
    compute = sum(net.compute_s(r.party, r.flops) for r in flops.itertuples())
    return comm, compute


def _phase(rows: list, net: Network, upload: bool) -> float:
    """One transfer phase through one hub: rows of (client, hub, messages, bytes)."""
    hub = rows[0][1]
    per_client: dict[str, list[float]] = {}
    for client, _, m, b in rows:
        acc = per_client.setdefault(client, [0.0, 0.0])
        acc[0] += m
        acc[1] += b
    hub_link = net.link(hub)
    latency = max(m * (net.link(c).latency_s + hub_link.latency_s) for c, (m, _) in per_client.items())
    own = max(8 * b / (net.link(c).up_bps if upload else net.link(c).down_bps) for c, (_, b) in per_client.items())
    shared = 8 * sum(b for _, b in per_client.values()) / (hub_link.down_bps if upload else hub_link.up_bps)
    return latency + max(own, shared)


def parallel_time(ledger: pd.DataFrame, flops: pd.DataFrame, net: Network) -> tuple[float, float]:
    """(comm, compute) seconds of a round whose clients work at once (phases wait for the slowest)."""
    ups: dict[str, list] = {}
    downs: dict[str, list] = {}
    serial = 0.0
    for r in ledger.itertuples():
        src_client, dst_client = net.is_client(r.src), net.is_client(r.dst)
        if src_client and not dst_client:
            ups.setdefault(r.dst, []).append((r.src, r.dst, r.messages, r.bytes))
        elif dst_client and not src_client:
            downs.setdefault(r.src, []).append((r.dst, r.src, r.messages, r.bytes))
        else:
            serial += net.message_s(r.src, r.dst, r.messages, r.bytes)
    up = max((_phase(rows, net, upload=True) for rows in ups.values()), default=0.0)
    down = max((_phase(rows, net, upload=False) for rows in downs.values()), default=0.0)
    per_party: dict[str, float] = {}
    for r in flops.itertuples():
        per_party[r.party] = per_party.get(r.party, 0.0) + net.compute_s(r.party, r.flops)
    clients = max((t for p, t in per_party.items() if net.is_client(p)), default=0.0)
    hubs = sum(t for p, t in per_party.items() if not net.is_client(p))
    return up + down + serial, clients + hubs


def round_times(ledger: pd.DataFrame, flops: pd.DataFrame, net: Network, parallel: bool) -> pd.DataFrame:
    """sim_time_s, sim_comm_s, sim_compute_s per round (and cumulative), from ledger and FLOP tables."""
    price = parallel_time if parallel else sequential_time
    rounds = sorted(set(ledger["round"]) | set(flops["round"]))
    empty_l, empty_f = ledger.iloc[:0], flops.iloc[:0]
    by_l, by_f = dict(tuple(ledger.groupby("round"))), dict(tuple(flops.groupby("round")))
    rows = []
    for r in rounds:
        comm, compute = price(by_l.get(r, empty_l), by_f.get(r, empty_f), net)
        rows.append({"round": r, "sim_time_s": comm + compute, "sim_comm_s": comm, "sim_compute_s": compute})
    df = pd.DataFrame(rows, columns=["round", *SIM_COLUMNS])
    for col in SIM_COLUMNS:
        df[f"{col}_cum"] = df[col].cumsum()
    return df


def add_sim_columns(metrics: pd.DataFrame, ledger: pd.DataFrame, flops: pd.DataFrame, cfg: ExperimentConfig,
                    parallel: bool, network: NetworkConfig | dict | None = None) -> pd.DataFrame:
    """metrics.csv with the simulated-time columns (replaced if there). ``parallel``: the run's clients work at
    once (catalog.is_parallel)."""
    times = round_times(ledger, flops, network_for(cfg, network), parallel)
    metrics = metrics.drop(columns=[c for c in metrics.columns if c.startswith("sim_") and c not in KEPT])
    if metrics.empty:
        return metrics
    merged = metrics.merge(times, on="round", how="left")
    fill = {c: 0.0 for c in SIM_COLUMNS}      # a round with no message and no FLOP (centralized) takes no time
    merged[list(SIM_COLUMNS)] = merged[list(SIM_COLUMNS)].fillna(fill)
    deadline = cfg.population.deadline_s
    if parallel and deadline is not None:     # a round ends at its deadline: what arrives later is not waited for
        scale = np.minimum(1.0, deadline / merged["sim_time_s"].where(merged["sim_time_s"] > 0, np.inf))
        for col in SIM_COLUMNS:
            merged[col] = merged[col] * scale
    if "sim_span_s" in merged:                # an asynchronous round: its span, planned event by event
        span = merged["sim_span_s"]
        scale = (span / merged["sim_time_s"].where(merged["sim_time_s"] > 0, np.inf)).where(span.notna(), 1.0)
        for col in SIM_COLUMNS:
            merged[col] = merged[col] * scale
        merged["sim_time_s"] = span.where(span.notna(), merged["sim_time_s"])
    if "sim_wait_s" in merged:                # a round that waited for a client to come online began later
        merged["sim_time_s"] = merged["sim_time_s"] + merged["sim_wait_s"]
    for col in SIM_COLUMNS:
        merged[f"{col}_cum"] = merged[col].cumsum()
    return merged


def load_network(path: str | Path) -> dict:
    """A YAML file holding a ``network:`` section (or just its keys)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise ConfigError("--network", str(p), "a readable YAML file with a network: section") from None
    if isinstance(raw, dict) and "network" in raw:
        raw = raw["network"]
    if not isinstance(raw, dict):
        raise ConfigError("--network", str(p), "a YAML file with a network: section (a mapping)")
    return raw
