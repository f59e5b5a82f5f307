"""The graph vocabulary every floor speaks: segments, topologies and the unsplit network.

A topology is a list of segments in topological order. Each segment has an owner (a party *role*:
``client``, ``server``, ``relay``, ``hop1``...), its inputs (``input`` = the owner's raw features, or
earlier segments) and, for a head, the task whose loss it computes. The engine (engine.py) runs any such
graph forward along the edges and backward along the reversed edges; ``ComposedNet`` runs the very same
graph in one process, which is both the evaluator and the centralized reference. The builders of the
registered topologies live in topology.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from raysplit.errors import ConfigError

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
        if holder != head.owner and holder != t.segments[0].owner:
            # labels are read at the head or sent by the party that drives each step (the first segment's
            # owner, a data holder); anywhere else they would have to be fetched from a third party
            raise ConfigError("topology", t.name, f"labels of {task} held by the head's owner or the first data holder")


class ComposedNet(nn.Module):
    """The unsplit network: the topology's segments run in one process. Returns {task: logits}."""

    def __init__(self, topology: Topology, segments: dict[str, nn.Module]):
        super().__init__()
        self.topology = topology
        self.segs = nn.ModuleDict(segments)

    def values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every segment's output on a batch of raw inputs."""
        vals: dict[str, torch.Tensor] = {}
        for s in self.topology.segments:
            ins = [self.topology.view(s.owner, x) if i == INPUT else vals[i] for i in s.inputs]
            vals[s.name] = self.segs[s.name](*ins)
        return vals

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        vals = self.values(x)
        return {s.task: vals[s.name] for s in self.topology.heads}


@contextmanager
def eval_mode(module: nn.Module):
    """Evaluate ``module`` (BatchNorm statistics, dropout off), then put it back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
