"""Algorithms: what happens in a round (the strategy), independent of where it runs (runtime.py).

Each algorithm is a driver class built from a ``Plan`` with ``start()``, ``run_round(r) -> train stats``,
``drain() -> (ledger entries, FLOP totals, plug-in metrics)``, ``model() -> ComposedNet`` (the current
global model, for evaluation) and ``stop()``; what it runs on the party hosts (its *programs*) lives in
the same module. Register a new one with ``@ALGORITHMS.register("name")`` (a user's own, in their module).
"""
from raysplit.algorithms.base import Plan, merge_stats
from raysplit.algorithms.centralized import Centralized
from raysplit.algorithms.fedavg import FedAvg
from raysplit.algorithms.large_batch_sgd import LargeBatchSGD
from raysplit.algorithms.splitfed import SplitFed
from raysplit.algorithms.splitnn import SplitNN
from raysplit.registry import Registry

ALGORITHMS = Registry("algorithm", "algorithm")
for _name, _cls in {"splitnn": SplitNN, "splitfed": SplitFed, "centralized": Centralized, "fedavg": FedAvg,
                    "large_batch_sgd": LargeBatchSGD}.items():
    ALGORITHMS.register(_name, _cls)

__all__ = ["ALGORITHMS", "Centralized", "FedAvg", "LargeBatchSGD", "Plan", "SplitFed", "SplitNN", "merge_stats"]
