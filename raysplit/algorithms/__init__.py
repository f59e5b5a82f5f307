"""Algorithms: what happens in a round (the strategy), independent of where it runs (runtime.py).

Each algorithm is a class built from a ``Plan`` with ``start()``, ``run_round(r) -> train stats``,
``drain() -> (ledger entries, FLOP totals)``, ``model() -> ComposedNet`` (the current global model, for
evaluation) and ``stop()``. Register new ones in ``ALGORITHMS``.
"""
from raysplit.algorithms.base import Plan, merge_stats
from raysplit.algorithms.centralized import Centralized
from raysplit.algorithms.fedavg import FedAvg
from raysplit.algorithms.large_batch_sgd import LargeBatchSGD
from raysplit.algorithms.splitfed import SplitFed
from raysplit.algorithms.splitnn import SplitNN

ALGORITHMS = {"splitnn": SplitNN, "splitfed": SplitFed, "centralized": Centralized, "fedavg": FedAvg,
              "large_batch_sgd": LargeBatchSGD}

__all__ = ["ALGORITHMS", "Centralized", "FedAvg", "LargeBatchSGD", "Plan", "SplitFed", "SplitNN", "merge_stats"]
