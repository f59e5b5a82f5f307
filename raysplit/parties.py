"""Parties and the split engine.

``PartyHost`` is the one Ray actor class. An instance hosts the parties of one or more roles: a worker
hosts many virtual clients (role ``client``, party ids ``client/<k>``); another hosts the server, a relay
or a hop. It holds the live segment modules and optimizers of its roles.

A training step is driven by the host of the data holder (the initiator): it walks the topology's
segments in order, running its own segments in-process and calling the actors that hold the others,
passing ObjectRefs from actor to actor; then it walks the non-head segments in reverse for the backward
pass. Heads compute their loss and backward in the same call, so vanilla costs one round trip per step
and U-shaped two: the minimum each topology needs. The driver is never inside a step.

Everything a party sends to another party goes through ``self.ledger.send`` (accounting.py); every
forward and backward is metered by ``self.meter``.
"""
from __future__ import annotations

import copy
import ctypes
import functools
import os
import sys
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import ray
import torch
from torch import nn

from raysplit.accounting import FlopMeter, Ledger, receive
from raysplit.config import TrainingConfig
from raysplit.data import batches
from raysplit.topology import CLIENT, INPUT, ComposedNet, Topology


AVERAGING_POINT = "server"   # SplitFed: the party that averages the client-side weights (the "fed server")


def party_id(role: str, client: int | None) -> str:
    return f"{CLIENT}/{client}" if role == CLIENT else role


