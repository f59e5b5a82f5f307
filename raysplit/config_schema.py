"""What an experiment config is: typed dataclasses, each field's type and constraint next to it.

``field(metadata=...)`` carries a field's rule (``_rule``), so one generic loader (config.py) checks them all and
a bad value always produces the same kind of one-line error naming the field, the value and what is allowed.
Names of models, data sets, topologies, algorithms, plug-ins and codecs are plain strings here: the registries
that know them sit floors above (catalog.py checks them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union


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
    # natural: the data set's own clients (each training sample's owner: synthetic_federated's)
    partition: Literal["iid", "dirichlet", "shards", "natural"] = "iid"
    # client sizes (iid and synthetic_federated): equal, or heavy-tailed, client k's share proportional to
    # exp(size_sigma * N(0, 1)) drawn from the seed; every client holds at least one sample
    sizes: Literal["equal", "lognormal"] = "equal"
    size_sigma: float = _rule(default=1.0, **positive)
    alpha: float = _rule(default=0.5, **positive)          # Dirichlet concentration (label skew)
    shards_per_client: int = _rule(default=2, **positive)
    train_samples: Optional[int] = _rule(default=None, **positive)  # use a subset of the training set
    test_samples: Optional[int] = _rule(default=None, **positive)
    # keep only these classes, relabelled 0..k-1 in this order (e.g. [0, 6]: a binary task, for label inference)
    classes: Optional[list[int]] = None
    synthetic_samples: int = _rule(default=2048, **bounded(1, MAX_SAMPLES))
    synthetic_shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    synthetic_classes: int = _rule(default=4, **bounded(1, MAX_CLASSES))
    # synthetic_federated (FedProx's synthetic(alpha, beta)): the spread of the clients' models and of their inputs
    synthetic_alpha: float = _rule(default=1.0, **non_negative)
    synthetic_beta: float = _rule(default=1.0, **non_negative)
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
    # the clients taking part in a round (sequential turns and parallel rounds), sampled from the seed each round
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


COMPARE_METHODS = ("splitnn", "splitfed", "async_split", "fedavg", "large_batch_sgd")
# what a per-method override may not change: the methods are compared on the same data, partition, model, seed
SHARED_BY_METHODS = ("algorithm", "compare", "name", "output_dir", "seed", "data", "model.name", "network")


@dataclass
class CompareConfig:
    """``raysplit compare``: the methods it runs, and per-method overrides ({dotted key: value}) applied on top of
    the shared config, e.g. ``fedavg: {training.lr: 0.1}``. Ignored by ``raysplit run``."""
    methods: list[str] = _rule(default_factory=lambda: ["splitnn", "fedavg", "large_batch_sgd"],
                               allowed=f"a non-empty list of distinct methods from {', '.join(COMPARE_METHODS)}",
                               check=lambda v: bool(v) and len(set(v)) == len(v) and set(v) <= set(COMPARE_METHODS))
    splitnn: dict = field(default_factory=dict)
    splitfed: dict = field(default_factory=dict)
    async_split: dict = field(default_factory=dict)
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
class PopulationConfig:
    """Who of the clients is online when, and what a round does about those who are not or are late
    (population.py). The defaults are the papers' world: every client always online, every round waits for all."""
    # always: every client online; share: each client online with probability online_share in each slot of
    # slot_s simulated seconds (seeded); diurnal: each client online online_s of every period_s, from a seeded
    # phase of its own; trace: the on-line intervals of trace_file (CSV: client,start_s,end_s), FedScale's form
    availability: Literal["always", "share", "diurnal", "trace"] = "always"
    online_share: float = _rule(default=0.5, **fraction)
    slot_s: float = _rule(default=600.0, **positive)
    period_s: float = _rule(default=86400.0, **positive)
    online_s: float = _rule(default=28800.0, **positive)
    trace_file: Optional[str] = None
    # parallel rounds: an update that would arrive later than deadline_s simulated seconds after the round's
    # start is dropped (its work and bytes still counted); null: the round waits for its slowest client
    deadline_s: Optional[float] = _rule(default=None, **positive)
    # parallel rounds: select ceil(over_select * clients per round) online clients, keep the first clients per
    # round to finish (as deployed federated learning does); 1: no over-selection
    over_select: float = _rule(default=1.0, check=lambda v: 1.0 <= v <= 10.0, allowed="a number in [1, 10]")


