"""Plug-ins: defences, attacks, leakage measures and codecs, attached to training without touching the loop.

A plug-in is a ``Plugin`` subclass that overrides any of its hooks. They attach at three points only:

1. ``client_loss(x, z)`` — an extra loss a data holder adds on its raw input ``x`` and its cut activation
   ``z`` (what NoPeek needs). Its FLOPs (forward and backward) are metered to that data holder.
2. ``on_send`` / ``on_receive`` — transforms of a payload where it is sent and where it is received, on the
   one send path (``Ledger.send``), so the ledger counts what actually crosses (codecs, noise defences).
3. ``observe`` (read-only: what a party receives), ``metrics`` (per-round sums, on the party hosts) and
   ``evaluate`` (on the driver, with the current global model): what attacks and leakage measures need.
   Their numbers become columns of metrics.csv.

Every party host gets its own copy of the configured plug-ins (``setup(host)``); the driver keeps one more
(``setup(None)``) for ``evaluate``. Register one with ``@PLUGINS.register("name")`` and list it in the
config: ``plugins: [{name: my_lab.plugins:probe, some_option: 1}]``; the composition root (catalog.py) builds
a config's plug-ins.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysplit.accounting import Encoded, FlopMeter, Parcel
from raysplit.registry import Registry

PLUGINS = Registry("plug-in", "plugins")


class Plugin:
    """Base class: every hook does nothing. ``self.host`` is the party host it runs on (None on the driver):
    its ``meter`` takes FLOPs of other work a plug-in does (``meter.add(party, phase, flops)``). On the driver,
    before ``evaluate``: ``self.driver``, a ``DriverContext`` (round, results directory, what a party receives)."""

    host: Any = None
    driver: "DriverContext | None" = None

    def setup(self, host) -> None:
        self.host = host

    # 1. a data holder's extra loss
    def client_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor | None:
        return None

    # 2. transforms on the one send path (on the sending party, then on the receiving party)
    def on_send(self, src: str, dst: str | tuple, kind: str, payload: Any) -> Any:
        return payload

    def on_receive(self, parcel: Parcel, payload: Any) -> Any:
        return payload

    # 3. observers and metrics
    def observe(self, parcel: Parcel, payload: Any) -> None:
        """What a party received (decoded). Read-only: do not modify ``payload``."""

    def metrics(self) -> dict[str, tuple[float, float]]:
        """{column: (sum, weight)} since the last call, on a party host; hosts' sums are added and divided."""
        return {}

    def evaluate(self, model: nn.Module, dataset) -> dict[str, float]:
        """{column: value} on the driver after each evaluation of the global model."""
        return {}


class _LossProbe(nn.Module):
    """A plug-in's loss as a module, so the FLOP meter can count it like a segment (never deep-copied: a
    loss function holds no state worth protecting, and the plug-in holds its host)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, z):
        return self.fn(x, z)

    def __deepcopy__(self, memo):
        return self


def _overrides(plugin: Plugin, hook: str) -> bool:
    return getattr(type(plugin), hook) is not getattr(Plugin, hook)


class Plugins:
    """The plug-ins of one party host (or of the driver), called at the engine's plug-in points."""

    def __init__(self, plugins: list[Plugin], host=None):
        self.all = list(plugins)
        for p in self.all:
            p.setup(host)
        self.losses = [p for p in self.all if _overrides(p, "client_loss")]
        self.senders = [p for p in self.all if _overrides(p, "on_send")]
        self.openers = [p for p in reversed(self.all) if _overrides(p, "on_receive")]
        self.observers = [p for p in self.all if _overrides(p, "observe")]
        self._probes = {id(p): _LossProbe(p.client_loss) for p in self.losses}

    def on_send(self, src: str, dst, kind: str, payload: Any) -> Any:
        for p in self.senders:
            payload = p.on_send(src, dst, kind, payload)
        return payload

    def open(self, parcel: Parcel, payload: Any) -> Any:
        """A received parcel's body: inverse transforms (in reverse order of the sending ones), then observers."""
        for p in self.openers:
            payload = p.on_receive(parcel, payload)
        if isinstance(payload, Encoded):
            raise RuntimeError(f"a {parcel.kind} from {parcel.src} arrived encoded with {payload.codec} and no "
                               f"plug-in here decodes it")
        for p in self.observers:
            p.observe(parcel, payload)
        return payload

    def client_loss(self, meter, party: str, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        """The data holder's extra loss (None without such plug-ins), with its forward FLOPs metered now; returns
        the backward FLOPs for the engine to meter when the backward runs."""
        total, backward = None, 0
        for p in self.losses:
            loss = p.client_loss(x, z)
            if loss is None:
                continue
            key = f"plugin:{type(p).__name__}"
            fwd, bwd = meter.cost(key, self._probes[id(p)], [x, z], (False, True))
            meter.add(party, "forward", fwd)
            backward += bwd
            total = loss if total is None else total + loss
        return total, backward

    def metrics(self) -> dict[str, tuple[float, float]]:
        out: dict[str, tuple[float, float]] = {}
        for p in self.all:
            out.update(p.metrics())
        return out


@dataclass
class DriverContext:
    """What a plug-in's ``evaluate`` may use on the driver."""
    round: int                        # the round just evaluated, 1-based
    results_dir: Path | None          # where it may write files (None when the run writes none)
    plugins: Plugins                  # all the run's plug-ins (driver copies)
    # FLOPs of work the simulator runs here on a party's behalf (an attack: phase "attack"), metered to that
    # party: ``meter.add(party, "attack", flops)``; they join the round's flops.csv rows
    meter: FlopMeter = field(default_factory=FlopMeter)

    def as_received(self, src: str, dst: str, kind: str, payload: Any) -> Any:
        """``payload`` as the receiving party would get it: through every plug-in's send and receive
        transforms (noise, codecs), as on the one send path. For attacks that must see what crosses."""
        parcel = Parcel(src, dst, kind, None)
        payload = self.plugins.on_send(src, dst, kind, payload)
        for p in self.plugins.openers:
            payload = p.on_receive(parcel, payload)
        return payload


def merge_metrics(parts: list[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """The hosts' per-round (sum, weight) pairs, added per column: sum / weight."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for part in parts:
        for k, (s, w) in part.items():
            acc[k][0] += s
            acc[k][1] += w
    return {k: s / w if w else float("nan") for k, (s, w) in acc.items()}