def make_optimizer(params, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def splitfed_aware(method):
    """Segment calls on a host in SplitFed mode go through its SplitFed rules (see the SplitFed section of
    PartyHost): v1 runs them on the calling client's own copy of this host's segments, v2 in the round's
    ticket order. Elsewhere the call runs as it is."""
    @functools.wraps(method)
    def call(self, client, name: str, clock, *args):
        if self.splitfed is None:
            return method(self, client, name, clock, *args)
        return self._splitfed_call(method, client, name, clock, args)
    return call


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


class PartyHost:
    def __init__(self, name: str, topology: Topology, roles: Sequence[str], modules: dict[str, nn.Module],
                 training: TrainingConfig, seed: int, threads: int = 1, use_gpu: bool = False,
                 deterministic: bool = True, capture_ledger: bool = False,
                 data_x: np.ndarray | None = None, data_y: np.ndarray | None = None, client_indices: dict[int, np.ndarray] | None = None,
                 sample_ids: np.ndarray | None = None):
        configure_torch(threads, deterministic)
        self.name, self.topo, self.roles, self.training, self.seed = name, topology, set(roles), training, seed
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        # live segments of the roles hosted here, each with its own optimizer (per-parameter optimizers make
        # this identical to one optimizer over the unsplit network)
        self.modules = {n: m.to(self.device) for n, m in modules.items() if topology.segment(n).owner in self.roles}
        self.optims = {n: make_optimizer(m.parameters(), training) for n, m in self.modules.items()}
        # zero-copy views of the object store (None: holds no data). x holds only this party's features (its
        # input view); row i is training sample sample_ids[i], or sample i when sample_ids is None
        self.data = {"x": data_x, "y": data_y}
        self.sample_ids = sample_ids
        self.client_indices = client_indices or {}
        self.peers: dict[str, Any] = {}                # role -> actor handle, for roles hosted elsewhere
        self.ledger, self.meter = Ledger(capture_ledger), FlopMeter()
        self.stash: dict[tuple[str, str], tuple[list[torch.Tensor], torch.Tensor]] = {}
        self.splitfed: SplitFedState | None = None     # set by splitfed_setup on the server-side hosts

    # ------------------------------------------------------------------ wiring and state
    def ping(self) -> str:
        return f"{self.name} on {os.uname().nodename} ({self.device})"

    def set_peers(self, peers: dict[str, Any]) -> None:
        self.peers = {r: h for r, h in peers.items() if r not in self.roles}

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def segment_states(self, roles: Sequence[str] | None = None) -> dict[str, dict]:
        return {n: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                for n, m in self.modules.items() if roles is None or self.topo.segment(n).owner in roles}

    def export_client(self) -> dict:
        """The client-side segments' weights and optimizer state: what a hand-off carries."""
        names = [n for n in self.modules if self.topo.segment(n).owner == CLIENT]
        return {"model": self.segment_states([CLIENT]), "optim": {n: self.optims[n].state_dict() for n in names}}

    def load_client(self, payload: dict) -> None:
        payload = receive(payload, self.device)
        for n, sd in payload["model"].items():
            self.modules[n].load_state_dict(sd)
        for n, sd in payload["optim"].items():
            self.optims[n].load_state_dict(sd)

    def drain(self) -> tuple[list, dict]:
        return self.ledger.drain(), self.meter.drain()

    # ------------------------------------------------------------------ one segment, forward or backward
    def _inputs(self, seg, idx, party_inputs) -> list[torch.Tensor]:
        it = iter(party_inputs)
        xs = []
        for i in seg.inputs:
            if i == INPUT:
                xs.append(torch.from_numpy(self.data["x"][self._rows(idx)]).to(self.device))
            else:  # a leaf of this segment's own graph; its gradient is what goes back upstream
                xs.append(receive(next(it), self.device).detach().requires_grad_(True))
        return xs

    def _send_input_grads(self, seg, xs, me: str, client) -> list[torch.Tensor]:
        out = []
        for i, x in zip(seg.inputs, xs):
            if i != INPUT:
                src_owner = party_id(self.topo.segment(i).owner, client)
                out.append(self.ledger.send(me, src_owner, "gradient", x.grad))
        return out

    @splitfed_aware
    def seg_forward(self, client, name: str, clock, idx, labels, *inputs):
        """Forward of one segment. For a head: loss, backward and update too; returns (*input grads, stats)."""
        self.ledger.round, self.ledger.step = clock
        seg = self.topo.segment(name)
        me, module = party_id(seg.owner, client), self.modules[name]
        xs = self._inputs(seg, idx, inputs)
        input_grad = any(i != INPUT for i in seg.inputs)
        out = module(*xs)
        self.meter.forward(me, name, module, xs, input_grad)
        if not seg.task:
            self.stash[(me, name)] = (xs, out)
            result = out.detach()
            for dst in dict.fromkeys(party_id(c.owner, client) for c in self.topo.consumers(name)):
                result = self.ledger.send(me, dst, "activation", result)
            return result
        y = receive(labels, self.device) if labels is not None else self._labels(seg.task, idx)
        loss = nn.functional.cross_entropy(out, y)
        self.optims[name].zero_grad(set_to_none=True)
        loss.backward()
        self.meter.backward(me, name, module, xs, input_grad)
        self.optims[name].step()
        stats = {seg.task: (float(loss.detach()) * len(y), int((out.argmax(1) == y).sum()), len(y))}
        return (*self._send_input_grads(seg, xs, me, client), stats)

    @splitfed_aware
    def seg_backward(self, client, name: str, clock, *grads):
        """Backward of a non-head segment from the sum of its consumers' gradients; update; send input grads."""
        self.ledger.round, self.ledger.step = clock
        seg = self.topo.segment(name)
        me, module = party_id(seg.owner, client), self.modules[name]
        xs, out = self.stash.pop((me, name))
        g = sum(receive(gr, self.device) for gr in grads)
        self.optims[name].zero_grad(set_to_none=True)
        out.backward(g)
        self.meter.backward(me, name, module, xs, any(i != INPUT for i in seg.inputs))
        self.optims[name].step()
        sent = self._send_input_grads(seg, xs, me, client)
        return tuple(sent) if len(sent) > 1 else (sent[0] if sent else None)

    def _labels(self, task: str, idx) -> torch.Tensor:
        return self.topo.labels(task, torch.from_numpy(self.data["y"][self._rows(idx)])).to(self.device)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows of this party's data holding the samples ``idx`` (samples are aligned by their id)."""
        if self.sample_ids is None:
            return idx
        rows = np.searchsorted(self.sample_ids, idx).clip(max=len(self.sample_ids) - 1)
        if not np.array_equal(self.sample_ids[rows], idx):
            raise ValueError(f"{self.name} holds no sample with id {idx[self.sample_ids[rows] != idx][0]}")
        return rows

    # ------------------------------------------------------------------ the engine: one step, one turn
    def _call(self, role: str, method: str, num_returns: int, *args):
        """Run a segment method here if this actor hosts the role, else on the actor that does (no wait)."""
        if role in self.roles:
            return getattr(self, method)(*args)
        return getattr(self.peers[role], method).options(num_returns=num_returns).remote(*args)

    @staticmethod
    def _local(values, here: bool):
        """Values consumed in-process must be materialized; remote consumers get the ObjectRefs as they are."""
        return [ray.get(v) if here and isinstance(v, ray.ObjectRef) else v for v in values]

    def run_step(self, client, clock, idx: np.ndarray) -> dict:
        topo, vals = self.topo, {}
        me = party_id(topo.segments[0].owner, client)      # this step's initiator: the first data holder
        grads: dict[str, list] = defaultdict(list)
        stats, pending = [], []
        for seg in topo.segments:
            here = seg.owner in self.roles
            ins = self._local([vals[i] for i in seg.inputs if i != INPUT], here)
            reads_data = INPUT in seg.inputs or (seg.task and topo.label_holders[seg.task] == seg.owner)
            seg_idx = idx if reads_data else None
            if reads_data and not here:
                # another party reading its own rows (vertical) is told which samples: their ids
                seg_idx = self.ledger.send(me, party_id(seg.owner, client), "sample_ids", idx)
            labels = None
            if seg.task and topo.label_holders[seg.task] != seg.owner:
                # labels travel from their holder (a data holder hosted here) to the head's owner
                holder = party_id(topo.label_holders[seg.task], client)
                labels = self.ledger.send(holder, party_id(seg.owner, client), "labels", self._labels(seg.task, idx))
            if not seg.task:
                vals[seg.name] = self._call(seg.owner, "seg_forward", 1, client, seg.name, clock, seg_idx, labels, *ins)
                continue
            n_grads = sum(i != INPUT for i in seg.inputs)
            res = self._call(seg.owner, "seg_forward", n_grads + 1, client, seg.name, clock, seg_idx, labels, *ins)
            *gs, st = res if isinstance(res, (list, tuple)) else [res]
            stats.append(st)
            for i, g in zip([i for i in seg.inputs if i != INPUT], gs):
                grads[i].append(g)
        for seg in reversed([s for s in topo.segments if not s.task]):
            here = seg.owner in self.roles
            srcs = [i for i in seg.inputs if i != INPUT]
            res = self._call(seg.owner, "seg_backward", max(1, len(srcs)), client, seg.name, clock,
                             *self._local(grads.pop(seg.name), here))
            res = list(res) if len(srcs) > 1 else [res]
            if srcs:
                for i, g in zip(srcs, res):
                    grads[i].append(g)
            elif not here:
                pending.append(res[0])       # a remote data holder's last backward: wait for it below
        remote = [s for s in stats if isinstance(s, ray.ObjectRef)]
        merged: dict[str, tuple] = {}
        for st in ray.get(remote + pending)[: len(remote)] + [s for s in stats if not isinstance(s, ray.ObjectRef)]:
            merged.update(st)
        return merged

    def train_turn(self, client: int, round_: int, payload: dict | None, next_party: str | None) -> tuple[dict, dict]:
        """One client's turn in a sequential round: take the hand-off, train on local batches, hand off.
        (Topologies without virtual clients run one turn per round on the first data holder's host.)"""
        me = party_id(self.topo.segments[0].owner, client)
        if payload is not None:
            self.load_client(payload)
        torch.manual_seed(hash((self.seed, round_, client)) % 2**31)   # hosting-independent randomness
        totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
        epochs = self.training.local_epochs
        step = 0
        for e in range(epochs):
            for idx in batches(self.client_indices[client], self.training.batch_size, self.seed, round_ * epochs + e, client):
                for task, v in self.run_step(client, (round_, step), idx).items():
                    totals[task] += v
                step += 1
        state = self.export_client()
        if next_party is not None:
            state = self.hand_off(state, me, next_party, round_)
        return state, {t: v.tolist() for t, v in totals.items()}

    def relay(self, payload: dict, dst: str, round_: int) -> dict:
        """Server-mediated hand-off: the server passes the client-side weights on to the next client."""
        return self.hand_off(payload, "server", dst, round_)

    def hand_off(self, state: dict, src: str, dst: str, round_: int) -> dict:
        self.ledger.round = round_
        return {"model": self.ledger.send(src, dst, "weights", state["model"]),
                "optim": self.ledger.send(src, dst, "optimizer_state", state["optim"])}

    # ================================================================== SplitFed: the parallel schedule
    # Worker side: ``splitfed_train`` trains some participating clients, each on its own copy of the
    # client-side segments ({client: copy}, only while the client is training) and sends their weights to the
    # averaging point. Server side (every non-client host): ``splitfed_setup`` / ``_open_round`` /
    # ``_fold`` / ``_finish_round``; v1 keeps a copy of this host's segments per training client, v2 one model
    # that takes the clients' steps in ticket order. The averaging point (the server) also averages the
    # client-side weights and sends the result to the next round's participants.

    def splitfed_setup(self, version: str, client_init: dict[str, dict] | None = None) -> None:
        """Enter SplitFed mode. The averaging point gets the initial client-side weights (``client_init``)."""
        calls = sum(1 + (not s.task) for s in self.topo.segments if s.owner in self.roles)   # per step
        self.splitfed = SplitFedState(version, client_init, calls_per_ticket=calls)

    def splitfed_open_round(self, round_: int, order: list[int]) -> dict | None:
        """Start a round with its participants in canonical order. The averaging point sends the global
        client-side weights to each participant and returns them (what every participant starts from)."""
        sf = self.splitfed
        sf.open(round_, order)
        if sf.client_global is None:
            return None
        self.ledger.round, self.ledger.step = round_, 0
        for k in order:
            sent = self.ledger.send(AVERAGING_POINT, party_id(CLIENT, k), "weights", sf.client_global)
        return sent

    def splitfed_train(self, round_: int, plan: list[tuple[int, int, int]], client_global: dict) -> tuple[dict, dict]:
        """Worker side: run ``plan`` = [(clock step, client, local step)] in order with ``run_step``. Each client
        trains its own copy of the client-side segments, from ``client_global`` with a fresh optimizer; after
        its last step its weights go to the averaging point. Returns ({client: weights}, train stats)."""
        epochs, size = self.training.local_epochs, self.training.batch_size
        client_global = receive(client_global, self.device)
        names = [n for n in self.modules if self.topo.segment(n).owner == CLIENT]
        home = ({n: self.modules[n] for n in names}, {n: self.optims[n] for n in names})
        last = {k: j for _, k, j in plan}
        live: dict[int, tuple[dict, dict, list]] = {}
        sent: dict[int, dict] = {}
        totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
        try:
            for step, k, j in plan:
                if k not in live:
                    mods = {n: copy.deepcopy(home[0][n]) for n in names}
                    for n, m in mods.items():
                        m.load_state_dict(client_global[n])
                    live[k] = (mods, {n: make_optimizer(m.parameters(), self.training) for n, m in mods.items()},
                               [idx for e in range(epochs) for idx in
                                batches(self.client_indices[k], size, self.seed, round_ * epochs + e, k)])
                mods, optims, steps = live[k]
                self.modules.update(mods)
                self.optims.update(optims)
                torch.manual_seed(hash((self.seed, round_, k, j)) % 2**31)   # hosting-independent randomness
                for task, v in self.run_step(k, (round_, step), steps[j]).items():
                    totals[task] += v
                if j == last[k]:
                    self.ledger.round, self.ledger.step = round_, step
                    sent[k] = self.ledger.send(party_id(CLIENT, k), AVERAGING_POINT, "weights",
                                               self.segment_states([CLIENT]))
                    del live[k]
        finally:
            self.modules.update(home[0])
            self.optims.update(home[1])
        return sent, {t: v.tolist() for t, v in totals.items()}

    def _splitfed_call(self, method, client, name: str, clock, args):
        sf = self.splitfed
        if sf.version == "v2":
            with sf.turn(clock):
                return method(self, client, name, clock, *args)
        if client not in sf.copies:     # v1: this client's copy of the segments here, from the global ones
            mods = {n: copy.deepcopy(m) for n, m in self.modules.items()}
            sf.copies[client] = (mods, {n: make_optimizer(m.parameters(), self.training) for n, m in mods.items()}, {})
        saved = self.modules, self.optims, self.stash
        self.modules, self.optims, self.stash = sf.copies[client]
        try:
            return method(self, client, name, clock, *args)
        finally:
            self.modules, self.optims, self.stash = saved

    def splitfed_fold(self, entries: list[tuple[int, float]], *client_weights) -> None:
        """Add finished clients, [(client, weight)], to the round's weighted sums. The sums are taken in the
        round's canonical order whatever order clients finish in (early ones wait in a buffer), so results do
        not depend on the number of workers. ``client_weights``: at the averaging point, the workers'
        {client: weights}; elsewhere results this call must wait for (Ray resolves them first), ignored."""
        sf = self.splitfed
        weights = {k: receive(w) for d in client_weights if sf.client_global is not None for k, w in d.items()}
        for k, n in entries:
            sf.buffer[sf.position[k]] = (n, weights.get(k), sf.copies.pop(k, None))
        while sf.folded in sf.buffer:
            n, client_state, own = sf.buffer.pop(sf.folded)
            sf.folded += 1
            sf.total += n
            if client_state is not None:
                sf.sums.add("client", client_state, n)
            if sf.version == "v1":     # a client that never called this host leaves its segments unchanged
                sf.sums.add("server", {m_name: m.state_dict() for m_name, m in (own[0] if own else self.modules).items()}, n)

    def splitfed_finish_round(self) -> None:
        """Averages (FedAvg): the client-side weights at the averaging point, v1's server-side copies here."""
        sf = self.splitfed
        if sf.folded != len(sf.order):
            raise RuntimeError(f"SplitFed round {sf.round}: {sf.folded} of {len(sf.order)} clients averaged")
        if sf.client_global is not None:
            sf.client_global = sf.sums.mean("client", sf.total)
        if sf.version == "v1":
            for n, sd in sf.sums.mean("server", sf.total).items():
                self.modules[n].load_state_dict(sd)
        sf.sums = WeightedSums()

    def splitfed_client_global(self) -> dict | None:
        return self.splitfed.client_global

    # ------------------------------------------------------------------ whole-model baselines: FedAvg, large-batch SGD
    # Here every party holds the WHOLE network (the topology's ComposedNet: all segments run in-process).
    # A worker trains it for its virtual clients one after another (they keep no state between calls beyond
    # their indices); the server holds the global copy and averages what the clients send, weighted by their
    # sample counts, in client order (so results do not depend on how clients are spread over workers).
    def init_whole_model(self, modules: dict[str, nn.Module]) -> None:
        self.whole = ComposedNet(self.topo, modules).to(self.device)
        if "server" in self.roles:          # large-batch SGD steps the global network on the server
            self.whole_optim = make_optimizer(self.whole.parameters(), self.training)
        self._uploads, self._upload_samples = WeightedSums(), 0   # what the clients sent this round / step
        self._epoch_batches: dict[tuple[int, int], list[np.ndarray]] = {}

    def whole_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.whole.state_dict().items()}

    def send_global(self, clock, clients: Sequence[int]) -> dict[str, torch.Tensor]:
        """Server: the global weights go to each listed client (one ledger entry each; one object to read)."""
        self.ledger.round, self.ledger.step = clock
        state = self.whole_state()
        for k in clients:
            state = self.ledger.send("server", party_id(CLIENT, k), "weights", state)
        return state

    def _whole_forward_backward(self, me: str, idx: np.ndarray) -> dict:
        """Loss of the whole network on a batch (summed over tasks) and its backward, metered for ``me``."""
        x = torch.from_numpy(self.data["x"][idx]).to(self.device)
        y = torch.from_numpy(self.data["y"][idx]).to(self.device)
        outs = self.whole(x)
        labels = {task: self.topo.labels(task, y) for task in outs}
        losses = {task: nn.functional.cross_entropy(out, labels[task]) for task, out in outs.items()}
        sum(losses.values()).backward()
        self.meter.forward(me, "whole", self.whole, [x], False)
        self.meter.backward(me, "whole", self.whole, [x], False)
        return {task: (float(losses[task].detach()) * len(idx), int((out.argmax(1) == labels[task]).sum()), len(idx))
                for task, out in outs.items()}

    def local_train(self, client: int, round_: int, weights: dict) -> tuple[dict, dict]:
        """FedAvg client: train the global weights for ``local_epochs`` on local batches with a fresh optimizer;
        send the result (with the sample count the server weights it by) to the server."""
        me = party_id(CLIENT, client)
        self.ledger.round, self.ledger.step = round_, 0
        self.whole.load_state_dict(receive(weights, self.device))
        optim = make_optimizer(self.whole.parameters(), self.training)
        torch.manual_seed(hash((self.seed, round_, client)) % 2**31)   # hosting-independent randomness
        totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
        epochs = self.training.local_epochs
        for e in range(epochs):
            for idx in batches(self.client_indices[client], self.training.batch_size, self.seed, round_ * epochs + e, client):
                optim.zero_grad(set_to_none=True)
                for task, v in self._whole_forward_backward(me, idx).items():
                    totals[task] += v
                optim.step()
        upload = {"samples": len(self.client_indices[client]),
                  "weights": self.ledger.send(me, "server", "weights", self.whole_state())}
        return upload, {t: v.tolist() for t, v in totals.items()}

    def _batch(self, client: int, epoch_seed: int, step: int) -> np.ndarray:
        key = (client, epoch_seed)
        if key not in self._epoch_batches:
            self._epoch_batches = {k: v for k, v in self._epoch_batches.items() if k[1] == epoch_seed}
            self._epoch_batches[key] = batches(self.client_indices[client], self.training.batch_size, self.seed,
                                               epoch_seed, client)
        return self._epoch_batches[key][step]

    def local_gradients(self, clients: Sequence[int], clock, epoch_seed: int, step: int, weights: dict):
        """Large-batch SGD clients: each computes the gradient of the whole network on its batch ``step`` of
        the epoch and sends it to the server (with buffers such as BatchNorm statistics, if the model has
        any). Returns one upload per client, then the train stats."""
        self.ledger.round, self.ledger.step = clock
        weights = receive(weights, self.device)
        uploads, totals = [], defaultdict(lambda: np.zeros(3))
        for k in clients:
            me = party_id(CLIENT, k)
            idx = self._batch(k, epoch_seed, step)
            self.whole.load_state_dict(weights)           # each client starts from the global weights
            self.whole.zero_grad(set_to_none=True)
            torch.manual_seed(hash((self.seed, *clock, k)) % 2**31)
            for task, v in self._whole_forward_backward(me, idx).items():
                totals[task] += v
            grads = {n: p.grad.detach().clone() for n, p in self.whole.named_parameters() if p.grad is not None}
            upload = {"samples": len(idx), "gradient": self.ledger.send(me, "server", "gradient_update", grads)}
            buffers = {n: b.detach().clone() for n, b in self.whole.named_buffers()}
            if buffers:
                upload["buffers"] = self.ledger.send(me, "server", "weights", buffers)
            uploads.append(upload)
        return (*uploads, {t: v.tolist() for t, v in totals.items()})

    def accumulate(self, upload: dict) -> None:
        """Server: add one client's upload (weights or gradient, plus buffers) to the sample-weighted sum."""
        n, upload = upload["samples"], receive(upload, self.device)
        tensors = {**upload.get("weights", {}), **upload.get("gradient", {}), **upload.get("buffers", {})}
        self._uploads.add("upload", {"whole": tensors}, n)
        self._upload_samples += n

    def _take_average(self) -> dict[str, torch.Tensor]:
        avg = self._uploads.mean("upload", self._upload_samples).get("whole", {})
        self._uploads, self._upload_samples = WeightedSums(), 0
        return avg

    def finish_average(self) -> None:
        """Server, FedAvg: the new global weights are the sample-weighted average of the clients'."""
        self.whole.load_state_dict(self._take_average())

    def finish_step(self) -> None:
        """Server, large-batch SGD: step on the sample-weighted average gradient (the gradient of the mean loss
        over all clients' batches together); buffers become their sample-weighted average."""
        avg = self._take_average()
        self.whole_optim.zero_grad(set_to_none=True)
        for name, p in self.whole.named_parameters():
            if name in avg:
                p.grad = avg[name].to(p.device, p.dtype)
        self.whole_optim.step()
        with torch.no_grad():
            for name, b in self.whole.named_buffers():
                if name in avg:
                    b.copy_(avg[name])


