"""Experiment config: YAML -> typed, validated dataclasses.

Each field's type and constraint live next to it (``field(metadata=...)``) and one generic loader checks
them all, so a bad value always produces the same kind of one-line error naming the field, the value and
what is allowed. Names of models, datasets, topologies, algorithms, plug-ins and codecs are checked against
their registries (``raysplit/registry.py``), so a user's own, imported with ``imports:``, is allowed too.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from raysplit.errors import ConfigError
from raysplit.registry import add_search_path, import_modules


def _rule(allowed: str | None = None, check=None, **kw):
    return field(metadata={"allowed": allowed, "check": check}, **kw)


positive = dict(check=lambda v: v > 0, allowed="a number > 0")
non_negative = dict(check=lambda v: v >= 0, allowed="a number >= 0")
fraction = dict(check=lambda v: 0 < v <= 1, allowed="a number in (0, 1]")


def bounded(low: int, high: int) -> dict:
    """An integer in [low, high]: sizes past ``high`` could never be allocated (or never finish)."""
    return dict(check=lambda v: low <= v <= high, allowed=f"an integer in {low}..{high:,}")


# sizes: large enough for any experiment this simulator can hold in memory, small enough to refuse typos
MAX_SAMPLES = 10_000_000          # synthetic samples (and the largest useful batch)
MAX_CLASSES = 100_000
MAX_VALUES = 2 ** 28              # synthetic data set values in all (1 GiB of float32)
SEED_LIMIT = 2 ** 32 - 1          # numpy and torch seeds


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"        # a registered dataset (data.py: DATASETS) or package.module:loader
    root: Optional[str] = None            # where datasets live; default ~/.cache/raysplit/data
    num_clients: int = _rule(default=10, **bounded(1, MAX_SAMPLES))
    partition: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = _rule(default=0.5, **positive)          # Dirichlet concentration (label skew)
    shards_per_client: int = _rule(default=2, **positive)
    train_samples: Optional[int] = _rule(default=None, **positive)  # use a subset of the training set
    test_samples: Optional[int] = _rule(default=None, **positive)
    # keep only these classes, relabelled 0..k-1 in this order (e.g. [0, 6]: a binary task, for label inference)
    classes: Optional[list[int]] = None
    synthetic_samples: int = _rule(default=2048, **bounded(1, MAX_SAMPLES))
    synthetic_shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    synthetic_classes: int = _rule(default=4, **bounded(1, MAX_CLASSES))
    medmnist_file: Optional[str] = None   # path to a MedMNIST .npz


@dataclass
class ModelConfig:
    name: str = "fmnist_cnn"              # a registered model (models.py: MODELS) or package.module:builder
    cut_layers: list[Union[str, int]] = field(default_factory=lambda: ["pool2"])


@dataclass
class TrainingConfig:
    rounds: int = _rule(default=3, **positive)
    local_epochs: int = _rule(default=1, **positive)
    batch_size: int = _rule(default=64, **bounded(1, MAX_SAMPLES))
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = _rule(default=0.05, **positive)
    momentum: float = _rule(default=0.9, **non_negative)
    weight_decay: float = _rule(default=0.0, **non_negative)
    client_order: Literal["fixed", "shuffled"] = "fixed"
    # parallel schedules (SplitFed, FedAvg): the clients taking part in a round, sampled from the seed each round
    participation: float = _rule(default=1.0, **fraction)                 # a fraction of the clients...
    clients_per_round: Optional[int] = _rule(default=None, **positive)    # ...or a count (takes precedence)
    # SplitFed: the party averaging the client-side weights: a party of its own (the SplitFed paper's fed
    # server), or the main server (which then receives every client's client-side weights)
    averaging_point: Literal["fed_server", "server"] = "fed_server"


@dataclass
class Resources:
    num_cpus: float = _rule(default=1.0, **non_negative)
    num_gpus: float = _rule(default=0.0, **non_negative)
    torch_threads: Optional[int] = _rule(default=None, **bounded(1, 1024))  # default: max(1, num_cpus)
    # custom Ray resources a node must offer, e.g. {node_a: 1} (declared with `ray start --resources`)
    resources: dict[str, float] = _rule(
        default_factory=dict, allowed="a mapping of custom resource name to a number >= 0 (not CPU, GPU or memory)",
        check=lambda d: all(v >= 0 and k not in ("CPU", "GPU", "memory", "object_store_memory") for k, v in d.items()))


@dataclass
class RuntimeConfig:
    address: Optional[str] = None         # None: start a local Ray; "auto" or ray://host:port: attach
    workers: int = _rule(default=1, **bounded(1, 10_000))   # worker actors hosting the virtual clients
    worker: Resources = field(default_factory=Resources)
    server: Resources = field(default_factory=Resources)
    eval_every: int = _rule(default=1, **positive)
    # place all party hosts in one Ray placement group with this strategy (null: no placement group)
    placement: Optional[Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"]] = None
    deterministic: bool = True            # torch.use_deterministic_algorithms in every party
    # how a sequential SplitNN step's calls travel: "link", a direct connection per run of turns (raysplit/
    # link.py; falls back to Ray where a peer cannot connect), or "ray", one Ray actor call per segment call
    step_transport: Literal["link", "ray"] = "link"
    # the experiment's complete state every K rounds (and after the last), for --resume and recovery
    checkpoint_every: int = _rule(default=1, **positive)
    keep_checkpoints: int = _rule(default=2, **positive)
    checkpoint_dir: Optional[str] = None  # default <results>/checkpoints; a shared path on a cluster
    max_failures: int = _rule(default=3, **non_negative)   # party hosts lost (and recovered) before the run stops


PARTY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5})$", re.ASCII)
CHAINS = ("vanilla", "u_shaped", "extended", "multi_hop")


@dataclass
class HolderConfig:
    """One data holder of a vertically partitioned data set: which features of every sample it holds."""
    name: Optional[str] = None            # party name; default holder<i>
    rows: Optional[list[int]] = None      # [start, stop): the image rows it holds (images only)
    columns: Optional[list[int]] = None   # [start, stop): the feature columns (tabular) or image columns it holds
    sample_ids: Optional[str] = None      # file of the training-sample ids it holds, one per line; default all


@dataclass
class VerticalConfig:
    holders: list[HolderConfig] = field(default_factory=list)   # two or more
    combine: Literal["concat", "sum", "mean"] = "concat"         # how the server joins the holders' cut outputs
    label_holder: str = "server"          # "server" (the active party) or a holder's name


@dataclass
class MultiTaskConfig:
    groups: Optional[list[int]] = None    # class -> coarse group (the second task); default per data set
    group_owner: str = "server"           # the party holding the group head: the server or a party of its own


COMPARE_METHODS = ("splitnn", "fedavg", "large_batch_sgd")
# what a per-method override may not change: the methods are compared on the same data, partition, model, seed
SHARED_BY_METHODS = ("algorithm", "compare", "name", "output_dir", "seed", "data", "model.name", "network")


@dataclass
class CompareConfig:
    """``raysplit compare``: per-method overrides ({dotted key: value}) applied on top of the shared config,
    e.g. ``fedavg: {training.lr: 0.1}``. Ignored by ``raysplit run``."""
    splitnn: dict = field(default_factory=dict)
    fedavg: dict = field(default_factory=dict)
    large_batch_sgd: dict = field(default_factory=dict)


@dataclass
class SweepConfig:
    """``raysplit sweep``: the settings to run, in the config (beside ``--grid`` on the command line, which
    wins for a field named in both). Every combination of ``grid``, then every one of ``points``; a field a
    point leaves out keeps the config's value. Ignored by ``raysplit run``."""
    grid: dict = _rule(default_factory=dict, allowed="a mapping of a field to a non-empty list of its values, "
                       "e.g. {privacy.nopeek: [0, 1]}", check=lambda d: all(isinstance(v, list) and v for v in d.values()))
    points: list[dict] = field(default_factory=list)  # settings one by one, e.g. [{privacy.activation_noise: 0.5}]


