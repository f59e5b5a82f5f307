"""Who holds which samples and features: client partitions (IID, Dirichlet label skew, shards) as index
arrays, the batches of a client's turn, a vertical data holder's block of features, and the sample ids that
align vertical holders."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysplit.config import DataConfig
from raysplit.errors import ConfigError


def partition(labels: np.ndarray, cfg: DataConfig, seed: int, owners: np.ndarray | None = None) -> list[np.ndarray]:
    """Split training indices over ``cfg.num_clients`` clients; reproducible from the seed. ``owners``: the
    data set's own client of each training sample (``Dataset.train_owner``), which partition ``natural`` keeps."""
    n, k = len(labels), cfg.num_clients
    check_partition(cfg, owners is not None)
    if k > n:
        raise ConfigError("data.num_clients", k, f"at most the number of training samples ({n})")
    if cfg.partition == "natural":
        return natural(owners, k)
    rng = np.random.default_rng([seed, 1])  # a stream of its own, independent of model init
    if cfg.partition == "iid":
        if cfg.sizes == "equal":
            parts = np.array_split(rng.permutation(n), k)
        else:
            parts = np.split(rng.permutation(n), np.cumsum(client_sizes(n, cfg, seed))[:-1])
    elif cfg.partition == "shards":
        shards = k * cfg.shards_per_client
        if shards > n:
            raise ConfigError("data.shards_per_client", cfg.shards_per_client,
                              f"at most {n // k} (num_clients x shards_per_client <= {n} samples)")
        pieces = np.array_split(np.argsort(labels, kind="stable"), shards)
        order = rng.permutation(shards)
        parts = [np.concatenate([pieces[j] for j in order[i::k]]) for i in range(k)]
    else:
        parts = _dirichlet(labels, k, cfg.alpha, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def check_partition(cfg: DataConfig, has_owners: bool) -> None:
    """The partition fits the data set: ``natural`` needs a data set that names each sample's client (and
    synthetic_federated's clients are its own); lognormal sizes apply to partitions that choose sizes."""
    if cfg.dataset == "synthetic_federated" and cfg.partition != "natural":
        raise ConfigError("data.partition", cfg.partition, "natural for data.dataset synthetic_federated (its "
                          "samples are drawn per client: each client holds its own)")
    if cfg.partition == "natural" and not has_owners:
        raise ConfigError("data.partition", "natural", f"iid, dirichlet or shards for data.dataset {cfg.dataset} "
                          "(natural keeps a data set's own clients; this one names none: synthetic_federated does)")
    if cfg.sizes != "equal" and cfg.partition not in ("iid", "natural"):
        raise ConfigError("data.sizes", cfg.sizes, f"equal for data.partition {cfg.partition} (lognormal sizes "
                          "apply to partitions iid and natural)")


def client_sizes(n: int, cfg: DataConfig, seed: int) -> np.ndarray:
    """How many of ``n`` samples each of ``cfg.num_clients`` clients holds (int64, summing to ``n``, each >= 1):
    equal (as ``np.array_split``: the first ``n % k`` one more), or lognormal: client k's share of the ``n - k``
    samples beyond its first proportional to exp(size_sigma * N(0, 1)), drawn from the seed, rounded by largest
    remainder. The IID partition and synthetic_federated's clients both take their sizes from here."""
    k = cfg.num_clients
    if k > n:
        raise ConfigError("data.num_clients", k, f"at most the number of training samples ({n})")
    if cfg.sizes == "equal":
        return np.full(k, n // k, np.int64) + (np.arange(k) < n % k)
    weight = np.exp(cfg.size_sigma * np.random.default_rng([seed, 5]).standard_normal(k))
    share = (n - k) * (weight / weight.sum())
    sizes = np.floor(share).astype(np.int64)
    short = (n - k) - int(sizes.sum())                       # 0 <= short < k: to the largest remainders
    sizes[np.argsort(sizes - share, kind="stable")[:short]] += 1
    return sizes + 1


def natural(owners: np.ndarray, k: int) -> list[np.ndarray]:
    """The data set's own clients: client j holds the training samples whose owner is j (sorted)."""
    owners = np.asarray(owners)
    if owners.ndim != 1 or not np.issubdtype(owners.dtype, np.integer):
        raise ConfigError("data.partition", "natural", f"a data set whose train_owner is one integer client id per "
                          f"training sample (got {owners.dtype} of shape {list(owners.shape)})")
    if len(owners) and (owners.min() < 0 or owners.max() >= k):
        raise ConfigError("data.num_clients", k, f"the data set's number of clients (its samples' owners are "
                          f"{int(owners.min())}..{int(owners.max())})")
    counts = np.bincount(owners, minlength=k)
    if counts.min() == 0:
        raise ConfigError("data.partition", "natural", f"a partition whose every client holds a training sample (client "
                          f"{int(np.argmin(counts))} of the data set's {k} holds none: data.train_samples or data.classes "
                          "left it out)")
    order = np.argsort(owners, kind="stable").astype(np.int64)
    return np.split(order, np.cumsum(counts)[:-1])


def _dirichlet(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: for each class, its samples are spread over clients in Dirichlet(alpha) proportions.

    Redrawn (up to 100 times) until every client holds at least one sample.
    """
    for _ in range(100):
        buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * k)) * len(idx)).astype(int)[:-1]
            for i, piece in enumerate(np.split(idx, cuts)):
                buckets[i].append(piece)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) > 0:
            return parts
    raise ConfigError("data.alpha", alpha, f"a larger alpha (with {k} clients some got no samples in 100 draws)")


def batches(indices: np.ndarray, batch_size: int, seed: int, round_: int, client: int) -> list[np.ndarray]:
    """A client's batches for one local epoch: its indices shuffled by (seed, round, client), then chunked.

    Deterministic and independent of which actor hosts the client; the equivalence tests replay it.
    """
    rng = np.random.default_rng([seed, 2, round_, client])
    order = indices[rng.permutation(len(indices))]
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- vertical partitions

@dataclass(frozen=True)
class FeatureView:
    """The features one data holder of a vertically partitioned data set holds: a block of image rows and
    columns, or of feature columns for tabular data. Applied to a batch ``(n, C, H, W)`` or ``(n, F)``."""
    rows: tuple[int, int] | None = None
    columns: tuple[int, int] | None = None

    def __call__(self, x):   # a torch tensor
        cols = slice(*self.columns) if self.columns else slice(None)
        if x.ndim == 2:
            return x[:, cols].contiguous()
        return x[..., slice(*self.rows) if self.rows else slice(None), cols].contiguous()

    def check(self, input_shape: tuple[int, ...], where: str) -> None:
        """Refuse a block outside the data (``where`` names the config entry)."""
        if len(input_shape) == 1:
            if self.rows is not None:
                raise ConfigError(f"{where}.rows", list(self.rows), "null for tabular data (hold feature columns)")
            if self.columns is None:
                raise ConfigError(f"{where}.columns", None, f"[start, stop) within the {input_shape[0]} feature columns")
            dims = {"columns": (self.columns, input_shape[0])}
        else:
            dims = {"rows": (self.rows, input_shape[-2]), "columns": (self.columns, input_shape[-1])}
        for axis, (rng, size) in dims.items():
            if rng is not None and rng[1] > size:
                raise ConfigError(f"{where}.{axis}", list(rng), f"[start, stop) with stop <= {size} (the data's {axis})")


INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def read_sample_ids(path: str, n_train: int, where: str) -> np.ndarray:
    """A holder's training-sample ids (one integer per line, ``#`` comments), sorted; ids index the training set."""
    allowed = f"a file of distinct training-sample ids in 0..{n_train - 1}, one integer per line"
    try:
        if not Path(path).is_file():
            raise ConfigError(where, path, allowed + " (no such file)")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(where, path, f"{allowed} (unreadable: {e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(where, path, f"{allowed} (this is not a text file)") from None
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not INTEGER.fullmatch(line):
            raise ConfigError(where, path, f"{allowed} (line {number} is {line[:40]!r})")
        ids.append(int(line))
    if not ids:
        raise ConfigError(where, path, f"{allowed} (it holds none)")
    ids = np.array(ids, dtype=object)
    bad = [i for i in ids if not 0 <= i < n_train]
    if bad:
        raise ConfigError(where, path, f"{allowed} (it holds {bad[0]})")
    ids = ids.astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(where, path, f"{allowed} (an id repeats)")
    return np.sort(ids)


def aligned_sample_ids(holders: list[tuple[str, str | None]], n_train: int) -> np.ndarray:
    """The shared sample space of vertical holders ``[(config entry, ids file or None = all)]``.

    Every holder must hold the same samples: split training pairs each holder's features of one sample by
    its id, so a sample missing at one holder cannot be trained on.
    """
    first = None
    for i, (where, path) in enumerate(holders):
        ids = np.arange(n_train) if path is None else read_sample_ids(path, n_train, where)
        if first is None:
            first = ids
        elif not np.array_equal(ids, first):
            missing, extra = len(np.setdiff1d(first, ids)), len(np.setdiff1d(ids, first))
            raise ConfigError(where, path or "null (all samples)",
                              f"the same sample ids as the first holder ({len(first)} ids; this holder has {len(ids)}: "
                              f"{missing} of the first holder's missing, {extra} others)")
    return first
