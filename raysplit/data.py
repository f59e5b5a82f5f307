"""Datasets (as normalized float32 numpy arrays); their partitions over clients are partition.py's (importable
from here too).

A dataset is loaded once by the driver and ``ray.put`` once; every party reads it zero-copy and a
client holds only its index array.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysplit.config import MAX_VALUES, DataConfig
from raysplit.errors import ConfigError, DataError
from raysplit.partition import (FeatureView, aligned_sample_ids, batches,  # noqa: F401 (public here)
                                check_partition, client_sizes, partition, read_sample_ids)
from raysplit.registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@dataclass
class Dataset:
    name: str
    train_x: np.ndarray   # float32, (n, *input_shape)
    train_y: np.ndarray   # int64, (n,)
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    # the client each training sample belongs to (int64 ids 0..num_clients-1), for a data set drawn or collected
    # per client (synthetic_federated); None: the samples are pooled, and a partition splits them
    train_owner: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def default_root() -> Path:
    return Path(os.environ.get("RAYSPLIT_DATA", Path.home() / ".cache" / "raysplit" / "data"))


def _normalize(x: np.ndarray, mean: float | np.ndarray, std: float | np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _check_root(root: Path) -> None:
    """The data root is a directory we can read (or can be made: the folder it would go in is one)."""
    try:
        if root.exists() and not root.is_dir():
            raise ConfigError("data.root", str(root), "a directory for the data sets (this is a file)")
        if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError("data.root", str(root), "a directory for the data sets that this user can read")
        above = root.absolute().parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not root.exists() and not above.is_dir():
            raise ConfigError("data.root", str(root), f"a directory for the data sets ({above} is a file)")
    except OSError as e:
        raise ConfigError("data.root", str(root), f"a readable directory for the data sets ({e.strerror or e})") from None


def _unpack_debian_fashion_mnist(raw: Path) -> None:
    """Debian's dataset-fashion-mnist ships the gzipped IDX files; they are read unpacked. Each is
    written under a ``.tmp`` name and renamed when complete; a broken archive leaves nothing behind."""
    for f in FASHION_FILES:
        src_path, tmp = DEBIAN_FASHION_MNIST / f"{f}.gz", raw / f"{f}.tmp"
        try:
            raw.mkdir(parents=True, exist_ok=True)
            with gzip.open(src_path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if tmp.stat().st_size == 0:
                raise EOFError("it holds no data")
            tmp.rename(raw / f)
        except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError; a truncated archive an EOFError
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if not src_path.is_file() or not raw.is_dir():   # the data root, not the archive
                raise ConfigError("data.root", str(raw.parents[1]), f"a writable directory for the data sets "
                                  f"({getattr(e, 'strerror', None) or e})") from None
            raise DataError(f"data.dataset: fashion_mnist archive {src_path} is corrupt or truncated ({e}); "
                            "reinstall it with `apt-get install --reinstall -y dataset-fashion-mnist`") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format): magic bytes 0, 0, 0x08, ndim; ndim big-endian sizes; the
    bytes. Read here, not by torchvision, whose import costs the driver 2 s and 100 MB for this."""
    data = path.read_bytes()
    head = 4 + 4 * ndim
    if len(data) < head or data[:4] != bytes([0, 0, 8, ndim]):
        raise ValueError(f"{path.name} is not an IDX file of {ndim}-dimensional unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    if len(data) - head != math.prod(shape):
        raise ValueError(f"{path.name} holds {len(data) - head} bytes of data for shape {list(shape)}")
    return np.frombuffer(data, np.uint8, offset=head).reshape(shape)


def _fashion_mnist(root: Path) -> Dataset:
    _check_root(root)
    raw = root / "FashionMNIST" / "raw"
    try:
        have = all((raw / f).is_file() for f in FASHION_FILES)
        debian = all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FASHION_FILES)
    except OSError as e:
        raise ConfigError("data.root", str(root), f"a readable directory for the data sets ({e.strerror or e})") from None
    if not have:
        if debian:
            _unpack_debian_fashion_mnist(raw)
        else:
            raise DataError(
                f"data.dataset: fashion_mnist files not found in {raw} or {DEBIAN_FASHION_MNIST}; "
                "install them with `apt-get install -y dataset-fashion-mnist` (or put the IDX files in the first folder)")
    fix = "reinstall with `apt-get install --reinstall -y dataset-fashion-mnist` (and delete them: they are unpacked again)"
    try:
        train, test = ((_read_idx(raw / f"{split}-images-idx3-ubyte", 3), _read_idx(raw / f"{split}-labels-idx1-ubyte", 1))
                       for split in ("train", "t10k"))
    except (OSError, ValueError) as e:
        raise DataError(f"data.dataset: fashion_mnist files in {raw} are unreadable ({e}); {fix}") from None
    for split, (x, y) in (("train", train), ("t10k", test)):
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"data.dataset: fashion_mnist files in {raw} disagree: {split}-images holds "
                            f"{len(x)} images of shape {list(x.shape[1:])}, {split}-labels {len(y)} "
                            f"labels (expected as many labels as 28x28 images, at least one); {fix}")
        if y.max() > 9:
            raise DataError(f"data.dataset: fashion_mnist {split}-labels in {raw} hold labels outside 0..9; {fix}")

    def prep(xy):
        return _normalize(xy[0][:, None], 0.2860, 0.3530), xy[1].astype(np.int64)

    (trx, try_), (tex, tey) = prep(train), prep(test)
    return Dataset("fashion_mnist", trx, try_, tex, tey, 10)


