"""Schedules: which clients train in a round, and in what order."""
from __future__ import annotations

import numpy as np

from raysplit.config import ExperimentConfig


def client_order(cfg: ExperimentConfig, round_: int) -> list[int]:
    """Sequential schedule: every client takes one turn per round, in a fixed or a seeded shuffled order."""
    n = cfg.data.num_clients
    if cfg.training.client_order == "fixed":
        return list(range(n))
    return [int(k) for k in np.random.default_rng([cfg.seed, 3, round_]).permutation(n)]