@dataclass
class AsynchronyConfig:
    """The asynchronous schedule (``schedule: async``, algorithms/async_split.py): clients_per_round clients work at
    once, each from the latest global client-side weights, the server taking their steps as they arrive; a finished
    client's weights w are mixed into the global ones g as g + a (w - g), a = mix * (1 + staleness) ** -exponent
    (FedAsync's polynomial rule), staleness being how many updates the global weights took while it worked."""
    mix: float = _rule(default=0.5, **fraction)
    staleness_exponent: float = _rule(default=0.5, **non_negative)
    # an update more than this many versions stale is discarded (its work and bytes still counted); null: none is
    max_staleness: Optional[int] = _rule(default=None, **non_negative)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = _rule(default=0, **bounded(0, SEED_LIMIT))
    imports: list[str] = field(default_factory=list)    # the user's modules that register models, plug-ins, ...
    algorithm: str = "splitnn"            # a registered algorithm (algorithms/__init__.py: ALGORITHMS)
    topology: str = "vanilla"             # a registered topology (topology.py: TOPOLOGIES)
    parties: Optional[list[str]] = None   # chains: who holds each segment, in order; default per topology
    schedule: Literal["sequential", "parallel", "async"] = "sequential"
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
    population: PopulationConfig = field(default_factory=PopulationConfig)
    asynchrony: AsynchronyConfig = field(default_factory=AsynchronyConfig)
    # further plug-ins, in order: [{name: a registered plug-in or package.module:Class, <its options>}]
    plugins: list[dict] = field(default_factory=list)
    output_dir: Optional[str] = None      # default results/<name>-<timestamp>
    compare: CompareConfig = field(default_factory=lambda: CompareConfig())
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig())