def _cifar(root: Path, classes: int) -> Dataset:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
    name = f"cifar{classes}"
    _check_root(root)
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError:
        try:  # where the internet is reachable
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
        except Exception:
            raise DataError(f"data.dataset: {name} not found under {root} and could not be downloaded; "
                            f"put the python-version CIFAR archive's folder ({cls.base_folder}) in data.root") from None
    except Exception as e:   # present but broken: a truncated or foreign pickle
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(f"data.dataset: {name} files in {root / cls.base_folder} are unreadable ({reason}); "
                        "delete them and put the python-version CIFAR archive's folder there again") from None
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32)[:, None, None]
    std = np.array([0.2470, 0.2435, 0.2616], np.float32)[:, None, None]

    def prep(ds):
        return _normalize(ds.data.transpose(0, 3, 1, 2), mean, std), np.asarray(ds.targets, np.int64)

    (trx, try_), (tex, tey) = prep(train), prep(test)
    return Dataset(name, trx, try_, tex, tey, classes)


def _breast_cancer(seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    n_test = len(y) // 5
    mean, std = x[n_test:].mean(0), x[n_test:].std(0) + 1e-6   # statistics of the training part only
    x = (x - mean) / std
    return Dataset("breast_cancer", x[n_test:], y[n_test:], x[:n_test], y[:n_test], 2)


def _medmnist(path: str) -> Dataset:
    p = Path(path)
    expected = "expected a MedMNIST .npz file"
    if not p.is_file():
        raise DataError(f"data.medmnist_file: {path!r} does not exist; {expected}")
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        with np.load(p) as z:
            trx, try_, tex, tey = (np.asarray(z[k]) for k in keys)
    except Exception:
        raise DataError(f"data.medmnist_file: {path!r} is not a MedMNIST .npz "
                        "(expected train_images, train_labels, test_images, test_labels)") from None
    for split, x, y in (("train", trx, try_), ("test", tex, tey)):
        where = f"data.medmnist_file: {path!r} holds {split}_images of shape {list(x.shape)} and {split}_labels of shape {list(y.shape)}"
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)) or len(x) == 0 or 0 in x.shape:
            raise DataError(f"{where}; {expected} with at least one (n, H, W) or (n, H, W, 1 or 3) image per split")
        if y.ndim not in (1, 2) or len(y) != len(x) or (y.ndim == 2 and y.shape[1] < 1):
            raise DataError(f"{where}; {expected} with one label per image")
        if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{where} of types {x.dtype} and {y.dtype}; {expected} of numeric arrays")
        first = y.reshape(len(y), -1)[:, 0]
        if not np.all(np.isfinite(first)) or np.any(first < 0) or np.any(first != np.round(first)):
            raise DataError(f"{where}; {expected} whose labels are integers >= 0")

    def prep(x):
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return _normalize(x, 0.5, 0.5)

    try_, tey = try_.reshape(len(try_), -1)[:, 0].astype(np.int64), tey.reshape(len(tey), -1)[:, 0].astype(np.int64)
    if prep(trx[:1]).shape[1:] != prep(tex[:1]).shape[1:]:
        raise DataError(f"data.medmnist_file: {path!r} holds train_images of shape {list(trx.shape)} and test_images "
                        f"of shape {list(tex.shape)}; {expected} whose images have one shape")
    return Dataset(p.stem, prep(trx), try_, prep(tex), tey, int(max(try_.max(), tey.max())) + 1)


