"""What each party sends (the ledger), computes (the FLOP meter) and learns (train statistics).

Invariant: every tensor that crosses a party boundary goes through ``Ledger.send``; bandwidth figures
are sums over ledger entries, never estimates. ``send`` runs the sending party's plug-in transforms first
(codecs, noise), so the ledger counts what actually crosses, and wraps the payload in a ``Parcel`` (who
sent what kind to whom); the receiving party opens it with ``receive``, which runs its plug-ins' inverse
transforms and observers. FLOPs are measured with torch's FlopCounterMode once per (segment, input shapes)
on a throw-away copy of the segment, then multiplied by use.
"""
from __future__ import annotations

import copy
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

KINDS = ("activation", "gradient", "labels", "logits", "weights", "optimizer_state", "gradient_update", "sample_ids")


def role_of(party: str) -> str:
    """'client/7' -> 'client'; 'server' -> 'server'."""
    return party.split("/", 1)[0]


@dataclass(frozen=True)
class Parcel:
    """A payload on its way between parties, as ``Ledger.send`` recorded it. ``dst`` is a tuple when one
    object is read by several recipients (a broadcast: one ledger entry per recipient)."""
    src: str
    dst: str | tuple[str, ...]
    kind: str
    body: Any


@dataclass(frozen=True)
class Encoded:
    """A tensor as a codec encoded it: the parts that cross (counted by the ledger) and what decoding needs
    besides (shape, dtype; framing, not counted)."""
    codec: str
    parts: dict
    meta: tuple = ()


def tensors_in(payload: Any) -> Iterable[torch.Tensor]:
    if isinstance(payload, Encoded):
        yield from tensors_in(payload.parts)
    elif isinstance(payload, torch.Tensor):
        yield payload
    elif isinstance(payload, np.ndarray):
        yield torch.from_numpy(payload)
    elif isinstance(payload, dict):
        for v in payload.values():
            yield from tensors_in(v)
    elif isinstance(payload, (list, tuple)):
        for v in payload:
            yield from tensors_in(v)


def payload_nbytes(payload: Any) -> int:
    """Bytes of the tensors in a payload (the wire size of their data; framing is not counted)."""
    return sum(t.numel() * t.element_size() for t in tensors_in(payload))