# One sentence per field, for the generated reference (docs/config.md: python -m raysplit.config_reference), keyed
# "Class.field"; a subclass inherits its base's (HubLinkConfig from LinkConfig). tests/test_reference_and_figures.py
# fails when a field has none.
DESCRIPTIONS: dict[str, str] = {
    # ExperimentConfig
    "ExperimentConfig.name": "The experiment's name, used in the default results directory and in figure titles.",
    "ExperimentConfig.seed": "The seed of every random draw (data, partition, initial weights, batches, client sampling).",
    "ExperimentConfig.imports": "Python modules imported before the config's names are checked, where your own models, "
                                "data sets, topologies, algorithms and plug-ins register themselves (a module beside "
                                "the config file is found).",
    "ExperimentConfig.algorithm": "The training method: splitnn, splitfed, async_split, fedavg, large_batch_sgd, "
                                  "centralized, or a registered one (algorithms/__init__.py: ALGORITHMS).",
    "ExperimentConfig.topology": "How the network is cut among the parties: vanilla, u_shaped, vertical, extended, "
                                 "multi_task, multi_hop, or a registered one (topology.py: TOPOLOGIES).",
    "ExperimentConfig.parties": "For chain topologies, the party holding each segment in order; null: the topology's own.",
    "ExperimentConfig.schedule": "How clients take part: in turns (sequential), K at once with averaging (parallel), "
                                 "or asynchronously (async, with algorithm async_split).",
    "ExperimentConfig.handoff": "Sequential SplitNN: the client-side weights go to the next client directly (peer) "
                                "or through the server (server).",
    "ExperimentConfig.splitfed": "Parallel schedule: v1 keeps a server-side copy per client (averaged each round), v2 "
                                 "one server model taking the clients' steps in turn.",
    "ExperimentConfig.data": "The data set and how it is split over the clients.",
    "ExperimentConfig.model": "The network and where it is cut.",
    "ExperimentConfig.training": "Rounds, batches, optimizer and client participation.",
    "ExperimentConfig.runtime": "Where and how the parties run on Ray: cluster address, worker actors, resources, checkpoints.",
    "ExperimentConfig.vertical": "The data holders of a vertically partitioned data set (topology: vertical).",
    "ExperimentConfig.multi_task": "The second task of topology multi_task.",
    "ExperimentConfig.compression": "Codecs applied to what crosses a cut.",
    "ExperimentConfig.privacy": "Defences and leakage measures.",
    "ExperimentConfig.attacks": "Attacks run against what crosses the cut.",
    "ExperimentConfig.network": "The simulated network and compute speeds that price a run's ledger and FLOPs in time.",
    "ExperimentConfig.population": "When clients are online and how a round treats clients that are offline or late.",
    "ExperimentConfig.asynchrony": "The asynchronous schedule's mixing rule.",
    "ExperimentConfig.plugins": "Further plug-ins in order, each a mapping {name: a registered plug-in or "
                                "package.module:Class, <its options>}.",
    "ExperimentConfig.output_dir": "The results directory; null: results/<name>-<timestamp>.",
    "ExperimentConfig.compare": "What `raysplit compare` runs (ignored by `raysplit run`).",
    "ExperimentConfig.sweep": "What `raysplit sweep` runs (ignored by `raysplit run`).",
    # DataConfig
    "DataConfig.dataset": "The data set: fashion_mnist, cifar10, cifar100, breast_cancer, medmnist, synthetic, "
                          "synthetic_federated, a registered one (data.py: DATASETS), or package.module:loader.",
    "DataConfig.root": "The folder the image data sets are read from (or downloaded to); null: $RAYSPLIT_DATA or "
                       "~/.cache/raysplit/data.",
    "DataConfig.num_clients": "The number of data holders (clients) the training set is split over.",
    "DataConfig.partition": "How training samples are split over clients: iid, Dirichlet label skew (dirichlet), "
                            "label shards (shards), or the data set's own owners (natural).",
    "DataConfig.sizes": "Client sizes under iid and synthetic_federated: equal, or lognormal (heavy-tailed, spread "
                        "size_sigma).",
    "DataConfig.size_sigma": "The spread of lognormal client sizes: client k's share is proportional to "
                             "exp(size_sigma * N(0, 1)).",
    "DataConfig.alpha": "The Dirichlet concentration of partition dirichlet (smaller: more label skew).",
    "DataConfig.shards_per_client": "Partition shards: the number of label-sorted shards each client receives.",
    "DataConfig.train_samples": "Use only the first this many training samples; null: all.",
    "DataConfig.test_samples": "Use only the first this many test samples; null: all.",
    "DataConfig.classes": "Keep only these classes, relabelled 0..k-1 in this order (e.g. [0, 6] for a binary task); "
                          "null: all.",
    "DataConfig.synthetic_samples": "Training samples of the synthetic data sets (a quarter as many test samples).",
    "DataConfig.synthetic_shape": "The shape of a synthetic sample: [features] or [channels, height, width].",
    "DataConfig.synthetic_classes": "The number of classes of the synthetic data sets.",
    "DataConfig.synthetic_alpha": "synthetic_federated (FedProx's synthetic(alpha, beta)): how much the clients' "
                                  "models differ.",
    "DataConfig.synthetic_beta": "synthetic_federated: how much the clients' inputs differ.",
    "DataConfig.medmnist_file": "The MedMNIST .npz file (train_images, train_labels, test_images, test_labels) read "
                                "when dataset is medmnist.",
    # ModelConfig
    "ModelConfig.name": "The network: a registered model (models.py: MODELS) or package.module:builder.",
    "ModelConfig.cut_layers": "The layers (names or indices) after which the network is cut into segments, one per boundary.",
    # TrainingConfig
    "TrainingConfig.rounds": "The number of training rounds (a round: every taking-part client passes over its data "
                             "local_epochs times).",
    "TrainingConfig.local_epochs": "Passes a client makes over its own data in a round, for every algorithm.",
    "TrainingConfig.batch_size": "Samples per step at each client.",
    "TrainingConfig.optimizer": "The optimizer of every party's segment: sgd (with momentum) or adam.",
    "TrainingConfig.lr": "The learning rate.",
    "TrainingConfig.momentum": "SGD momentum (unused by adam).",
    "TrainingConfig.weight_decay": "L2 weight decay passed to the optimizer (sgd and adam).",
    "TrainingConfig.client_order": "The order of sequential turns when every client takes part: client 0, 1, ... "
                                   "(fixed) or a seeded permutation each round (shuffled).",
    "TrainingConfig.participation": "The fraction of clients drawn (from the seed) to take part in each round.",
    "TrainingConfig.clients_per_round": "The number of clients taking part in each round (takes precedence over "
                                        "participation); null: use participation.",
    "TrainingConfig.averaging_point": "SplitFed: who averages the client-side weights, a fed server of its own "
                                      "(fed_server) or the main server (server).",
    # Resources
    "Resources.num_cpus": "CPUs Ray reserves for this party host (fractions allowed).",
    "Resources.num_gpus": "GPUs Ray reserves for this party host (fractions allowed; 0: runs on CPU).",
    "Resources.torch_threads": "torch's intra-op threads in this party host; null: max(1, num_cpus).",
    "Resources.resources": "Custom Ray resources the host's node must offer, e.g. {node_a: 1} (declared with "
                           "`ray start --resources`).",
    # RuntimeConfig
    "RuntimeConfig.address": "The Ray cluster to attach to (auto, HOST:PORT or ray://HOST:PORT); null: start a local Ray.",
    "RuntimeConfig.workers": "The number of worker actors that host the virtual clients (results do not depend on it).",
    "RuntimeConfig.worker": "The resources of each worker actor.",
    "RuntimeConfig.server": "The resources of the server and the other non-client party hosts.",
    "RuntimeConfig.eval_every": "Evaluate test accuracy every this many rounds (and after the last).",
    "RuntimeConfig.placement": "Place every party host in one Ray placement group with this strategy; null: no "
                               "placement group.",
    "RuntimeConfig.deterministic": "Turn on torch.use_deterministic_algorithms in every party, so the same seed "
                                   "gives the same numbers.",
    "RuntimeConfig.step_transport": "How a sequential SplitNN step's calls travel: over a direct link between the "
                                    "parties (link, falling back to Ray) or as one Ray actor call each (ray).",
    "RuntimeConfig.checkpoint_every": "Save the experiment's complete state every this many rounds (and after the "
                                      "last), for --resume and recovery.",
    "RuntimeConfig.keep_checkpoints": "The number of most recent checkpoints kept.",
    "RuntimeConfig.checkpoint_dir": "Where checkpoints go; null: <results>/checkpoints (use a shared path on a cluster).",
    "RuntimeConfig.max_failures": "Party hosts that may be lost, and recovered from a checkpoint, before the run stops.",
    # HolderConfig, VerticalConfig
    "HolderConfig.name": "The holder's party name; null: holder<i>.",
    "HolderConfig.rows": "[start, stop): the image rows it holds (images only); null: all rows.",
    "HolderConfig.columns": "[start, stop): the feature columns (tabular) or image columns it holds; null: all.",
    "HolderConfig.sample_ids": "A file of the training-sample ids it holds, one integer per line (every holder must "
                               "hold the same ids); null: all samples.",
    "VerticalConfig.holders": "The data holders, two or more, each a mapping of name, rows, columns and sample_ids.",
    "VerticalConfig.combine": "How the server joins the holders' cut outputs: concatenated, summed or averaged.",
    "VerticalConfig.label_holder": "Who holds the labels: the server (the active party) or a holder's name.",
    # MultiTaskConfig
    "MultiTaskConfig.groups": "For each class, its coarse group (the labels of the second task); null: the data "
                              "set's default.",
    "MultiTaskConfig.group_owner": "The party holding the second task's head: the server or a party of its own name.",
    # CompareConfig, SweepConfig
    "CompareConfig.methods": "The methods `raysplit compare` runs on the same data, model and seed.",
    "CompareConfig.splitnn": "Overrides for the splitnn run, {dotted key: value}, e.g. {training.lr: 0.1}.",
    "CompareConfig.splitfed": "Overrides for the splitfed run, {dotted key: value}.",
    "CompareConfig.async_split": "Overrides for the async_split run, {dotted key: value}.",
    "CompareConfig.fedavg": "Overrides for the fedavg run, {dotted key: value}.",
    "CompareConfig.large_batch_sgd": "Overrides for the large_batch_sgd run, {dotted key: value}.",
    "SweepConfig.grid": "Fields and their values; `raysplit sweep` runs every combination (--grid on the command "
                        "line wins for a field named in both).",
    "SweepConfig.points": "Further settings run one by one after the grid, e.g. [{privacy.activation_noise: 0.5}]; "
                          "a field a point leaves out keeps the config's value.",
    # CompressionConfig
    "CompressionConfig.activation": "The codec for cut activations: identity, float16, int8, topk or a registered "
                                    "codec (compression.py: CODECS); null: sent as they are.",
    "CompressionConfig.gradient": "The codec for cut gradients, as for activation; null: sent as they are.",
    "CompressionConfig.topk_ratio": "The topk codec: the share of values kept.",
    # PrivacyConfig
    "PrivacyConfig.nopeek": "NoPeek's alpha: the data holder adds alpha * DCOR(input, cut activation) to its loss; 0: off.",
    "PrivacyConfig.activation_noise": "The sigma of Gaussian noise added to cut activations; 0: off.",
    "PrivacyConfig.gradient_noise": "The sigma of Gaussian noise added to cut gradients; 0: off.",
    "PrivacyConfig.clip": "Clip each sample's row to this L2 norm before noise is added; null: no clipping.",
    "PrivacyConfig.leakage_probe": "Measure DCOR(input, cut activation) on this many samples each evaluated round; 0: off.",
    "PrivacyConfig.label_epsilon": "Labels sent to the server go through randomized response with this epsilon; "
                                   "null: sent as they are.",
    # AttacksConfig
    "AttacksConfig.model_inversion": "The server trains a decoder to reconstruct client inputs from their cut activations.",
    "AttacksConfig.aux_samples": "Model inversion: the auxiliary training samples the attacker holds.",
    "AttacksConfig.targets": "Model inversion: the held-out client samples it reconstructs (the picture's grid).",
    "AttacksConfig.decoder_epochs": "Model inversion: the epochs the attacker's decoder trains on the auxiliary samples.",
    "AttacksConfig.label_inference": "A party without labels infers them from the cut gradients it receives.",
    "AttacksConfig.probe": "Label inference: the training samples it scores.",
    "AttacksConfig.positive_class": "Label inference: the class told apart from the rest (its AUC is reported).",
    # LinkConfig (and HubLinkConfig), PerClientConfig, NetworkConfig
    "LinkConfig.up_mbps": "The party's upload speed in Mbit/s.",
    "LinkConfig.down_mbps": "The party's download speed in Mbit/s.",
    "LinkConfig.latency_ms": "One-way delay of the party's access link in ms (a message's latency is the sum of its "
                             "two ends').",
    "LinkConfig.flops_per_s": "The party's compute speed in FLOP/s; null: measured once on this machine and written "
                              "into the run's config.yaml.",
    "PerClientConfig.up_mbps": "Each client's upload speed (one value per client); null: network.client's for all.",
    "PerClientConfig.down_mbps": "Each client's download speed (one value per client); null: network.client's for all.",
    "PerClientConfig.latency_ms": "Each client's link delay (one value per client); null: network.client's for all.",
    "PerClientConfig.flops_per_s": "Each client's FLOP/s (one value per client); null: network.client's for all.",
    "NetworkConfig.client": "Every data holder's link (clients and vertical holders): a clinic's by default.",
    "NetworkConfig.server": "The server's link (also the averaging point's): a data centre's by default.",
    "NetworkConfig.others": "Any other party's link (a label holder, further hops): a data centre's by default.",
    "NetworkConfig.per_client": "Per-client overrides of network.client.",
    "NetworkConfig.spread": "Heterogeneous clients: each client's speeds multiplied by its own seeded factor "
                            "exp(spread * N(0, 1)); 0: all alike.",
    # PopulationConfig
    "PopulationConfig.availability": "When clients are online: always, each slot with probability online_share "
                                     "(share), online_s of every period_s (diurnal), or as trace_file says (trace).",
    "PopulationConfig.online_share": "availability share: the probability a client is online in a slot.",
    "PopulationConfig.slot_s": "availability share: the length of a slot in simulated seconds.",
    "PopulationConfig.period_s": "availability diurnal: the period in simulated seconds (a day by default).",
    "PopulationConfig.online_s": "availability diurnal: the simulated seconds of each period a client is online.",
    "PopulationConfig.trace_file": "availability trace: a CSV of online intervals (client,start_s,end_s), FedScale's form.",
    "PopulationConfig.deadline_s": "Parallel rounds: drop an update arriving later than this many simulated seconds "
                                   "after the round's start; null: wait for the slowest client.",
    "PopulationConfig.over_select": "Parallel rounds: select this many times the clients per round and keep the "
                                    "first to finish; 1: no over-selection.",
    # AsynchronyConfig
    "AsynchronyConfig.mix": "The weight a fresh client update gets when mixed into the global client-side weights.",
    "AsynchronyConfig.staleness_exponent": "How fast an update's weight falls with its staleness: "
                                           "mix * (1 + staleness) ** -exponent.",
    "AsynchronyConfig.max_staleness": "Discard an update more than this many versions stale; null: none is discarded.",
}
