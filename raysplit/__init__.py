"""raysplit: split learning vs federated learning, every party a Ray actor, every byte and FLOP counted.

The Python API (what the command line calls)::

    import raysplit
    cfg = raysplit.load_config("experiments/vanilla_fmnist.yaml", ["training.rounds=2"])
    result = raysplit.run(cfg)          # a results directory; result.metrics is a pandas DataFrame

    from raysplit.compare import compare    # SplitNN vs FedAvg vs large-batch SGD (raysplit compare)
    from raysplit.sweep import sweep        # a parameter grid on Ray Tune (raysplit sweep)

Everything is imported on first use, so ``import raysplit`` stays light (no torch, no Ray).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:                           # pragma: no cover - for type checkers and IDEs only
    from raysplit.config import ExperimentConfig
    from raysplit.experiment import Result

__all__ = ["__version__", "load_config", "run", "ConfigError", "RaysplitError"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raysplit")
    except PackageNotFoundError:           # a source checkout that was never installed
        return "0+unknown"


def load_config(path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML; ``overrides`` as on the command line (``"training.lr=0.01"``).
    A bad field or an unknown name raises ``raysplit.ConfigError`` naming the field, the value and what is allowed."""
    from raysplit import catalog

    return catalog.load_config(path, list(overrides))


def run(cfg: ExperimentConfig, out_dir=None, progress: bool = True) -> Result:
    """Train one experiment and write its results directory (``out_dir``, by default
    results/<name>-<timestamp>). Starts a local Ray unless one is running or ``runtime.address`` is set.
    Returns a Result: ``out_dir``, ``metrics`` (one row per round, as metrics.csv), ``ledger``, ``flops``."""
    from raysplit import experiment

    return experiment.run(cfg, out_dir=out_dir, progress=progress)


def __getattr__(name: str):
    if name == "__version__":
        return _version()
    if name in ("ConfigError", "RaysplitError"):
        from raysplit import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'raysplit' has no attribute {name!r}")
