"""The composition root: the one module that knows every registry.

Each built-in fills its own registry (models, data sets, topologies, codecs, plug-ins, algorithms); a user's
own arrive through the config's ``imports:`` or as ``package.module:attr``. This module imports them all and
answers what needs all of them: are a config's names registered (``check``), which plug-ins does it build
(``build_plugins``), which algorithm class runs it and can that class train its topology, does it run its
clients in parallel. Nothing below it imports it.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from raysplit import config
from raysplit.algorithms import ALGORITHMS, Algorithm
from raysplit.attacks import attack_plugins
from raysplit.compression import CODECS, compression_plugin
from raysplit.config import ExperimentConfig
from raysplit.data import DATASETS
from raysplit.errors import ConfigError
from raysplit.graph import Topology
from raysplit.models import MODELS
from raysplit.plugins import PLUGINS, Plugin
from raysplit.privacy import privacy_plugins
from raysplit.registry import import_modules
from raysplit.topology import TOPOLOGIES


def check(cfg: ExperimentConfig) -> None:
    """Every name the config uses is registered (after importing the config's ``imports``), and every plug-in
    of its ``plugins:`` list takes the options given. Nothing is built."""
    import_modules(cfg.imports)
    DATASETS.get(cfg.data.dataset, "data.dataset")
    MODELS.get(cfg.model.name, "model.name")
    TOPOLOGIES.get(cfg.topology, "topology")
    ALGORITHMS.get(cfg.algorithm, "algorithm")
    for kind in ("activation", "gradient"):
        if getattr(cfg.compression, kind) is not None:
            CODECS.get(getattr(cfg.compression, kind), f"compression.{kind}")
    for i, spec in enumerate(cfg.plugins):
        _plugin_class(spec, f"plugins[{i}]")


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """A config file read (config.load) and its names checked: ``raysplit.load_config``, and what reads a config
    without preparing a run (a finished run's directory: its model, its inference, its simulated time)."""
    cfg = config.load(path, list(overrides))
    check(cfg)
    return cfg


def config_from_dict(raw: dict | None, overrides: list[str] = ()) -> ExperimentConfig:
    """``config.from_dict`` with the names checked, as ``load_config`` does for a file."""
    cfg = config.from_dict(raw, list(overrides))
    check(cfg)
    return cfg


def _plugin_class(spec, where: str) -> tuple[type, dict]:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(where, spec, "a mapping with the plug-in's name and its options, e.g. {name: compression}")
    options = {k: v for k, v in spec.items() if k != "name"}
    cls = PLUGINS.get(spec["name"], f"{where}.name")
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise ConfigError(where, options, f"the options {spec['name']} takes: {inspect.signature(cls)} ({e})") from None
    return cls, options


def build_plugins(cfg: ExperimentConfig, num_classes: int) -> list[Plugin]:
    """The config's plug-ins, built once per run: privacy defences and measures, attacks, cut-layer compression
    (their own sections, in that order: noise is added before encoding), then ``plugins:`` in order.
    ``num_classes``: the data set's (label DP needs it)."""
    out = privacy_plugins(cfg.privacy, cfg.seed, num_classes) + attack_plugins(cfg.attacks, cfg.seed, cfg.training.batch_size)
    out += [p for p in [compression_plugin(cfg.compression)] if p is not None]
    for i, spec in enumerate(cfg.plugins):
        cls, options = _plugin_class(spec, f"plugins[{i}]")
        out.append(cls(**options))
    return out


def algorithm(cfg: ExperimentConfig) -> type[Algorithm]:
    return ALGORITHMS.get(cfg.algorithm, "algorithm")


def splits_model(cfg: ExperimentConfig) -> bool:
    """Whether activations and cut gradients cross a party boundary (what cut-layer attacks need)."""
    return getattr(algorithm(cfg), "splits_model", Algorithm.splits_model)   # a user's class need not subclass it


def is_parallel(cfg: ExperimentConfig) -> bool:
    """Clients work at once: the parallel schedule (SplitFed), or a method that trains the whole model on
    every client (FedAvg, large-batch SGD: they do not split the model, and their rounds are parallel)."""
    return cfg.schedule in ("parallel", "async") or not splits_model(cfg)


def unsupported(algorithm_cls: type, topology: Topology) -> str | None:
    """Why an algorithm cannot train a topology (its ``supports_topology``), or None. A user's class that does
    not subclass Algorithm and declares nothing is taken to support every topology."""
    supports = getattr(algorithm_cls, "supports_topology", None)
    return supports(topology) if callable(supports) else None


def able(topology: Topology) -> list[str]:
    """The registered algorithms that can train ``topology``."""
    return [n for n in ALGORITHMS.names() if unsupported(ALGORITHMS.get(n), topology) is None]


def plans_for(need: str) -> list[str]:
    """The registered algorithms that plan rounds for a population's ``need`` (Algorithm.population_support)."""
    return [n for n in ALGORITHMS.names() if need in getattr(ALGORITHMS.get(n), "population_support", ())]
