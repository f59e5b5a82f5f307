"""``PartyHost``: the one Ray actor class, a place where parties live.

A host holds what any party needs and nothing of any algorithm: its device, its view of the data (its own
features and, if it holds them, labels; clients' index arrays), its peers (the hosts of the other roles),
the ledger (the one send path), the FLOP meter, its plug-ins, and the *programs* an algorithm installs on
it (``install``) and calls (``call``). A worker host holds many virtual clients (role ``client``, party ids
``client/<k>``); another hosts the server, a relay, a hop or a vertical data holder.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Sequence

import numpy as np
import ray
import torch

from raysplit import link
from raysplit.accounting import FlopMeter, Ledger, receive
from raysplit.config import TrainingConfig
from raysplit.graph import Topology
from raysplit.plugins import Plugin, Plugins


def configure_torch(threads: int, deterministic: bool) -> None:
    torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    keep_freed_buffers()


def keep_freed_buffers() -> None:
    """Keep freed activation buffers in the heap (glibc). In a Ray worker process glibc unmaps each large
    freed buffer and the next step page-faults it back in (measured: ~23k minor faults per FedAvg client
    turn, steps 15-20% slower than the same code in a plain process); fixed mmap/trim thresholds stop that."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 128 << 20)


class ClientIndices(Mapping):
    """{client id: its training-sample indices} for the clients one host holds, packed: the ids (sorted), one array
    of every client's indices end to end, and where each client's begin. A client costs its indices and two
    integers, not a Python array object (100,000 clients: ~1.6 MB beside their indices instead of ~19 MB, and
    one array to ship to a host instead of 100,000). A client's indices are a read-only view."""

    def __init__(self, ids: Iterable[int], parts: Iterable[np.ndarray]):
        ids, parts = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64), list(parts)
        if len(ids) != len(parts):
            raise ValueError(f"{len(ids)} client ids for {len(parts)} index arrays")
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        if len(self.ids) > 1 and not (np.diff(self.ids) > 0).all():
            raise ValueError("client ids repeat")
        sizes = np.fromiter((len(parts[i]) for i in order), np.int64, len(order))
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.flat = np.concatenate([np.asarray(parts[i], np.int64) for i in order]) if len(order) else np.zeros(0, np.int64)
        self.flat.flags.writeable = False

    def __getitem__(self, k) -> np.ndarray:
        i = int(np.searchsorted(self.ids, k))
        if i == len(self.ids) or self.ids[i] != k:
            raise KeyError(k)
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def __iter__(self):
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, k) -> bool:
        i = int(np.searchsorted(self.ids, k))
        return i < len(self.ids) and self.ids[i] == k

    def __reduce__(self):
        return (_client_indices, (self.ids, self.offsets, self.flat))


def _client_indices(ids: np.ndarray, offsets: np.ndarray, flat: np.ndarray) -> ClientIndices:
    out = ClientIndices.__new__(ClientIndices)
    out.ids, out.offsets, out.flat = ids, offsets, flat
    return out


class PartyHost:
    def __init__(self, name: str, topology: Topology, roles: Sequence[str], training: TrainingConfig, seed: int,
                 threads: int = 1, use_gpu: bool = False, deterministic: bool = True, capture_ledger: bool = False,
                 plugins: Sequence[Plugin] = (), data_x: np.ndarray | None = None, data_y: np.ndarray | None = None,
                 client_indices: Mapping[int, np.ndarray] | None = None, sample_ids: np.ndarray | None = None):
        configure_torch(threads, deterministic)
        self.name, self.topo, self.roles, self.training, self.seed = name, topology, set(roles), training, seed
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        # zero-copy views of the object store (None: holds no data). x holds only this party's features (its
        # input view); row i is training sample sample_ids[i], or sample i when sample_ids is None
        self.data = {"x": data_x, "y": data_y}
        self.sample_ids = sample_ids
        self.client_indices = client_indices or {}     # {client: its sample indices} (hosts.py: a ClientIndices)
        self.peers: dict[str, Any] = {}                # role -> actor handle, for roles hosted elsewhere
        self.plugins = Plugins(plugins, self)
        self.ledger = Ledger(capture_ledger, transform=self.plugins.on_send if self.plugins.senders else None)
        self.meter = FlopMeter()
        self.programs: dict[str, Any] = {}

    # ------------------------------------------------------------------ wiring
    def ping(self) -> str:
        return f"{self.name} on {os.uname().nodename} ({self.device})"

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def set_peers(self, peers: dict[str, Any]) -> None:
        self.peers = {r: h for r, h in peers.items() if r not in self.roles}

    def install(self, key: str, program: type, *args) -> None:
        """Install an algorithm's program: ``program(self, *args)`` (ObjectRef args arrive resolved)."""
        self.programs[key] = program(self, *args)

    def call(self, key: str, method: str, *args):
        return getattr(self.programs[key], method)(*args)

    def stream(self, key: str, method: str, *args):
        """``call`` for a program method that yields: call with ``num_returns="streaming"``, each item an
        object as soon as it is yielded."""
        for item in getattr(self.programs[key], method)(*args):
            yield item

    def serve(self, name: str, address: tuple, token: bytes) -> bool:
        """Serve an initiator's calls over a direct link until it ends the session (raysplit/link.py)."""
        return link.serve(self, name, address, token)

    def drain(self) -> tuple[list, dict, dict]:
        """This round's ledger entries, FLOP totals and plug-in metrics (and start the next round's)."""
        return self.ledger.drain(), self.meter.drain(), self.plugins.metrics()

    def seed_torch(self, *key) -> None:
        """Seed torch for a turn or step by what it is (``key``: round, client, ...), not by where it runs:
        hosting-independent randomness. Only the CPU generator unless this process has started CUDA:
        ``torch.manual_seed`` also seeds every accelerator backend, ~130 us a call, paid per client."""
        seed = hash((self.seed, *key)) % 2**31
        if torch.cuda.is_initialized():
            torch.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)

    # ------------------------------------------------------------------ this party's data and messages
    def receive(self, payload: Any, device: torch.device | str | None = None) -> Any:
        """A payload sent to a party here: tensors on this host's device, opened by its plug-ins."""
        return receive(payload, device or self.device, self.plugins.open)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows of this party's data holding the samples ``idx`` (samples are aligned by their id)."""
        if self.sample_ids is None:
            return idx
        rows = np.searchsorted(self.sample_ids, idx).clip(max=len(self.sample_ids) - 1)
        if not np.array_equal(self.sample_ids[rows], idx):
            raise ValueError(f"{self.name} holds no sample with id {idx[self.sample_ids[rows] != idx][0]}")
        return rows

    def features(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.data["x"][self.rows(idx)]).to(self.device)

    def labels(self, task: str, idx: np.ndarray) -> torch.Tensor:
        return self.topo.labels(task, torch.from_numpy(self.data["y"][self.rows(idx)])).to(self.device)


RemotePartyHost = ray.remote(PartyHost)
