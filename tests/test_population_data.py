"""Data for large populations: synthetic_federated (FedProx's synthetic(alpha, beta)), the natural partition,
and heavy-tailed (lognormal) client sizes. No Ray: the data is drawn and split in this process."""
from __future__ import annotations

import numpy as np
import pytest

from raysplit import config, data
from raysplit.errors import ConfigError
from raysplit.partition import client_sizes

from test_bad_input import validate_refuses, write_config


def fed(**kw) -> config.DataConfig:
    base = dict(dataset="synthetic_federated", partition="natural", num_clients=50, synthetic_samples=2000,
                synthetic_shape=[60], synthetic_classes=10)
    return config.DataConfig(**{**base, **kw})


def label_skew(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> float:
    """Mean total-variation distance between each client's label histogram and the whole set's."""
    whole = np.bincount(labels, minlength=classes) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - whole).sum() for p in parts]))


def test_synthetic_federated_is_seeded_and_has_the_requested_sizes():
    c = fed(sizes="lognormal", size_sigma=1.0)
    a, b, other = data.load_dataset(c, 3), data.load_dataset(c, 3), data.load_dataset(c, 4)
    for f in ("train_x", "train_y", "test_x", "test_y", "train_owner"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.train_x, other.train_x)
    assert a.train_x.shape == (2000, 60) and a.train_x.dtype == np.float32 and a.num_classes == 10
    assert a.test_x.shape == (500, 60) and a.train_owner.dtype == np.int64
    sizes = np.bincount(a.train_owner, minlength=50)
    assert sizes.min() >= 1 and sizes.sum() == 2000
    np.testing.assert_array_equal(sizes, client_sizes(2000, c, 3))          # the sizes an IID split would give
    assert (np.diff(a.train_owner) >= 0).all()                               # grouped by client, in client order
    # the natural partition is the owners
    parts = data.partition(a.train_y, c, 3, a.train_owner)
    assert len(parts) == 50
    for k, p in enumerate(parts):
        np.testing.assert_array_equal(p, np.flatnonzero(a.train_owner == k))


def test_clients_differ_and_beta_spreads_their_inputs():
    c = fed(num_clients=100, synthetic_samples=20000, synthetic_alpha=1.0, synthetic_beta=1.0)
    ds = data.load_dataset(c, 0)
    own = data.partition(ds.train_y, c, 0, ds.train_owner)
    pooled = data.partition(ds.train_y, config.DataConfig(num_clients=100), 0)   # the same samples, split IID
    # each client's labels are its own model's: far from the whole set's (an IID split of the same samples is close)
    assert label_skew(ds.train_y, own, 10) > 0.5 > 0.2 > label_skew(ds.train_y, pooled, 10)
    assert len(np.unique(ds.train_y)) == 10

    def spread(beta: float) -> float:      # how far apart the clients' mean inputs are (sd over clients)
        d = data.load_dataset(fed(num_clients=100, synthetic_samples=20000, synthetic_beta=beta), 0)
        return float(np.std([d.train_x[d.train_owner == k, 0].mean() for k in range(100)]))

    assert spread(4.0) > 2.5 * spread(0.0)


def test_a_hundred_thousand_clients():
    c = fed(num_clients=100_000, synthetic_samples=100_000, synthetic_shape=[8], sizes="lognormal")
    ds = data.load_dataset(c, 0)        # every client one sample: lognormal sizes have nothing to spread
    np.testing.assert_array_equal(ds.train_owner, np.arange(100_000))
    assert len(ds.test_y) == 25_000 and len(data.partition(ds.train_y, c, 0, ds.train_owner)) == 100_000


