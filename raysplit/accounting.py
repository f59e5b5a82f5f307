"""What each party sends (the ledger) and computes (the FLOP meter).

Invariant: every tensor that crosses a party boundary goes through ``Ledger.send``; bandwidth figures
are sums over ledger entries, never estimates. FLOPs are measured with torch's FlopCounterMode once per
(segment, input shapes) on a throw-away copy of the segment, then multiplied by use.
"""
from __future__ import annotations

import copy
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

KINDS = ("activation", "gradient", "labels", "logits", "weights", "optimizer_state", "gradient_update")


def role_of(party: str) -> str:
    """'client/7' -> 'client'; 'server' -> 'server'."""
    return party.split("/", 1)[0]


def tensors_in(payload: Any) -> Iterable[torch.Tensor]:
    if isinstance(payload, torch.Tensor):
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


def to_cpu(payload: Any) -> Any:
    """Tensors leave a party on the CPU so any receiver (CPU or another GPU) can load them."""
    if isinstance(payload, torch.Tensor):
        return payload.detach().cpu() if payload.is_cuda else payload.detach()
    if isinstance(payload, dict):
        return {k: to_cpu(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(to_cpu(v) for v in payload)
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
    nbytes: int
    fingerprints: frozenset = frozenset()


class Ledger:
    """The one send path. Kept per actor; the driver drains and merges them each round.

    ``capture=True`` also keeps row fingerprints of every payload (tests use it for the privacy check).
    """

    def __init__(self, capture: bool = False):
        self.capture = capture
        self.entries: list[Entry] = []
        self.round = 0
        self.step = 0

    def send(self, src: str, dst: str, kind: str, payload: Any) -> Any:
        """Record that ``payload`` goes from ``src`` to ``dst`` and return it ready to travel (on CPU)."""
        if src == dst:
            return payload
        assert kind in KINDS, kind
        fps: frozenset = frozenset()
        if self.capture:
            fps = frozenset().union(*(row_fingerprints(t) for t in tensors_in(payload)))
        self.entries.append(Entry(self.round, self.step, src, dst, kind, payload_nbytes(payload), fps))
        return to_cpu(payload)

    def drain(self) -> list[Entry]:
        out, self.entries = self.entries, []
        return out


def summarize(entries: Sequence[Entry]) -> list[dict]:
    """Aggregate entries by (round, src, dst, kind): messages and bytes. This is what ledger.csv holds."""
    agg: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        cell = agg[(e.round, e.src, e.dst, e.kind)]
        cell[0] += 1
        cell[1] += e.nbytes
    return [dict(round=r, src=s, dst=d, kind=k, messages=m, bytes=b) for (r, s, d, k), (m, b) in sorted(agg.items())]


def _shapes(inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple(tuple(t.shape) for t in inputs)


def count_flops(module: torch.nn.Module, inputs: Sequence[torch.Tensor], input_grad: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs of one pass of ``module`` on tensors shaped like ``inputs``.

    Runs on a deep copy with zero inputs so the real module, its BatchNorm statistics and the RNG are
    untouched. ``input_grad`` says whether the gradient w.r.t. the inputs is computed (it is at every
    segment but the first, where the input is raw data).
    """
    probe = copy.deepcopy(module)
    xs = [torch.zeros(t.shape, dtype=t.dtype, device=t.device).requires_grad_(input_grad and t.is_floating_point())
          for t in inputs]
    with FlopCounterMode(display=False) as fwd:
        out = probe(*xs)
    if isinstance(out, dict):          # a ComposedNet: {task: logits}
        out = list(out.values())
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if o.requires_grad]
    with FlopCounterMode(display=False) as bwd:
        if outs:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return int(fwd.get_total_flops()), int(bwd.get_total_flops())


class FlopMeter:
    """FLOPs per party and phase. Counting is cached by (segment key, input shapes, input_grad)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[int, int]] = {}
        self.totals: dict[tuple[str, str], int] = defaultdict(int)

    def cost(self, key: str, module: torch.nn.Module, inputs: Sequence[torch.Tensor], input_grad: bool) -> tuple[int, int]:
        ck = (key, _shapes(inputs), input_grad)
        if ck not in self._cache:
            self._cache[ck] = count_flops(module, inputs, input_grad)
        return self._cache[ck]

    def forward(self, party: str, key: str, module, inputs, input_grad: bool) -> None:
        self.totals[(party, "forward")] += self.cost(key, module, inputs, input_grad)[0]

    def backward(self, party: str, key: str, module, inputs, input_grad: bool) -> None:
        self.totals[(party, "backward")] += self.cost(key, module, inputs, input_grad)[1]

    def drain(self) -> dict[tuple[str, str], int]:
        out, self.totals = dict(self.totals), defaultdict(int)
        return out