class WeightedSums:
    """Running sums of state dicts weighted by sample count, in float64 on the CPU; ``mean`` gives the
    weighted average in each tensor's own dtype (counters such as BatchNorm's are rounded)."""

    def __init__(self):
        self.sums: dict[str, dict[str, dict[str, torch.Tensor]]] = defaultdict(dict)
        self.dtypes: dict[tuple[str, str, str], torch.dtype] = {}

    def add(self, kind: str, states: dict[str, dict], weight: float) -> None:
        for seg, sd in states.items():
            acc = self.sums[kind].setdefault(seg, {})
            for key, t in sd.items():
                self.dtypes[(kind, seg, key)] = t.dtype
                v = t.detach().to("cpu", torch.float64) * weight
                acc[key] = acc[key] + v if key in acc else v

    def mean(self, kind: str, total: float) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for seg, acc in self.sums[kind].items():
            out[seg] = {}
            for key, v in acc.items():
                dtype, v = self.dtypes[(kind, seg, key)], v / total
                out[seg][key] = (v if dtype.is_floating_point else v.round()).to(dtype)
        return out


@dataclass
class SplitFedState:
    """A server-side host's SplitFed state for the current round."""
    version: str                                  # v1 | v2
    client_global: dict | None                    # the global client-side weights (averaging point only)
    calls_per_ticket: int = 1                     # segment calls this host gets per step (v2 turnstile)
    round: int = -1
    order: list[int] = field(default_factory=list)
    position: dict[int, int] = field(default_factory=dict)
    copies: dict[int, tuple[dict, dict, dict]] = field(default_factory=dict)   # v1: client -> (modules, optims, stash)
    buffer: dict[int, tuple] = field(default_factory=dict)
    folded: int = 0
    total: float = 0.0
    sums: WeightedSums = field(default_factory=WeightedSums)
    ticket: int = 0
    calls: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    TURN_TIMEOUT_S = 600.0

    def open(self, round_: int, order: list[int]) -> None:
        self.round, self.order = round_, list(order)
        self.position = {k: i for i, k in enumerate(order)}
        self.copies, self.buffer, self.folded, self.total, self.sums = {}, {}, 0, 0.0, WeightedSums()
        self.ticket, self.calls = 0, 0

    @contextmanager
    def turn(self, clock):
        """v2: the one server model takes steps in ticket order (the clock's step is the ticket); a call of a
        later step waits in its Ray thread until every call of the earlier steps has run here."""
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


RemotePartyHost = ray.remote(PartyHost)