@dataclass
class CompressionConfig:
    """Codecs for what crosses a cut (compression.py: CODECS; null: sent as it is)."""
    activation: Optional[str] = None      # identity, float16, int8, topk, or a registered codec
    gradient: Optional[str] = None
    topk_ratio: float = _rule(default=0.1, **fraction)   # topk: the share of values kept


@dataclass
class PrivacyConfig:
    """Defences and leakage measures (privacy.py), as plug-ins; 0 / null: off."""
    nopeek: float = _rule(default=0.0, **non_negative)            # alpha: the data holder adds alpha * DCOR(X, Z)
    activation_noise: float = _rule(default=0.0, **non_negative)  # sigma of Gaussian noise on cut activations
    gradient_noise: float = _rule(default=0.0, **non_negative)    # ... and on cut gradients
    clip: Optional[float] = _rule(default=None, **positive)       # clip each sample's row to this L2 norm first
    leakage_probe: int = _rule(default=0, **non_negative)         # DCOR(X, Z) each evaluated round on this many samples
    label_epsilon: Optional[float] = _rule(default=None, **positive)  # labels sent to the server: randomized response


@dataclass
class AttacksConfig:
    """Attacks on what crosses the cut (attacks.py), reported in metrics.csv and as pictures."""
    model_inversion: bool = False         # the server reconstructs client inputs from their cut activations
    aux_samples: int = _rule(default=1024, **positive)   # the attacker's auxiliary training samples
    targets: int = _rule(default=8, **positive)          # held-out client samples it reconstructs (the grid)
    decoder_epochs: int = _rule(default=10, **positive)
    label_inference: bool = False         # a party without labels infers them from the gradients it receives
    probe: int = _rule(default=256, **positive)          # label inference: training samples scored
    positive_class: int = _rule(default=0, **non_negative)


