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
from raysplit.network import network_for
from raysplit.plugins import Plugin
from raysplit.population import NEVER, availability
from raysplit.schedule import participants
from raysplit.timeline import Fate, Prices, step_sizes


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
    # what of a population (population.py) it plans rounds for: "availability" (clients come and go, and may go
    # in the middle of their work), "deadline" (population.deadline_s), "over_selection" (population.over_select)
    population_support: ClassVar[frozenset] = frozenset()

    def __init__(self, plan: Plan, capture_ledger: bool = False, progress: bool = True):
        self.plan, self.cfg, self.capture, self.progress = plan, plan.cfg, capture_ledger, progress
        self.hosts: Hosts | None = None
        # the population (population.py): the experiment loop sets ``now_s``, the simulated time at which the next
        # round begins; a round waits ``wait_s`` for a client to come online and records each participant's fate
        self.availability = availability(self.cfg)
        self.now_s, self.wait_s = 0.0, 0.0
        self.fates: list[Fate] = []
        self.span_s: float | None = None    # a round's simulated time when the algorithm plans it whole (async)
        self._prices: Prices | None = None

    def timed(self) -> bool:
        """Whether rounds are planned on the simulated clock: clients come and go, or a round has a deadline."""
        p = self.cfg.population
        return self.availability.dynamic() or p.deadline_s is not None or p.over_select > 1

    def round_clients(self, r: int) -> list[int]:
        """Round ``r``'s participants: sampled among the clients online when it begins (``now_s``, after waiting
        for the first client to come online, if none is)."""
        if not self.timed():
            self.wait_s = 0.0
            return participants(self.cfg, r)
        start = self.availability.next_online(self.now_s)
        if start == NEVER:
            raise RuntimeError(f"no client is online at or after {self.now_s:g} simulated seconds (population "
                               f"availability {self.cfg.population.availability}): round {r + 1} cannot start")
        self.wait_s = start - self.now_s
        return participants(self.cfg, r, self.availability.online(start))

    def prices(self, whole: bool = False) -> Prices:
        """Per-client prices of work on the config's network (timeline.py), built on first use."""
        if self._prices is None:
            p = self.plan
            self._prices = Prices(self.cfg, p.topology, p.modules, p.plugins, p.dataset.train_x, p.dataset.train_y,
                                  network_for(self.cfg), whole)
        return self._prices

    def step_sizes(self, clients: list[int]) -> dict[int, list[int]]:
        t = self.cfg.training
        return {k: step_sizes(len(self.plan.client_indices[k]), t.batch_size, t.local_epochs) for k in clients}

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