def to_wire(payload: Any) -> Any:
    """Tensors travel as numpy arrays: Ray moves those zero-copy through its object store, while pickling a
    torch tensor copies it (measured: 3x slower per step at FmnistCNN's cut). GPU tensors come to the CPU."""
    if isinstance(payload, torch.Tensor):
        return payload.detach().cpu().numpy()
    if isinstance(payload, Encoded):
        return Encoded(payload.codec, to_wire(payload.parts), payload.meta)
    if isinstance(payload, dict):
        return {k: to_wire(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(to_wire(v) for v in payload)
    return payload


Opener = Callable[[Parcel, Any], Any]


def receive(payload: Any, device: torch.device | str = "cpu", open_parcel: Opener | None = None) -> Any:
    """The receiving side of ``Ledger.send``: wire arrays back to tensors on the receiver's device; each
    parcel's body is then handed to ``open_parcel`` (the receiving party's plug-ins: decoders, observers)."""
    if isinstance(payload, Parcel):
        body = receive(payload.body, device, open_parcel)
        return open_parcel(payload, body) if open_parcel else body
    if isinstance(payload, Encoded):
        return Encoded(payload.codec, receive(payload.parts, device, open_parcel), payload.meta)
    if isinstance(payload, np.ndarray):
        # arrays from the object store are read-only views; a private copy is cheap and safe to train on
        return torch.from_numpy(payload if payload.flags.writeable else payload.copy()).to(device)
    if isinstance(payload, torch.Tensor):
        return payload.to(device)
    if isinstance(payload, dict):
        return {k: receive(v, device, open_parcel) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(receive(v, device, open_parcel) for v in payload)
    return payload


def row_fingerprints(t: torch.Tensor) -> set[str]:
    """Digests of each row (first dimension) of a tensor, as float32; used to prove raw data never travels."""
    if t.dim() == 0 or t.numel() == 0:
        return set()
    rows = t.detach().cpu().to(torch.float32).reshape(t.shape[0], -1).contiguous().numpy()
    return {hashlib.sha1(r.tobytes()).hexdigest() for r in rows}


@dataclass(frozen=True)
class Entry:
    round: int
    step: int
    src: str
    dst: str
    kind: str
    nbytes: int                      # what crossed (after the sender's codec, if any)
    fingerprints: frozenset = frozenset()
    raw_nbytes: int = 0              # the payload's size before any codec


class Ledger:
    """The one send path. Kept per actor; the driver drains and merges them each round.

    ``capture=True`` also keeps row fingerprints of every payload (tests use it for the privacy check).
    ``transform(src, dst, kind, payload) -> payload``: the sending party's plug-ins (codecs, noise).
    """

    def __init__(self, capture: bool = False, transform: Callable[[str, str, str, Any], Any] | None = None):
        self.capture, self.transform = capture, transform
        self.entries: list[Entry] = []
        self.round = 0
        self.step = 0

    def send(self, src: str, dst: str | Sequence[str], kind: str, payload: Any) -> Any:
        """Record that ``payload`` goes from ``src`` to ``dst`` (one party, or several reading one object) and
        return it ready to travel: a ``Parcel`` of wire arrays. A party sending to itself sends nothing."""
        dsts = (dst,) if isinstance(dst, str) else tuple(d for d in dst if d != src)
        if dsts == (src,) or not dsts:
            return payload
        assert kind in KINDS, kind
        raw = nbytes = payload_nbytes(payload)
        if self.transform is not None:
            payload = self.transform(src, dsts[0] if len(dsts) == 1 else dsts, kind, payload)
            nbytes = payload_nbytes(payload)
        fps: frozenset = frozenset()
        if self.capture:
            fps = frozenset().union(*(row_fingerprints(t) for t in tensors_in(payload)))
        self.entries += [Entry(self.round, self.step, src, d, kind, nbytes, fps, raw) for d in dsts]
        return Parcel(src, dst if isinstance(dst, str) else dsts, kind, to_wire(payload))

    def drain(self) -> list[Entry]:
        out, self.entries = self.entries, []
        return out


def summarize(entries: Sequence[Entry], raw: bool = False) -> list[dict]:
    """Aggregate entries by (round, src, dst, kind): messages and bytes (and, with ``raw``, the bytes before
    any codec). This is what ledger.csv holds."""
    agg: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in entries:
        cell = agg[(e.round, e.src, e.dst, e.kind)]
        cell[0] += 1
        cell[1] += e.nbytes
        cell[2] += e.raw_nbytes
    return [dict(round=r, src=s, dst=d, kind=k, messages=m, bytes=b, **({"raw_bytes": rb} if raw else {}))
            for (r, s, d, k), (m, b, rb) in sorted(agg.items())]


def _shapes(inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple(tuple(t.shape) for t in inputs)


InputGrad = bool | Sequence[bool]


def count_flops(module: torch.nn.Module, inputs: Sequence[torch.Tensor], input_grad: InputGrad) -> tuple[int, int]:
    """(forward, backward) FLOPs of one pass of ``module`` on tensors shaped like ``inputs``.

    Runs on a deep copy with zero inputs so the real module, its BatchNorm statistics and the RNG are
    untouched. ``input_grad`` says whether the gradient w.r.t. the inputs is computed (it is at every
    segment but the first, where the input is raw data); one flag for all inputs or one per input.
    """
    probe = copy.deepcopy(module)
    grads = [input_grad] * len(inputs) if isinstance(input_grad, bool) else list(input_grad)
    xs = [torch.zeros(t.shape, dtype=t.dtype, device=t.device).requires_grad_(g and t.is_floating_point())
          for t, g in zip(inputs, grads)]
    # the probe's random draws (dropout) come from a forked stream: counting happens on a host's first step of
    # a shape, so drawing from the real one would make the run's randomness depend on the hosting
    cuda = sorted({t.device.index or 0 for t in inputs if t.is_cuda})
    fed = [x.clone() for x in xs]   # as the engine does: a first in-place layer must not modify a leaf (not counted)
    with torch.random.fork_rng(devices=cuda):
        with FlopCounterMode(display=False) as fwd:
            out = probe(*fed)
        outs = [o for o in tensors_in(out) if o.requires_grad]
        with FlopCounterMode(display=False) as bwd:
            if outs:
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return int(fwd.get_total_flops()), int(bwd.get_total_flops())


class FlopMeter:
    """FLOPs per party and phase. Counting is cached by (segment key, input shapes, input_grad)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[int, int]] = {}
        self.totals: dict[tuple[str, str], int] = defaultdict(int)

    def cost(self, key: str, module: torch.nn.Module, inputs: Sequence[torch.Tensor], input_grad: InputGrad) -> tuple[int, int]:
        ck = (key, _shapes(inputs), input_grad if isinstance(input_grad, bool) else tuple(input_grad))
        if ck not in self._cache:
            self._cache[ck] = count_flops(module, inputs, input_grad)
        return self._cache[ck]

    def forward(self, party: str, key: str, module, inputs, input_grad: InputGrad) -> None:
        self.totals[(party, "forward")] += self.cost(key, module, inputs, input_grad)[0]

    def backward(self, party: str, key: str, module, inputs, input_grad: InputGrad) -> None:
        self.totals[(party, "backward")] += self.cost(key, module, inputs, input_grad)[1]

    def add(self, party: str, phase: str, flops: int) -> None:
        """FLOPs of work a plug-in counted itself (e.g. with ``count_flops``), on the party that ran it."""
        self.totals[(party, phase)] += int(flops)

    def drain(self) -> dict[tuple[str, str], int]:
        out, self.totals = dict(self.totals), defaultdict(int)
        return out


class TrainStats:
    """{task: [loss sum, correct, samples]} summed over steps, on a party host."""

    def __init__(self):
        self.totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))

    def add(self, stats: dict) -> None:
        for task, v in stats.items():
            self.totals[task] += v

    def as_lists(self) -> dict:
        return {t: v.tolist() for t, v in self.totals.items()}


def merge_stats(into: dict, stats: dict) -> None:
    """Add one call's train stats ({task: [loss sum, correct, samples]}) into ``into``."""
    for task, (loss_sum, correct, n) in stats.items():
        cell = into.setdefault(task, [0.0, 0, 0])
        cell[0] += loss_sum
        cell[1] += correct
        cell[2] += n
