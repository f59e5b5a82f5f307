"""Sample-weighted averaging: the one place where FedAvg, SplitFed and large-batch SGD average."""
from __future__ import annotations

from collections import defaultdict

import torch


class WeightedSums:
    """Running sums of state dicts weighted by sample count, in float64 on the CPU; ``mean`` gives the
    weighted average in each tensor's own dtype (counters such as BatchNorm's are rounded). Sums are taken
    in the order ``add`` is called: callers add in a canonical order, so results do not depend on hosting."""

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


class OrderedSums:
    """A round's weighted sums filled in its canonical order of clients, whatever order they finish in:
    early ones wait in a buffer. ``fold`` gives each (weight, states) back in that order, once each."""

    def __init__(self, order: list[int]):
        self.position = {k: i for i, k in enumerate(order)}
        self.buffer: dict[int, tuple] = {}
        self.folded, self.total, self.sums = 0, 0.0, WeightedSums()

    def fold(self, kind: str, client: int, weight: float, states) -> None:
        """``states``: a state-dict mapping, or a callable giving it when the client's turn to be summed comes."""
        self.buffer[self.position[client]] = (weight, states)
        while self.folded in self.buffer:
            n, st = self.buffer.pop(self.folded)
            self.folded += 1
            self.total += n
            self.sums.add(kind, st() if callable(st) else st, n)

    def mean(self, kind: str, what: str) -> dict[str, dict[str, torch.Tensor]]:
        if self.folded != len(self.position):
            raise RuntimeError(f"SplitFed: {self.folded} of {len(self.position)} clients' {what} averaged")
        return self.sums.mean(kind, self.total)
