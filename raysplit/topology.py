"""Topologies: which party holds which segment, declared as data and run by one engine.

A topology is a list of segments in topological order. Each segment has an owner (a party *role*:
``client``, ``server``, ``relay``, ``hop1``...), its inputs (``input`` = the owner's raw features, or
earlier segments) and, for a head, the task whose loss it computes. The engine (parties.py) runs any
such graph forward along the edges and backward along the reversed edges; ``ComposedNet`` runs the very
same graph in one process, which is both the evaluator and the centralized reference.

Adding a topology = a function returning a ``Topology`` plus its segment modules, registered in
``TOPOLOGIES``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from raysplit.config import ExperimentConfig
from raysplit.errors import ConfigError
from raysplit.models import build_model, cut_positions, split_model

CLIENT = "client"
INPUT = "input"


@dataclass(frozen=True)
class Segment:
    name: str
    owner: str                       # party role
    inputs: tuple[str, ...]          # INPUT or names of earlier segments
    task: str | None = None          # set on heads: the loss of this task is computed by the owner


@dataclass(frozen=True)
class Topology:
    name: str
    segments: tuple[Segment, ...]
    label_holders: dict[str, str]    # task -> role holding its labels
    # role -> function selecting that data holder's features from a batch of raw inputs
    input_views: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    # task -> function deriving the task's labels from the dataset labels (identity if absent)
    task_labels: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self):
        check_graph(self)

    @property
    def roles(self) -> list[str]:
        return list(dict.fromkeys(s.owner for s in self.segments))

    @property
    def heads(self) -> list[Segment]:
        return [s for s in self.segments if s.task]

    @property
    def tasks(self) -> list[str]:
        return [s.task for s in self.heads]

    def segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def consumers(self, name: str) -> list[Segment]:
        return [s for s in self.segments if name in s.inputs]

    def view(self, role: str, x: torch.Tensor) -> torch.Tensor:
        fn = self.input_views.get(role)
        return fn(x) if fn else x

    def labels(self, task: str, y: torch.Tensor) -> torch.Tensor:
        fn = self.task_labels.get(task)
        return fn(y) if fn else y


def check_graph(t: Topology) -> None:
    """Structural rules every topology obeys; a violation is a one-line ConfigError on ``topology``."""
    seen: set[str] = set()
    for s in t.segments:
        if s.name in seen:
            raise ConfigError("topology", t.name, f"segments with distinct names ({s.name} repeats)")
        for i in s.inputs:
            if i != INPUT and i not in seen:
                raise ConfigError("topology", t.name, f"segments in topological order ({s.name} reads {i} before it exists, or a loop)")
        seen.add(s.name)
    for s in t.segments:
        if not s.task and not t.consumers(s.name):
            raise ConfigError("topology", t.name, f"every segment to feed a head ({s.name} is a dead end)")
    for task in t.tasks:
        holder = t.label_holders.get(task)
        head = next(s for s in t.heads if s.task == task)
        if holder is None:
            raise ConfigError("topology", t.name, f"a label holder for every task ({task} has none)")
        if holder != head.owner and not any(s.owner == holder and INPUT in s.inputs for s in t.segments):
            # labels are read where the raw data lives; either there or at the head
            raise ConfigError("topology", t.name, f"labels of {task} held by a data holder or by the head's owner")


class ComposedNet(nn.Module):
    """The unsplit network: the topology's segments run in one process. Returns {task: logits}."""

    def __init__(self, topology: Topology, segments: dict[str, nn.Module]):
        super().__init__()
        self.topology = topology
        self.segs = nn.ModuleDict(segments)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        vals: dict[str, torch.Tensor] = {}
        for s in self.topology.segments:
            ins = [self.topology.view(s.owner, x) if i == INPUT else vals[i] for i in s.inputs]
            vals[s.name] = self.segs[s.name](*ins)
        return {s.task: vals[s.name] for s in self.topology.heads}


# --------------------------------------------------------------------------- the registered topologies

def _chain(name: str, owners: Sequence[str], label_holder: str, cfg: ExperimentConfig,
           input_shape, num_classes) -> tuple[Topology, dict[str, nn.Module]]:
    """A chain of segments s0 -> s1 -> ... -> head, cut at the config's cut layers."""
    model = build_model(cfg.model.name, input_shape, num_classes, seed=cfg.seed)
    needed = len(owners) - 1
    if len(cfg.model.cut_layers) != needed:
        raise ConfigError("model.cut_layers", cfg.model.cut_layers,
                          f"exactly {needed} cut layer{'s' if needed > 1 else ''} for topology {name}")
    parts = split_model(model, cut_positions(model, cfg.model.cut_layers, model_name=cfg.model.name))
    segments = tuple(
        Segment(f"s{i}", owner, (INPUT,) if i == 0 else (f"s{i - 1}",), "y" if i == len(owners) - 1 else None)
        for i, owner in enumerate(owners))
    return Topology(name, segments, {"y": label_holder}), {f"s{i}": p for i, p in enumerate(parts)}


def vanilla(cfg, input_shape, num_classes):
    """Client holds the bottom; the server the rest and (sent by the client) the labels."""
    return _chain("vanilla", [CLIENT, "server"], CLIENT, cfg, input_shape, num_classes)


def u_shaped(cfg, input_shape, num_classes):
    """Client holds bottom and head and keeps its labels; the server only sees cut activations."""
    return _chain("u_shaped", [CLIENT, "server", CLIENT], CLIENT, cfg, input_shape, num_classes)


def extended(cfg, input_shape, num_classes):
    """Vanilla with a further segment at an intermediate entity (the relay) between client and server."""
    return _chain("extended", [CLIENT, "relay", "server"], CLIENT, cfg, input_shape, num_classes)


def multi_hop(cfg, input_shape, num_classes):
    """Tor-like: the network cut into several segments held by a chain of entities, the last the server."""
    hops = len(cfg.model.cut_layers) - 1
    if hops < 1:
        raise ConfigError("model.cut_layers", cfg.model.cut_layers, "at least 2 cut layers for topology multi_hop")
    owners = [CLIENT, *(f"hop{i}" for i in range(1, hops + 1)), "server"]
    return _chain("multi_hop", owners, CLIENT, cfg, input_shape, num_classes)


TOPOLOGIES: dict[str, Callable] = {"vanilla": vanilla, "u_shaped": u_shaped, "extended": extended, "multi_hop": multi_hop}


def build_topology(cfg: ExperimentConfig, input_shape, num_classes) -> tuple[Topology, dict[str, nn.Module]]:
    if cfg.topology not in TOPOLOGIES:
        raise ConfigError("topology", cfg.topology, "one of " + ", ".join(TOPOLOGIES))
    return TOPOLOGIES[cfg.topology](cfg, input_shape, num_classes)
