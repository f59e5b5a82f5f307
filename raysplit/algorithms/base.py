"""The Algorithm contract, and the plan every algorithm is built from.

An algorithm is a driver class that keeps this contract (what the experiment loop calls, in this order)
and the programs it installs on the party hosts, in one module. The driver says *what* a round does: which
clients, in which order, which calls, which handles go from host to host. Where it runs (connecting to Ray,
placing hosts, installing programs, gathering statistics, draining ledgers) is the parties' floor:
``raysplit.hosts.Hosts``.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import nn

from raysplit.accounting import TrainStats, merge_stats  # noqa: F401 (their old home: a user's programs may import them here)
from raysplit.config import ExperimentConfig
from raysplit.data import Dataset
from raysplit.graph import ComposedNet, Topology
from raysplit.hosts import Hosts
from raysplit.plugins import Plugin


@dataclass
class Plan:
    """Everything an algorithm needs, validated before any actor starts or any file is written."""
    cfg: ExperimentConfig
    dataset: Dataset
    topology: Topology
    modules: dict[str, nn.Module]          # initial segment modules (seeded)
    client_indices: list[np.ndarray]
    # vertical: data-holding role -> the training-sample ids it holds (aligned: the same for every holder)
    holder_ids: dict[str, np.ndarray] = field(default_factory=dict)
    plugins: list[Plugin] = field(default_factory=list)   # built once from the config; each host gets a copy


class Algorithm(ABC):
    """What the experiment loop calls: ``start``, then per round ``run_round`` and ``drain`` (and ``model`` when it
    evaluates, ``state`` when it checkpoints), ``restore`` after a restart, and ``stop``. Register a subclass
    with ``@ALGORITHMS.register("name")``."""

    # activations and cut gradients cross a party boundary (cut-layer attacks apply; sequential turns add up in
    # simulated time); False for algorithms that train the whole network at every client
    splits_model: ClassVar[bool] = True

    def __init__(self, plan: Plan, capture_ledger: bool = False, progress: bool = True):
        self.plan, self.cfg, self.capture, self.progress = plan, plan.cfg, capture_ledger, progress
        self.hosts: Hosts | None = None

    @classmethod
    def supports_topology(cls, topology: Topology) -> str | None:
        """None if this algorithm can train ``topology``, else what it needs (``prepare`` refuses the pair in one line)."""
        return None

    @abstractmethod
    def start(self) -> None:
        """Start the party hosts and install the programs (capacity and cluster errors surface here)."""

    @abstractmethod
    def run_round(self, r: int) -> dict:
        """Train round ``r`` (0-based): {task: [loss sum, correct, samples]}."""

    def drain(self) -> tuple[list, dict, dict]:
        """The round's ledger entries, FLOP totals and plug-in metrics (and start the next round's)."""
        return self.hosts.drain()

    @abstractmethod
    def state(self) -> dict:
        """Everything needed to continue after the current round: plain tensors and numbers (a checkpoint)."""

    @abstractmethod
    def restore(self, state: dict, round_: int) -> None:
        """Continue at the start of ``round_`` from ``state`` (hosts just started)."""

    @abstractmethod
    def model(self) -> ComposedNet:
        """The current global model, for evaluation."""

    def lost_parties(self) -> list[str]:
        """The names of the party hosts whose process is gone (the experiment restarts and replays)."""
        return self.hosts.dead() if self.hosts else []

    def stop(self) -> None:
        if self.hosts:
            self.hosts.stop()
        self.hosts = None

    def round_desc(self, r: int) -> str:
        return f"round {r + 1}/{self.cfg.training.rounds}"


def compose(plan: Plan, states: dict[str, dict]) -> ComposedNet:
    """The unsplit network with the given segment states (the rest as initialised): for evaluation."""
    modules = copy.deepcopy(plan.modules)
    for name, sd in states.items():
        modules[name].load_state_dict(sd)
    return ComposedNet(plan.topology, modules)
