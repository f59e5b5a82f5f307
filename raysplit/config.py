"""Experiment config: YAML (and ``--set`` overrides) -> the typed dataclasses of config_schema.py, validated.

One generic loader checks every field's type and constraint, then the cross-field rules that need no data,
model or registry; a bad value is a one-line ``ConfigError`` naming the field, the value and what is allowed.
Registered names (models, data sets, topologies, algorithms, plug-ins, codecs) are checked a floor above, by
the composition root (catalog.py), when a run is prepared. The schema's classes are importable from here too.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from raysplit.config_schema import (  # noqa: F401 (the schema is public here: raysplit.config.ExperimentConfig, ...)
    AsynchronyConfig, AttacksConfig, bounded, CHAINS, COMPARE_METHODS, CompareConfig, CompressionConfig, DataConfig,
    ExperimentConfig, HolderConfig, HubLinkConfig, LinkConfig, MAX_CLASSES, MAX_SAMPLES, MAX_VALUES, ModelConfig, MultiTaskConfig,
    NetworkConfig, PARTY_NAME, PerClientConfig, PopulationConfig, PrivacyConfig, RAY_ADDRESS, Resources, RuntimeConfig, SEED_LIMIT,
    SHARED_BY_METHODS, SweepConfig, TrainingConfig, VerticalConfig,
)
from raysplit.errors import ConfigError
from raysplit.registry import add_search_path


# --------------------------------------------------------------------------- loading and validation

def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + " or null"
    if origin is list:
        return "a list of " + _describe(typing.get_args(tp)[0])
    if origin is dict:
        return "a mapping of " + " to ".join(_describe(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp, path: str, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, value, f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, path)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return None
        for a in args:
            try:
                return _coerce(value, a, path, meta)
            except ConfigError:
                continue
        raise ConfigError(path, value, meta.get("allowed") or _describe(tp))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(path, value, _describe(tp))
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, meta.get("allowed") or "a mapping")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        out = [_coerce(v, typing.get_args(tp)[0], path, {}) for v in value]
        if meta.get("check") is not None and not meta["check"](out):
            raise ConfigError(path, value, meta["allowed"])
        return out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, meta.get("allowed") or _describe(tp))
        key_tp, val_tp = typing.get_args(tp)
        value = {_coerce(k, key_tp, path, {}): _coerce(v, val_tp, f"{path}.{k}", {}) for k, v in value.items()}
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, meta.get("allowed") or "an integer")
    elif tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            value = float(value)       # PyYAML reads 1e-3 (no dot) as a string; users mean the number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(path, value, meta.get("allowed") or "a number")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
    check = meta.get("check")
    if check is not None and not check(value):
        raise ConfigError(path, value, meta["allowed"])
    return value


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _build(cls, raw: dict, prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(where, raw[key], f"a known key of {prefix or 'the config'}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}.{name}" if prefix else name, dict(f.metadata))
    return cls(**kwargs)


def set_by_path(raw: dict, dotted: str, value: Any) -> None:
    """Apply one ``--set a.b.c=value`` override to a raw config mapping (values parsed as YAML)."""
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, value, f"a path through mappings; {p} is not a mapping")
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError("--set", text, "key=value, e.g. training.lr=0.01")
    key, _, val = text.partition("=")
    try:
        parsed = yaml.safe_load(val) if val.strip() else None
    except (yaml.YAMLError, RecursionError):
        parsed = val
    return key.strip(), parsed


def from_dict(raw: dict | None, overrides: list[str] = ()) -> ExperimentConfig:
    raw = dict(raw or {})
    for text in overrides:
        set_by_path(raw, *parse_override(text))
    cfg = _build(ExperimentConfig, raw)
    validate(cfg)
    return cfg


def load(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError("config", str(path), "a path to an existing YAML file")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("config", str(path), f"a readable YAML file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError("config", str(path), f"a YAML file of UTF-8 text (byte {e.start} is not UTF-8)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError("config", str(path), f"valid YAML{where}") from None
    except RecursionError:
        raise ConfigError("config", str(path), "valid YAML of config keys (this nests too deeply to read)") from None
    if raw is None or raw == {}:
        # an empty file would otherwise run the whole default experiment
        raise ConfigError("config", str(path), "a YAML mapping of config keys (the file has none: it is empty "
                          "or only comments); start from a file in experiments/")
    if not isinstance(raw, dict):
        raise ConfigError("config", str(path), "a YAML mapping of config keys")
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError("config", str(path), f"a YAML mapping of config keys (names; got the key {key!r})")
    add_search_path(path.parent)       # a user's modules (``imports:``) may sit beside their config
    return from_dict(raw, overrides)


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that need no data, model or registry (the names are checked by catalog.check, the data
    and model when the experiment is prepared)."""
    if cfg.data.dataset == "medmnist" and not cfg.data.medmnist_file:
        raise ConfigError("data.medmnist_file", None, "a path to a MedMNIST .npz file when data.dataset is medmnist")
    shape = cfg.data.synthetic_shape
    if len(shape) not in (1, 3) or any(s <= 0 or s > MAX_VALUES for s in shape):
        raise ConfigError("data.synthetic_shape", shape, f"[features] or [channels, height, width], all in 1..{MAX_VALUES:,}")
    if cfg.data.dataset == "synthetic":
        # the synthetic set is drawn in memory: training samples, a quarter as many test samples, one prototype a class
        d = cfg.data
        rows = d.synthetic_samples + max(d.synthetic_classes, d.synthetic_samples // 4) + d.synthetic_classes
        if rows * math.prod(shape) > MAX_VALUES:
            raise ConfigError("data.synthetic_samples", d.synthetic_samples,
                              f"a synthetic data set of at most {MAX_VALUES:,} values in all (1 GiB of float32; "
                              f"each sample has {math.prod(shape):,} values, data.synthetic_shape {shape}, "
                              f"with {d.synthetic_classes} classes)")
    if cfg.parties is not None and cfg.topology not in CHAINS:
        raise ConfigError("parties", cfg.parties, f"null for topology {cfg.topology} (parties are named in "
                          f"{'vertical.holders' if cfg.topology == 'vertical' else 'multi_task.group_owner'})")
    for i, name in enumerate(cfg.parties or []):
        _check_party_name(f"parties[{i}]", name)
    if cfg.topology == "vertical":
        _validate_vertical(cfg)
    if cfg.topology == "multi_task":
        _check_party_name("multi_task.group_owner", cfg.multi_task.group_owner)
        if cfg.multi_task.group_owner == "client":
            raise ConfigError("multi_task.group_owner", "client", "server or the name of another party (heads are server-side)")
    # split learning with the parallel schedule is SplitFed, with the asynchronous one async_split (and each of them
    # always runs on its schedule)
    own_schedule = {"splitfed": "parallel", "async_split": "async"}
    if cfg.algorithm == "splitnn" and cfg.schedule != "sequential":
        cfg.algorithm = {v: k for k, v in own_schedule.items()}[cfg.schedule]
    if cfg.algorithm in own_schedule:
        cfg.schedule = own_schedule[cfg.algorithm]
    if cfg.algorithm == "async_split" and cfg.training.averaging_point != "fed_server":
        raise ConfigError("training.averaging_point", cfg.training.averaging_point,
                          "fed_server for async_split (the latest client-side weights live with a party of their own)")
    if cfg.algorithm in own_schedule:
        named = [*(cfg.parties or []), cfg.multi_task.group_owner]
        if cfg.training.averaging_point == "fed_server" and "fed_server" in named:
            raise ConfigError("training.averaging_point", "fed_server", "server, or no party of the topology named "
                              "fed_server (the averaging party has that name)")
    if cfg.schedule != "sequential" and cfg.topology == "vertical":
        raise ConfigError("schedule", cfg.schedule, "sequential for topology vertical (its holders share one sample "
                          "space; there are no clients to run in parallel)")
    address = cfg.runtime.address
    if address is not None and not RAY_ADDRESS.match(address):
        raise ConfigError("runtime.address", address, "null (a local Ray of its own), auto (the cluster started on this "
                          "machine with `ray start`), ray://host:port or host:port")
    per_round = cfg.training.clients_per_round
    if per_round is not None and per_round > cfg.data.num_clients:
        raise ConfigError("training.clients_per_round", per_round, f"at most data.num_clients ({cfg.data.num_clients})")
    if per_round is not None and cfg.training.participation != 1.0:
        raise ConfigError("training.participation", cfg.training.participation,
                          "1.0 (the default) when training.clients_per_round is set: give a fraction or a count, not both")
    _validate_network(cfg)
    for method in COMPARE_METHODS:
        if getattr(cfg.compare, method):
            method_config(cfg, method)   # a bad per-method override is refused at load time


def _validate_network(cfg: ExperimentConfig) -> None:
    """Per-client lists: one positive number per client (latency: >= 0)."""
    n = cfg.data.num_clients
    for key, f in ((f.name, f) for f in dataclasses.fields(PerClientConfig)):
        values = getattr(cfg.network.per_client, key)
        if values is None:
            continue
        where = f"network.per_client.{key}"
        if len(values) != n:
            shown = values if len(values) <= 8 else f"a list of {len(values)} values"
            raise ConfigError(where, shown, f"a list of data.num_clients ({n}) values, one per client, or null")
        low, allowed = (0, "a number >= 0") if key == "latency_ms" else (None, "a number > 0")
        for i, v in enumerate(values):
            if (v < 0) if low == 0 else (v <= 0):
                raise ConfigError(f"{where}[{i}]", v, allowed)


def _check_party_name(where: str, name: str) -> None:
    if not PARTY_NAME.match(name):
        raise ConfigError(where, name, "a party name: lower-case letters, digits and _, starting with a letter")


def _validate_vertical(cfg: ExperimentConfig) -> None:
    v = cfg.vertical
    if len(v.holders) < 2:
        raise ConfigError("vertical.holders", len(v.holders),
                          "two or more data holders, each with rows and/or columns, e.g. [{rows: [0, 14]}, {rows: [14, 28]}]")
    if cfg.data.num_clients != 1:
        raise ConfigError("data.num_clients", cfg.data.num_clients,
                          "1 for topology vertical (one sample space; its features are split over vertical.holders)")
    names = []
    for i, h in enumerate(v.holders):
        where = f"vertical.holders[{i}]"
        name = h.name or f"holder{i}"
        _check_party_name(f"{where}.name", name)
        if name in ("client", "server") or name in names:
            raise ConfigError(f"{where}.name", name, f"a name of its own (not client, server{''.join(', ' + n for n in names)})")
        names.append(name)
        if h.rows is None and h.columns is None:
            raise ConfigError(where, {"name": name}, "rows and/or columns: the features this holder holds (a party with no segment)")
        for axis in ("rows", "columns"):
            rng = getattr(h, axis)
            if rng is not None and (len(rng) != 2 or not 0 <= rng[0] < rng[1]):
                raise ConfigError(f"{where}.{axis}", rng, "[start, stop) with 0 <= start < stop")
    blocks = []
    for i, h in enumerate(v.holders):
        block = {axis: getattr(h, axis) for axis in ("rows", "columns") if getattr(h, axis) is not None}
        for j, other in enumerate(blocks):
            if all(_overlap(block.get(axis), other.get(axis)) for axis in ("rows", "columns")):
                raise ConfigError(f"vertical.holders[{i}]", block, f"a block of features no other holder holds "
                                  f"(it overlaps vertical.holders[{j}] {other}; a missing rows or columns means all)")
        blocks.append(block)
    if v.label_holder != "server" and v.label_holder not in names:
        raise ConfigError("vertical.label_holder", v.label_holder, "server or a holder's name: " + ", ".join(names))


def _overlap(a: list[int] | None, b: list[int] | None) -> bool:
    """Whether two [start, stop) ranges share an index (None: the whole axis)."""
    return a is None or b is None or max(a[0], b[0]) < min(a[1], b[1])


def holder_names(cfg: ExperimentConfig) -> list[str]:
    return [h.name or f"holder{i}" for i, h in enumerate(cfg.vertical.holders)]


def _flatten(overrides: dict, prefix: str = "") -> dict[str, Any]:
    """``{training: {lr: 0.1}}`` and ``{training.lr: 0.1}`` mean the same override."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def method_overrides(cfg: ExperimentConfig, method: str) -> dict[str, Any]:
    """The ``compare`` section's overrides for one method, as {dotted key: value}."""
    return _flatten(getattr(cfg.compare, method))


def method_config(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """The config ``raysplit compare`` runs for one method: the shared config, ``algorithm`` set to the
    method, then the method's overrides from the ``compare`` section."""
    raw = to_dict(cfg)
    raw.pop("compare")
    overrides = method_overrides(cfg, method)
    raw["algorithm"] = method
    for key, value in overrides.items():
        if any(key == s or key.startswith(s + ".") for s in SHARED_BY_METHODS):
            raise ConfigError(f"compare.{method}.{key}", value, "an override of another setting; the methods share "
                              + ", ".join(SHARED_BY_METHODS))
    try:
        for key, value in overrides.items():
            set_by_path(raw, key, value)
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"compare.{method}.{e.field}", e.value, e.allowed) from None


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)
