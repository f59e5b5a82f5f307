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


def partition(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Split training indices over ``cfg.num_clients`` clients; reproducible from the seed."""
    n, k = len(labels), cfg.num_clients
    if k > n:
        raise ConfigError("data.num_clients", k, f"at most the number of training samples ({n})")
    rng = np.random.default_rng([seed, 1])  # a stream of its own, independent of model init
    if cfg.partition == "iid":
        parts = np.array_split(rng.permutation(n), k)
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