def synthetic(n: int, shape: tuple[int, ...], classes: int, seed: int) -> Dataset:
    """Gaussian class prototypes plus noise: learnable, tiny, and deterministic from the seed."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(classes, *shape)).astype(np.float32)
    n_test = max(classes, n // 4)

    def draw(m):
        y = rng.integers(0, classes, size=m)
        return (protos[y] + 0.8 * rng.normal(size=(m, *shape))).astype(np.float32), y.astype(np.int64)

    (trx, try_), (tex, tey) = draw(n), draw(n_test)
    return Dataset("synthetic", trx, try_, tex, tey, classes)


# values drawn at once while synthetic_federated is drawn (a chunk of clients' weights, of samples' features)
_BLOCK_VALUES = 1 << 21


def _proportional(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``weights`` (int64), rounded by largest remainder (some may get 0)."""
    share = total * (weights / weights.sum())
    out = np.floor(share).astype(np.int64)
    out[np.argsort(out - share, kind="stable")[: total - int(out.sum())]] += 1
    return out


def synthetic_federated(cfg: DataConfig, seed: int) -> Dataset:
    """FedProx's synthetic(alpha, beta) (Li et al. 2020; LEAF's "synthetic"): ``num_clients`` clients, each with a
    model and an input distribution of its own. For client k: u_k ~ N(0, alpha^2), W_k (classes x features) and
    b_k with entries ~ N(u_k, 1); B_k ~ N(0, beta^2), v_k with entries ~ N(B_k, 1); its samples x ~ N(v_k, Sigma),
    Sigma diagonal with Sigma_jj = j^-1.2, labelled y = argmax(W_k x + b_k). alpha and beta are standard
    deviations, as in FedProx's generator (``synthetic_alpha``, ``synthetic_beta``). (A shift u_k of every weight
    and bias moves every class's score alike, so alpha alone does not change the labels; beta does: clients whose
    inputs sit further from 0 see fewer classes.)

    ``synthetic_samples`` training samples, client k holding ``client_sizes`` of them (equal or lognormal, the
    same sizes an IID partition would give); each sample's client in ``train_owner`` (the ``natural`` partition).
    The test set: a quarter as many samples drawn the same way from the same clients, in proportion to their
    training sizes. Samples are grouped by client, in client order. Drawn in blocks of clients and samples, so
    100,000 clients take no per-client Python work beyond a loop step per block, and no (clients x classes x
    features) array is ever held."""
    check_partition(cfg, has_owners=True)
    n, k, c = cfg.synthetic_samples, cfg.num_clients, cfg.synthetic_classes
    shape = tuple(cfg.synthetic_shape)
    d = math.prod(shape)
    n_test = max(1, n // 4)
    if (n + n_test) * d > MAX_VALUES:
        raise ConfigError("data.synthetic_samples", n, f"a synthetic data set of at most {MAX_VALUES:,} values in all "
                          f"(1 GiB of float32; each sample has {d:,} values, data.synthetic_shape {list(shape)}, and "
                          f"a quarter as many test samples are drawn)")
    sizes = client_sizes(n, cfg, seed)
    test_sizes = _proportional(n_test, sizes.astype(np.float64))
    rng = np.random.default_rng([seed, 6])
    u = rng.normal(0.0, cfg.synthetic_alpha, k)
    big_b = rng.normal(0.0, cfg.synthetic_beta, k)
    sd = (np.arange(1, d + 1, dtype=np.float64) ** -0.6).astype(np.float32)    # sqrt(Sigma_jj)
    out = {split: (np.empty((m, d), np.float32), np.empty(m, np.int64), np.concatenate([[0], np.cumsum(s)]))
           for split, m, s in (("train", n, sizes), ("test", n_test, test_sizes))}
    # clients in chunks whose (clients x classes x features) weights and (samples x features) draws stay small
    # (one client's samples are drawn at once, however many)
    ends = np.cumsum(sizes + test_sizes)
    by_samples = np.flatnonzero(np.diff((ends - 1) // max(1, _BLOCK_VALUES // d))) + 1
    cuts = np.union1d(by_samples, np.arange(0, k + 1, max(1, _BLOCK_VALUES // (c * d)))).tolist()
    cuts = cuts if cuts[-1] == k else [*cuts, k]
    for a, b in zip(cuts[:-1], cuts[1:]):
        v = big_b[a:b, None].astype(np.float32) + rng.standard_normal((b - a, d), np.float32)
        w = u[a:b, None, None].astype(np.float32) + rng.standard_normal((b - a, c, d), np.float32)
        wt = w.transpose(0, 2, 1)
        bias = u[a:b, None].astype(np.float32) + rng.standard_normal((b - a, c), np.float32)
        for x_out, y_out, starts in out.values():
            lo, hi = starts[a], starts[b]
            m = np.diff(starts[a: b + 1])
            x = x_out[lo:hi]
            rng.standard_normal(dtype=np.float32, out=x)
            x *= sd
            x += v[np.repeat(np.arange(b - a), m)]
            first = starts[a:b] - lo
            for size in np.unique(m[m > 0]):    # clients of one size: one batched product (not one per sample)
                who = np.flatnonzero(m == size)
                rows = (first[who, None] + np.arange(size)).ravel()
                scores = np.matmul(x[rows].reshape(len(who), size, d), wt[who]) + bias[who, None, :]
                y_out[lo + rows] = scores.argmax(2).ravel()
    (trx, try_, _), (tex, tey, _) = out["train"], out["test"]
    owners = np.repeat(np.arange(k, dtype=np.int64), sizes)
    return Dataset("synthetic_federated", trx.reshape(n, *shape), try_, tex.reshape(n_test, *shape), tey, c, owners)


# name -> loader(data config, seed) -> Dataset. A user's own data set: register it with
# @DATASETS.register("name") in their module, or name it as package.module:loader.
DATASETS = Registry("dataset", "data.dataset")


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root) if cfg.root else default_root()


DATASETS.register("fashion_mnist", lambda cfg, seed: _fashion_mnist(_root(cfg)))
DATASETS.register("cifar10", lambda cfg, seed: _cifar(_root(cfg), 10))
DATASETS.register("cifar100", lambda cfg, seed: _cifar(_root(cfg), 100))
DATASETS.register("breast_cancer", lambda cfg, seed: _breast_cancer(seed))
DATASETS.register("medmnist", lambda cfg, seed: _medmnist(cfg.medmnist_file))
DATASETS.register("synthetic", lambda cfg, seed: synthetic(cfg.synthetic_samples, tuple(cfg.synthetic_shape),
                                                           cfg.synthetic_classes, seed))
DATASETS.register("synthetic_federated", synthetic_federated)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    ds = DATASETS.get(cfg.dataset, "data.dataset")(cfg, seed)
    if not isinstance(ds, Dataset):
        raise ConfigError("data.dataset", cfg.dataset, f"a loader returning a raysplit.data.Dataset (got {type(ds).__name__})")
    if cfg.classes is not None:
        ds = keep_classes(ds, cfg.classes)
    # copies, not views: a view would keep the whole loaded array alive in the driver
    if cfg.train_samples is not None:
        ds.train_x, ds.train_y = ds.train_x[: cfg.train_samples].copy(), ds.train_y[: cfg.train_samples].copy()
        if ds.train_owner is not None:
            ds.train_owner = ds.train_owner[: cfg.train_samples].copy()
    if cfg.test_samples is not None:
        ds.test_x, ds.test_y = ds.test_x[: cfg.test_samples].copy(), ds.test_y[: cfg.test_samples].copy()
    check_dataset(ds, cfg.dataset)
    return ds


def keep_classes(ds: Dataset, classes: list[int]) -> Dataset:
    """The samples of ``classes`` only, relabelled 0..k-1 in the order given."""
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c < ds.num_classes for c in classes):
        raise ConfigError("data.classes", classes, f"two or more distinct classes of the data set, in "
                          f"0..{ds.num_classes - 1}")
    relabel = np.full(ds.num_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    keep_train, keep_test = relabel[ds.train_y] >= 0, relabel[ds.test_y] >= 0
    ds.train_x, ds.train_y = ds.train_x[keep_train], relabel[ds.train_y[keep_train]]
    if ds.train_owner is not None:
        ds.train_owner = ds.train_owner[keep_train]
    ds.test_x, ds.test_y = ds.test_x[keep_test], relabel[ds.test_y[keep_test]]
    ds.num_classes = len(classes)
    return ds


def check_dataset(ds: Dataset, name: str) -> None:
    """What every party assumes of a data set: float32 inputs of one shape, as many int64 labels as inputs,
    each a class in 0..num_classes-1, and at least one training and one test sample."""
    k = ds.num_classes
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError("data.dataset", name, f"a loader whose Dataset has num_classes >= 1 (got {k!r})")
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        got = f"{split}_x {getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}, " \
              f"{split}_y {getattr(y, 'dtype', type(y).__name__)} {list(getattr(y, 'shape', []))}"
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)) or x.dtype != np.float32 \
                or y.dtype != np.int64 or x.ndim < 2 or y.ndim != 1:
            raise ConfigError("data.dataset", name, f"a loader returning float32 {split}_x of shape (n, features...) "
                              f"and int64 {split}_y of shape (n,) (got {got})")
        if len(x) != len(y) or len(y) == 0:
            raise ConfigError("data.dataset", name, f"a data set with as many {split} labels as {split} samples, "
                              f"at least one (got {got})")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise ConfigError("data.dataset", name, f"{split} labels that are classes of the model, in 0..{k - 1} "
                              f"(num_classes {k}; got labels {lo}..{hi})")
    owner = ds.train_owner
    if owner is not None and (not isinstance(owner, np.ndarray) or owner.shape != ds.train_y.shape
                              or not np.issubdtype(owner.dtype, np.integer)):
        raise ConfigError("data.dataset", name, f"a loader whose train_owner is None or one integer client id per "
                          f"training sample (got {getattr(owner, 'dtype', type(owner).__name__)} "
                          f"{list(getattr(owner, 'shape', []))} for {len(ds.train_y)} samples)")
    if ds.train_x.shape[1:] != ds.test_x.shape[1:]:
        raise ConfigError("data.dataset", name, f"train and test samples of one shape (got "
                          f"{list(ds.train_x.shape[1:])} and {list(ds.test_x.shape[1:])})")


# --------------------------------------------------------------------------- coarse labels (multi-task)

# class -> coarse group. Fashion-MNIST: tops (T-shirt, pullover, coat, shirt), trousers and dresses,
# shoes (sandal, sneaker, ankle boot), bags. CIFAR-10: vehicles, animals.
COARSE_GROUPS = {
    "fashion_mnist": [0, 1, 0, 1, 0, 2, 0, 2, 3, 2],
    "cifar10": [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
}


def coarse_groups(dataset: str, num_classes: int, groups: list[int] | None, where: str) -> list[int]:
    """The class -> group map of the multi-task topology's second task: the config's, else the data set's,
    else the first and second half of the classes."""
    if groups is None:
        groups = COARSE_GROUPS.get(dataset) or [int(c >= (num_classes + 1) // 2) for c in range(num_classes)]
    if len(groups) != num_classes or min(groups) < 0 or len(set(groups)) < 2:
        raise ConfigError(where, groups, f"a group id >= 0 for each of the {num_classes} classes, at least 2 groups")
    return list(groups)
