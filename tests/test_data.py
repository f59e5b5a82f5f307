import numpy as np
import pytest

from raysplit import config, data
from raysplit.errors import ConfigError, DataError


def cfg(**kw):
    return config.DataConfig(**kw)


def test_fashion_mnist_loads_from_the_debian_package(tmp_path):
    ds = data.load_dataset(cfg(dataset="fashion_mnist", root=str(tmp_path)), seed=0)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == np.float32 and ds.num_classes == 10
    assert sorted(np.unique(ds.train_y)) == list(range(10))
    assert abs(float(ds.train_x.mean())) < 0.05          # normalized


def test_missing_fashion_mnist_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_dataset(cfg(dataset="fashion_mnist", root=str(tmp_path)), seed=0)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_partitions_cover_every_sample_once_and_are_reproducible(kind):
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    c = cfg(num_clients=20, partition=kind, alpha=0.3)
    parts = data.partition(labels, c, seed=1)
    assert len(parts) == 20 and all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(5000))
    assert all(np.array_equal(a, b) for a, b in zip(parts, data.partition(labels, c, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, data.partition(labels, c, seed=2)))


def test_dirichlet_skews_labels_more_than_iid():
    labels = np.random.default_rng(0).integers(0, 10, 20000)

    def mean_classes(kind):
        parts = data.partition(labels, cfg(num_clients=10, partition=kind, alpha=0.1), seed=0)
        return np.mean([len(np.unique(labels[p])) for p in parts])

    assert mean_classes("iid") == 10 and mean_classes("dirichlet") < 7


def test_more_clients_than_samples():
    with pytest.raises(ConfigError, match=r"data.num_clients: 11 .* at most the number of training samples \(10\)"):
        data.partition(np.zeros(10, np.int64), cfg(num_clients=11), seed=0)


def test_batches_are_a_seeded_permutation():
    idx = np.arange(100, 150)
    b = data.batches(idx, 16, seed=0, round_=0, client=3)
    assert [len(x) for x in b] == [16, 16, 16, 2]
    assert sorted(np.concatenate(b)) == list(idx)
    assert all(np.array_equal(x, y) for x, y in zip(b, data.batches(idx, 16, 0, 0, 3)))
    assert not np.array_equal(np.concatenate(b), np.concatenate(data.batches(idx, 16, 0, 1, 3)))


def test_breast_cancer_is_tabular():
    ds = data.load_dataset(cfg(dataset="breast_cancer"), seed=0)
    assert ds.train_x.shape[1:] == (30,) and ds.num_classes == 2 and len(ds.train_y) + len(ds.test_y) == 569


def test_a_subset_of_classes_relabelled_in_order():
    from raysplit.config import from_dict
    from raysplit.data import load_dataset
    from raysplit.errors import ConfigError

    cfg = from_dict({"data": {"dataset": "synthetic", "synthetic_samples": 200, "synthetic_classes": 4}})
    full = load_dataset(cfg.data, 0)
    cfg.data.classes = [2, 0]
    two = load_dataset(cfg.data, 0)
    assert two.num_classes == 2 and len(two.train_y) == int(np.isin(full.train_y, [2, 0]).sum())
    np.testing.assert_array_equal(two.train_x, full.train_x[np.isin(full.train_y, [2, 0])])
    np.testing.assert_array_equal(two.train_y, np.where(full.train_y[np.isin(full.train_y, [2, 0])] == 2, 0, 1))
    cfg.data.classes = [0, 4]
    with pytest.raises(ConfigError, match=r"^data.classes: \[0, 4\] .*in 0..3"):
        load_dataset(cfg.data, 0)
