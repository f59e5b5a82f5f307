"""Shared pieces of the algorithms: the prepared plan, train statistics, installing programs, draining
hosts, composing the model."""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import ray
from torch import nn
from tqdm import tqdm

from raysplit.config import ExperimentConfig
from raysplit.data import Dataset
from raysplit.plugins import Plugin, merge_metrics
from raysplit.topology import ComposedNet, Topology


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
    plugins: list[Plugin] = field(default_factory=list)   # built from the config; each host gets a copy


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
    for task, (loss_sum, correct, n) in stats.items():
        cell = into.setdefault(task, [0.0, 0, 0])
        cell[0] += loss_sum
        cell[1] += correct
        cell[2] += n


def gather_stats(refs: list, desc: str, progress: bool, unit: str = "client") -> dict:
    """Merge train stats as the calls finish, with a progress bar; errors in the calls surface here.
    ``refs``: ObjectRefs, or (ObjectRef, units it stands for) where one call covers several clients."""
    out: dict = {}
    counts = dict(r if isinstance(r, tuple) else (r, 1) for r in refs)
    pending = list(counts)
    with tqdm(total=sum(counts.values()), desc=desc, unit=unit, leave=False, disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            merge_stats(out, ray.get(done[0]))
            bar.update(counts[done[0]])
    return out


def clients_by_host(hosts, clients: list[int]) -> dict[int, list[int]]:
    """{id(worker host): its clients among ``clients``, in their order}: what one streaming call per host gets."""
    mine: dict[int, list[int]] = {}
    for k in clients:
        mine.setdefault(id(hosts.client_host[k]), []).append(k)
    return mine


def next_item(stream):
    """The next object of a host's streaming call; a stream cut short (its host died) raises the host's error."""
    ref = next(stream, None)
    if ref is None:
        ray.get(stream.completed())
        raise RuntimeError("a host's stream of results ended early")
    return ref


def install(hosts, key: str, programs: dict, *args) -> None:
    """Install a program on hosts and wait: ``programs`` maps a host to its program class."""
    ray.get([h.install.remote(key, program, *args) for h, program in programs.items()])


def host_states(hosts, key: str) -> dict[str, dict]:
    """{host name: the state of its program ``key``}, at a round boundary: what a checkpoint holds."""
    named = hosts.named
    return dict(zip(named, ray.get([h.call.remote(key, "state") for h in named.values()])))


def load_host_states(hosts, key: str, states: dict[str, dict]) -> None:
    ray.get([hosts.named[name].call.remote(key, "load_state", s) for name, s in states.items()])


def drain_hosts(hosts) -> tuple[list, dict, dict]:
    """The round's ledger entries, FLOP totals and plug-in metrics from every party host."""
    entries, flops, metrics = [], defaultdict(int), []
    for e, f, m in ray.get([h.drain.remote() for h in hosts.all]):
        entries += e
        for k, v in f.items():
            flops[k] += v
        metrics.append(m)
    return entries, dict(flops), merge_metrics(metrics)


def compose(plan: Plan, states: dict[str, dict]) -> ComposedNet:
    """The unsplit network with the given segment states (the rest as initialised): for evaluation."""
    modules = copy.deepcopy(plan.modules)
    for name, sd in states.items():
        modules[name].load_state_dict(sd)
    return ComposedNet(plan.topology, modules)
