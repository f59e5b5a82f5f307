"""The split engine: forward and backward of segments over an explicit store, and one training step.

A ``SegmentStore`` is what a party holds of the network: live segment modules, one optimizer each (per-
parameter optimizers make this identical to one optimizer over the unsplit network) and the activations
stashed between a segment's forward and its backward. It is passed in, never swapped: sequential SplitNN
keeps one store per host, SplitFed v1 one per client on both sides, v2 one per client on the worker side.

A step is driven by the host of the data holder (the initiator): ``SplitEngine.step`` walks the topology's
segments in order, running its own segments in-process and calling the hosts that hold the others (their
``segments`` program: ``seg_forward`` / ``seg_backward``), passing ObjectRefs from actor to actor; then it
walks the non-head segments in reverse for the backward pass. Heads compute their loss and backward in the
same call, so vanilla costs one round trip per step and U-shaped two: the minimum each topology needs.
The driver is never inside a step. Every tensor that leaves a party goes through ``host.ledger.send``.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from raysplit.config import TrainingConfig
from raysplit.graph import CLIENT, INPUT, Segment, eval_mode
from raysplit.link import Link, close_links, open_links, resolve

SEGMENTS = "segments"      # the key every split algorithm installs its segment-serving program under


def party_id(role: str, client: int | None) -> str:
    return f"{CLIENT}/{client}" if role == CLIENT else role


def make_optimizer(params, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def detached_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class SegmentStore:
    """Segment modules, their optimizers and the stash of one party (or one client's copy of it)."""

    def __init__(self, modules: dict[str, nn.Module], training: TrainingConfig, device: torch.device | None = None):
        self.modules = {n: m if device is None else m.to(device) for n, m in modules.items()}
        self.optims = {n: make_optimizer(m.parameters(), training) for n, m in self.modules.items()}
        # (party, segment) -> (inputs, output, extra client loss or None, its backward FLOPs)
        self.stash: dict[tuple[str, str], tuple] = {}

    def copy(self, training: TrainingConfig, weights: dict[str, dict] | None = None) -> "SegmentStore":
        """A copy of the modules (on their device, with ``weights`` loaded if given) and fresh optimizers."""
        mods = {n: copy.deepcopy(m) for n, m in self.modules.items()}
        for n, sd in (weights or {}).items():
            mods[n].load_state_dict(sd)
        return SegmentStore(mods, training)

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {n: detached_state(m) for n, m in self.modules.items()}

    def state(self) -> dict:
        """Everything but the stash (empty between steps): serializable, for hand-offs and checkpoints."""
        return {"model": self.weights(), "optim": {n: o.state_dict() for n, o in self.optims.items()}}

    def load(self, state: dict) -> None:
        for n, sd in state.get("model", {}).items():
            self.modules[n].load_state_dict(sd)
        for n, sd in state.get("optim", {}).items():
            self.optims[n].load_state_dict(sd)


class SplitEngine:
    """Forward / backward of one segment and one whole step, over a store passed in, on a party host."""

    def __init__(self, host):
        self.host = host
        self.topo = host.topo
        self.links: dict[str, Link] = {}     # role -> direct link, while a run of turns holds them open
        self.unreachable: set[str] = set()   # peers that could not connect: Ray calls from then on

    def peer_roles(self) -> list[str]:
        """The roles hosted elsewhere that a step driven here calls (their segments)."""
        return list(dict.fromkeys(s.owner for s in self.topo.segments if s.owner not in self.host.roles))

    @contextmanager
    def linked(self):
        """Hold direct links to the peers a step calls (raysplit/link.py) for the steps run inside."""
        wanted = [r for r in self.peer_roles() if r not in self.unreachable]
        self.links = open_links({r: self.host.peers[r] for r in wanted})
        self.unreachable.update(r for r in wanted if r not in self.links)    # don't wait for them again
        try:
            yield
        except BaseException:
            close_links(self.links, quiet=True)     # the error that stopped the steps is the one to report
            raise
        else:
            close_links(self.links)
        finally:
            self.links = {}

    def destinations(self, seg: Segment, client) -> list[str]:
        """The parties a segment's output goes to (one message each), in the topology's order."""
        return list(dict.fromkeys(party_id(c.owner, client) for c in self.topo.consumers(seg.name)))

    def _inputs(self, seg: Segment, idx, party_inputs) -> list[torch.Tensor]:
        it = iter(party_inputs)
        xs = []
        for i in seg.inputs:
            if i == INPUT:
                xs.append(self.host.features(idx))
            else:  # a leaf of this segment's own graph; its gradient is what goes back upstream
                xs.append(self.host.receive(next(it)).detach().requires_grad_(True))
        return xs

    @staticmethod
    def _fed(seg: Segment, xs) -> list[torch.Tensor]:
        """What the segment computes on: a copy of each received leaf, so that a first in-place layer (a cut right
        before ReLU(inplace=True)) modifies neither the leaf whose gradient goes back nor the sender's tensor."""
        return [x if i == INPUT else x.clone() for i, x in zip(seg.inputs, xs)]

    def _ids(self, idx):
        """Sample ids as this party got them: its own array, or sent by the initiator (vertical)."""
        return idx if idx is None or isinstance(idx, np.ndarray) else self.host.receive(idx, "cpu").numpy()

    def _send_activation(self, seg: Segment, me: str, client, out: torch.Tensor):
        sent = [self.host.ledger.send(me, dst, "activation", out.detach()) for dst in self.destinations(seg, client)]
        return sent[0] if len(sent) == 1 else tuple(sent)

    def _send_input_grads(self, seg: Segment, xs, me: str, client) -> list:
        return [self.host.ledger.send(me, party_id(self.topo.segment(i).owner, client), "gradient", x.grad)
                for i, x in zip(seg.inputs, xs) if i != INPUT]

    def forward(self, store: SegmentStore, client, name: str, clock, idx, labels, *inputs):
        """Forward of one segment: its output to each consumer. For a head: loss, backward and update too;
        returns (*input grads, stats)."""
        h = self.host
        h.ledger.round, h.ledger.step = clock
        seg = self.topo.segment(name)
        me, module = party_id(seg.owner, client), store.modules[name]
        idx = self._ids(idx)
        xs = self._inputs(seg, idx, inputs)
        input_grad = any(i != INPUT for i in seg.inputs)
        out = module(*self._fed(seg, xs))
        h.meter.forward(me, name, module, xs, input_grad)
        if not seg.task:
            extra, extra_bwd = None, 0
            if INPUT in seg.inputs and h.plugins.losses:     # a data holder's extra loss on (raw input, cut)
                extra, extra_bwd = h.plugins.client_loss(h.meter, me, xs[seg.inputs.index(INPUT)], out)
            store.stash[(me, name)] = (xs, out, extra, extra_bwd)
            return self._send_activation(seg, me, client, out)
        y = h.receive(labels) if labels is not None else h.labels(seg.task, idx)
        loss = nn.functional.cross_entropy(out, y)
        store.optims[name].zero_grad(set_to_none=True)
        loss.backward()
        h.meter.backward(me, name, module, xs, input_grad)
        store.optims[name].step()
        stats = {seg.task: (float(loss.detach()) * len(y), int((out.argmax(1) == y).sum()), len(y))}
        return (*self._send_input_grads(seg, xs, me, client), stats)

    def backward(self, store: SegmentStore, client, name: str, clock, *grads):
        """Backward of a non-head segment from the sum of its consumers' gradients; update; send input grads."""
        h = self.host
        h.ledger.round, h.ledger.step = clock
        seg = self.topo.segment(name)
        me, module = party_id(seg.owner, client), store.modules[name]
        xs, out, extra, extra_bwd = store.stash.pop((me, name))
        g = sum(h.receive(gr) for gr in grads)
        store.optims[name].zero_grad(set_to_none=True)
        if extra is None:
            out.backward(g)
        else:
            torch.autograd.backward([out, extra], [g, None])
            h.meter.add(me, "backward", extra_bwd)
        h.meter.backward(me, name, module, xs, any(i != INPUT for i in seg.inputs))
        store.optims[name].step()
        sent = self._send_input_grads(seg, xs, me, client)
        return tuple(sent) if len(sent) > 1 else (sent[0] if sent else None)

    def infer(self, store: SegmentStore, client, name: str, clock, idx, *inputs):
        """Split inference, one segment: forward only (eval mode, no gradients), the output sent on to its
        consumers; a head's logits are returned as they are, to the simulator (nothing more crosses)."""
        h = self.host
        h.ledger.round, h.ledger.step = clock
        seg = self.topo.segment(name)
        me, module = party_id(seg.owner, client), store.modules[name]
        with torch.no_grad(), eval_mode(module):
            xs = self._inputs(seg, self._ids(idx), inputs)
            out = module(*self._fed(seg, xs))
        h.meter.forward(me, name, module, xs, False)
        return out.cpu().numpy() if seg.task else self._send_activation(seg, me, client, out)

    def predict(self, store: SegmentStore, client, clock, idx: np.ndarray) -> dict:
        """Split inference of one batch, driven by the first data holder: {task: logits, or an ObjectRef of
        them at the head's owner} (the driver reads them; they never pass through another party)."""
        h, topo = self.host, self.topo
        me = party_id(topo.segments[0].owner, client)
        vals: dict[tuple[str, str], Any] = {}
        logits = {}
        for seg in topo.segments:
            here, dst = seg.owner in h.roles, party_id(seg.owner, client)
            ins = self._local([vals[(i, dst)] for i in seg.inputs if i != INPUT], here)
            seg_idx = idx if INPUT in seg.inputs else None
            if seg_idx is not None and not here:
                seg_idx = h.ledger.send(me, dst, "sample_ids", idx)
            outs = [] if seg.task else self.destinations(seg, client)
            res = self._call(store, seg.owner, "infer", max(1, len(outs)), client, seg.name, clock, seg_idx, *ins)
            if seg.task:
                logits[seg.task] = [res]          # in a list: Ray hands a nested ObjectRef on without fetching it
            else:
                vals.update({(seg.name, d): r for d, r in zip(outs, res if len(outs) > 1 else [res])})
        return logits

    # ------------------------------------------------------------------ one step, driven by the initiator
    def _call(self, store: SegmentStore, role: str, method: str, num_returns: int, *args):
        """Run a segment method here (on ``store``) if this host holds the role, else on the host that does."""
        if role in self.host.roles:
            return getattr(self, method)(store, *args)
        return self.call_peer(role, "seg_" + method, num_returns, *args)

    def call_peer(self, role: str, method: str, num_returns: int, *args):
        """A program method on the peer host of ``role``: over its link while one is open (a Pending), else a
        Ray call (ObjectRefs)."""
        if role in self.links:
            return self.links[role].submit(SEGMENTS, method, num_returns, *args)
        return self.host.peers[role].call.options(num_returns=num_returns).remote(SEGMENTS, method, *args)

    @staticmethod
    def _local(values, here: bool):
        """Values consumed in-process must be materialized; remote consumers get the ObjectRefs as they are
        (a link's pending reply is read before it is sent on)."""
        return [ray.get(v) if here and isinstance(v, ray.ObjectRef) else resolve(v) for v in values]

    def step(self, store: SegmentStore, client, clock, idx: np.ndarray) -> dict:
        """One training step of ``client`` on the samples ``idx``; returns {task: (loss sum, correct, n)}."""
        h, topo = self.host, self.topo
        me = party_id(topo.segments[0].owner, client)      # this step's initiator: the first data holder
        vals: dict[tuple[str, str], Any] = {}                # (segment, receiving party) -> its output
        grads: dict[str, list] = defaultdict(list)
        stats, pending = [], []
        for seg in topo.segments:
            here, dst = seg.owner in h.roles, party_id(seg.owner, client)
            ins = self._local([vals[(i, dst)] for i in seg.inputs if i != INPUT], here)
            reads_data = INPUT in seg.inputs or (seg.task and topo.label_holders[seg.task] == seg.owner)
            seg_idx = idx if reads_data else None
            if reads_data and not here:
                # another party reading its own rows (vertical) is told which samples: their ids
                seg_idx = h.ledger.send(me, dst, "sample_ids", idx)
            labels = None
            if seg.task and topo.label_holders[seg.task] != seg.owner:
                # labels travel from their holder (a data holder hosted here) to the head's owner
                holder = party_id(topo.label_holders[seg.task], client)
                labels = h.ledger.send(holder, dst, "labels", h.labels(seg.task, idx))
            if not seg.task:
                outs = self.destinations(seg, client)
                res = self._call(store, seg.owner, "forward", len(outs), client, seg.name, clock, seg_idx, labels, *ins)
                vals.update({(seg.name, d): r for d, r in zip(outs, res if len(outs) > 1 else [res])})
                continue
            n_grads = sum(i != INPUT for i in seg.inputs)
            res = self._call(store, seg.owner, "forward", n_grads + 1, client, seg.name, clock, seg_idx, labels, *ins)
            *gs, st = res if isinstance(res, (list, tuple)) else [res]
            stats.append(st)
            for i, g in zip([i for i in seg.inputs if i != INPUT], gs):
                grads[i].append(g)
        for seg in reversed([s for s in topo.segments if not s.task]):
            here = seg.owner in h.roles
            srcs = [i for i in seg.inputs if i != INPUT]
            res = self._call(store, seg.owner, "backward", max(1, len(srcs)), client, seg.name, clock,
                             *self._local(grads.pop(seg.name), here))
            res = list(res) if len(srcs) > 1 else [res]
            if srcs:
                for i, g in zip(srcs, res):
                    grads[i].append(g)
            elif not here:
                pending.append(res[0])       # a remote data holder's last backward: wait for it below
        stats, pending = [resolve(s) for s in stats], [resolve(p) for p in pending]
        pending = [p for p in pending if isinstance(p, ray.ObjectRef)]
        remote = [s for s in stats if isinstance(s, ray.ObjectRef)]
        merged: dict[str, tuple] = {}
        for st in ray.get(remote + pending)[: len(remote)] + [s for s in stats if not isinstance(s, ray.ObjectRef)]:
            merged.update(st)
        return merged


class SegmentServer:
    """The program every host of a split algorithm runs: it holds this host's segments (one store) and
    serves the segment calls of steps driven elsewhere. Algorithms subclass it (``store_for`` picks the store
    a client's call runs on; SplitFed's server overrides it)."""

    def __init__(self, host, modules: dict[str, nn.Module]):
        self.host, self.training = host, host.training
        mine = {n: m for n, m in modules.items() if host.topo.segment(n).owner in host.roles}
        self.store = SegmentStore(mine, host.training, host.device)
        self.engine = SplitEngine(host)

    def store_for(self, client) -> SegmentStore:
        return self.store

    def seg_forward(self, client, name: str, clock, *args):
        return self.engine.forward(self.store_for(client), client, name, clock, *args)

    def seg_backward(self, client, name: str, clock, *args):
        return self.engine.backward(self.store_for(client), client, name, clock, *args)

    def seg_infer(self, client, name: str, clock, *args):
        return self.engine.infer(self.store_for(client), client, name, clock, *args)

    def segment_states(self) -> dict[str, dict]:
        return self.store.weights()

    def state(self) -> dict:
        return self.store.state()

    def load_state(self, state: dict) -> None:
        self.store.load(self.host.receive(state))