@dataclass
class LinkConfig:
    """One party's access link and compute speed (network.py prices the ledger and FLOP tables with them).
    A message's latency is the sum of its two ends' latency_ms; its transfer runs at the slower of the
    sender's up_mbps and the receiver's down_mbps."""
    up_mbps: float = _rule(default=20.0, **positive)        # Mbit/s the party can send
    down_mbps: float = _rule(default=100.0, **positive)     # Mbit/s it can receive
    latency_ms: float = _rule(default=50.0, **non_negative)  # one-way delay of its access link
    # FLOP/s of the party; null: measured once on this machine (network.machine_flops) and written into
    # the run's config.yaml, so its simulated times can be recomputed from its results directory
    flops_per_s: Optional[float] = _rule(default=None, **positive)


@dataclass
class HubLinkConfig(LinkConfig):
    """The server's (and any other party's) link: a data centre's, unless set."""
    up_mbps: float = _rule(default=1000.0, **positive)
    down_mbps: float = _rule(default=1000.0, **positive)
    latency_ms: float = _rule(default=0.0, **non_negative)


@dataclass
class PerClientConfig:
    """Per-client overrides of network.client: a list of data.num_clients values each (null: all alike)."""
    up_mbps: Optional[list[float]] = None
    down_mbps: Optional[list[float]] = None
    latency_ms: Optional[list[float]] = None
    flops_per_s: Optional[list[float]] = None


@dataclass
class NetworkConfig:
    """The simulated network (network.py): every data holder on a "clinic" link by default (20 Mbit/s up,
    100 down, 50 ms to the server), the server in a data centre (1 Gbit/s both ways, 0 ms)."""
    client: LinkConfig = field(default_factory=LinkConfig)       # every data holder (client/k, vertical holders)
    server: HubLinkConfig = field(default_factory=HubLinkConfig)   # the server (also the averaging point)
    others: HubLinkConfig = field(default_factory=HubLinkConfig)   # any other party: a label holder, further hops
    per_client: PerClientConfig = field(default_factory=PerClientConfig)
    # heterogeneous clients: each client's up, down and FLOP/s multiplied by its own lognormal factor
    # exp(spread * N(0, 1)) (median 1), drawn from the experiment's seed; 0: all alike
    spread: float = _rule(default=0.0, **non_negative)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = _rule(default=0, **bounded(0, SEED_LIMIT))
    imports: list[str] = field(default_factory=list)    # the user's modules that register models, plug-ins, ...
    algorithm: str = "splitnn"            # a registered algorithm (algorithms/__init__.py: ALGORITHMS)
    topology: str = "vanilla"             # a registered topology (topology.py: TOPOLOGIES)
    parties: Optional[list[str]] = None   # chains: who holds each segment, in order; default per topology
    schedule: Literal["sequential", "parallel"] = "sequential"
    handoff: Literal["peer", "server"] = "peer"
    splitfed: Literal["v1", "v2"] = "v1"   # parallel schedule: v1 server copy per client, v2 one server model
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    vertical: VerticalConfig = field(default_factory=VerticalConfig)
    multi_task: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attacks: AttacksConfig = field(default_factory=AttacksConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # further plug-ins, in order: [{name: a registered plug-in or package.module:Class, <its options>}]
    plugins: list[dict] = field(default_factory=list)
    output_dir: Optional[str] = None      # default results/<name>-<timestamp>
    compare: CompareConfig = field(default_factory=lambda: CompareConfig())
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig())


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
        return [_coerce(v, typing.get_args(tp)[0], path, {}) for v in value]
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


def check_names(cfg: ExperimentConfig) -> None:
    """Every name the config uses is registered (after importing the config's ``imports``)."""
    from raysplit.algorithms import ALGORITHMS
    from raysplit.compression import CODECS
    from raysplit.data import DATASETS
    from raysplit.models import MODELS
    from raysplit.plugins import build_plugins
    from raysplit.topology import TOPOLOGIES

    import_modules(cfg.imports)
    DATASETS.get(cfg.data.dataset, "data.dataset")
    MODELS.get(cfg.model.name, "model.name")
    TOPOLOGIES.get(cfg.topology, "topology")
    ALGORITHMS.get(cfg.algorithm, "algorithm")
    for kind in ("activation", "gradient"):
        if getattr(cfg.compression, kind) is not None:
            CODECS.get(getattr(cfg.compression, kind), f"compression.{kind}")
    build_plugins(cfg)


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that need no data or model (those are checked when the experiment is prepared)."""
    check_names(cfg)
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
    # split learning with the parallel schedule is SplitFed (and SplitFed is always parallel)
    if cfg.algorithm == "splitnn" and cfg.schedule == "parallel":
        cfg.algorithm = "splitfed"
    if cfg.algorithm == "splitfed":
        cfg.schedule = "parallel"
        named = [*(cfg.parties or []), cfg.multi_task.group_owner]
        if cfg.training.averaging_point == "fed_server" and "fed_server" in named:
            raise ConfigError("training.averaging_point", "fed_server", "server, or no party of the topology named "
                              "fed_server (the averaging party has that name)")
    if cfg.schedule == "parallel" and cfg.topology == "vertical":
        raise ConfigError("schedule", "parallel", "sequential for topology vertical (its holders share one sample "
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