def test_lognormal_sizes_are_heavy_tailed_and_seeded():
    c = config.DataConfig(num_clients=1000, sizes="lognormal", size_sigma=1.5)
    s = client_sizes(100_000, c, 0)
    assert s.sum() == 100_000 and s.min() >= 1 and s.max() / np.median(s) > 20
    np.testing.assert_array_equal(s, client_sizes(100_000, c, 0))
    assert not np.array_equal(s, client_sizes(100_000, c, 1))
    equal = client_sizes(100_000, config.DataConfig(num_clients=1000), 0)
    assert set(equal.tolist()) == {100}
    assert client_sizes(1000, c, 0).tolist() == [1] * 1000      # as many clients as samples: one each
    # the IID partition gives exactly these sizes, every sample once
    labels = np.zeros(100_000, np.int64)
    parts = data.partition(labels, config.DataConfig(num_clients=1000, partition="iid", sizes="lognormal",
                                                     size_sigma=1.5), 0)
    assert [len(p) for p in parts] == s.tolist()
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(100_000))


def test_subsets_keep_each_sample_with_its_owner():
    c = fed(num_clients=10, synthetic_samples=400, train_samples=300)
    full, sub = data.load_dataset(fed(num_clients=10, synthetic_samples=400), 0), data.load_dataset(c, 0)
    np.testing.assert_array_equal(sub.train_owner, full.train_owner[:300])
    c = fed(num_clients=10, synthetic_samples=400, classes=[0, 1])
    two = data.load_dataset(c, 0)
    np.testing.assert_array_equal(two.train_owner, full.train_owner[np.isin(full.train_y, [0, 1])])
    c = fed(num_clients=10, synthetic_samples=400, train_samples=200)   # clients 5..9 are left out
    ds = data.load_dataset(c, 0)
    with pytest.raises(ConfigError, match=r"^data.partition: 'natural' .*client 5 of the data set's 10 holds none"):
        data.partition(ds.train_y, c, 0, ds.train_owner)


FED = {"name": "fed", "algorithm": "fedavg",
       "data": {"dataset": "synthetic_federated", "partition": "natural", "num_clients": 20, "synthetic_samples": 200,
                "synthetic_shape": [60], "synthetic_classes": 10},
       "model": {"name": "mlp", "cut_layers": ["relu1"]}}


@pytest.mark.parametrize("sets, pattern", [
    (["data.partition=iid"], r"^raysplit: error: data.partition: 'iid' .*natural for data.dataset synthetic_federated"),
    (["data.dataset=synthetic", "data.synthetic_shape=[60]"], r"data.partition: 'natural' .*iid, dirichlet or shards "
                                                              r"for data.dataset synthetic"),
    (["data.num_clients=201"], r"data.num_clients: 201 .*at most the number of training samples \(200\)"),
    (["data.dataset=synthetic", "data.synthetic_shape=[60]", "data.partition=dirichlet", "data.sizes=lognormal"],
     r"data.sizes: 'lognormal' .*equal for data.partition dirichlet"),
    (["data.size_sigma=0"], r"data.size_sigma: 0"),
    (["data.sizes=heavy"], r"data.sizes: 'heavy' .*equal, lognormal"),
    (["data.synthetic_beta=-1"], r"data.synthetic_beta: -1"),
    (["data.synthetic_samples=4000000"], r"data.synthetic_samples: 4000000 .*1 GiB"),
])
def test_bad_population_data_is_one_line(tmp_path, capsys, sets, pattern):
    path = write_config(tmp_path, FED)
    validate_refuses(capsys, path, *sets, pattern=pattern)


def test_a_host_holds_its_clients_indices_packed():
    import pickle

    from raysplit.host import ClientIndices

    parts = [np.arange(3 * k, 3 * k + 1 + k % 3) for k in range(10)]
    held = ClientIndices(range(1, 10, 2), parts[1::2])
    assert list(held) == [1, 3, 5, 7, 9] and len(held) == 5 and 3 in held and 4 not in held
    again = pickle.loads(pickle.dumps(held))
    for k in held:
        np.testing.assert_array_equal(again[k], parts[k])
    with pytest.raises(KeyError):
        again[4]
    assert not held[1].flags.writeable and not ClientIndices([], [])
