"""Schedules: which clients train in a round, and in what order."""
from __future__ import annotations

import math

import numpy as np

from raysplit.config import ExperimentConfig


def client_order(cfg: ExperimentConfig, round_: int) -> list[int]:
    """Every client, in a fixed or a seeded shuffled order (a sequential round in which every client takes a turn)."""
    n = cfg.data.num_clients
    if cfg.training.client_order == "fixed":
        return list(range(n))
    return [int(k) for k in np.random.default_rng([cfg.seed, 3, round_]).permutation(n)]


def clients_per_round(cfg: ExperimentConfig) -> int:
    """How many clients take part in a round: the count if given, else the fraction (at least 1)."""
    n = cfg.data.num_clients
    if cfg.training.clients_per_round is not None:
        return cfg.training.clients_per_round
    return max(1, int(cfg.training.participation * n + 1e-9))


def selected_per_round(cfg: ExperimentConfig) -> int:
    """How many clients a round selects: clients_per_round, times population.over_select (at most all of them)."""
    m = clients_per_round(cfg)
    return min(cfg.data.num_clients, math.ceil(m * cfg.population.over_select - 1e-9))


def participants(cfg: ExperimentConfig, round_: int, online: np.ndarray | None = None) -> list[int]:
    """The clients taking part in a round (sequential turns and parallel rounds), sampled without replacement
    from the seed among the ``online`` ones (sorted client ids; default: every client).

    Their order is the round's canonical order: the order of a sequential round's turns; SplitFed averages in it
    and SplitFed v2's server takes the clients' steps in it. ``client_order: fixed`` keeps them sorted;
    ``shuffled`` keeps the draw's order. A round with every client online and taking part is ``client_order``.
    """
    n, m = cfg.data.num_clients, selected_per_round(cfg)
    if online is None:
        if m == n:
            return client_order(cfg, round_)
        online = np.arange(n)
    if m >= len(online):              # fewer online than wanted: all of them (the round is smaller)
        drawn = [int(k) for k in np.random.default_rng([cfg.seed, 3, round_]).permutation(online)]
    else:
        drawn = [int(k) for k in np.random.default_rng([cfg.seed, 4, round_]).choice(online, size=m, replace=False)]
    return sorted(drawn) if cfg.training.client_order == "fixed" else drawn


def interleave(order: list[int], steps: dict[int, int]) -> list[tuple[int, int]]:
    """SplitFed v2's server order: round-robin by step over the clients in ``order`` — step 0 of every client,
    then step 1 of every client that has one, ... Returns [(client, local step)]; the list index is the
    step's ticket, the position at which the one server model processes it."""
    return [(k, j) for j in range(max(steps.values(), default=0)) for k in order if j < steps[k]]
