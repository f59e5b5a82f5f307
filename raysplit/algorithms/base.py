"""Shared pieces of the algorithms: the prepared plan and train-statistics merging."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from raysplit.config import ExperimentConfig
from raysplit.data import Dataset
from raysplit.topology import Topology


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


def merge_stats(into: dict, stats: dict) -> None:
    for task, (loss_sum, correct, n) in stats.items():
        cell = into.setdefault(task, [0.0, 0, 0])
        cell[0] += loss_sum
        cell[1] += correct
        cell[2] += n
