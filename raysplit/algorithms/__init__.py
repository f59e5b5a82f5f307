"""Algorithms: what happens in a round (the strategy), independent of where it runs (hosts.py).

Each algorithm is a driver class keeping the ``Algorithm`` contract (base.py: ``start``, ``run_round``,
``drain``, ``state`` / ``restore``, ``model``, ``stop``; ``supports_topology``, ``splits_model``); what it runs
on the party hosts (its *programs*) lives in the same module. Register a new one with
``@ALGORITHMS.register("name")`` (a user's own, in their module).
"""
from raysplit.accounting import merge_stats
from raysplit.algorithms.async_split import AsyncSplit
from raysplit.algorithms.base import Algorithm, Plan
from raysplit.algorithms.centralized import Centralized
from raysplit.algorithms.fedavg import FedAvg
from raysplit.algorithms.large_batch_sgd import LargeBatchSGD
from raysplit.algorithms.splitfed import SplitFed
from raysplit.algorithms.splitnn import SplitNN
from raysplit.registry import Registry

ALGORITHMS = Registry("algorithm", "algorithm")
for _name, _cls in {"splitnn": SplitNN, "splitfed": SplitFed, "async_split": AsyncSplit, "centralized": Centralized,
                    "fedavg": FedAvg, "large_batch_sgd": LargeBatchSGD}.items():
    ALGORITHMS.register(_name, _cls)

__all__ = ["ALGORITHMS", "Algorithm", "AsyncSplit", "Centralized", "FedAvg", "LargeBatchSGD", "Plan", "SplitFed",
           "SplitNN", "merge_stats"]
