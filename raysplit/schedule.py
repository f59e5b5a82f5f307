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


def participants(cfg: ExperimentConfig, round_: int) -> list[int]:
    """FedAvg: the clients sampled for a round (a ``training.participation`` share, at least one), in client
    order; reproducible from the seed and independent of how clients are hosted."""
    n = cfg.data.num_clients
    m = max(1, round(cfg.training.participation * n))
    if m >= n:
        return list(range(n))
    return sorted(int(k) for k in np.random.default_rng([cfg.seed, 4, round_]).choice(n, m, replace=False))
