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
