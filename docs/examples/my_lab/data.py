"""A data set: a loader (data config, seed) -> raysplit.data.Dataset of float32 inputs and int64 labels."""
import numpy as np

from raysplit.data import DATASETS, Dataset


@DATASETS.register("stripes")
def stripes(cfg, seed):
    """8x8 images of horizontal (class 0) or vertical (class 1) stripes in noise."""
    rng = np.random.default_rng(seed)

    def draw(n):
        y = rng.integers(0, 2, size=n)
        lines = (np.arange(8) + rng.integers(0, 2, size=(n, 1))) % 2           # 0/1 lines, random phase
        x = np.where(y[:, None, None] == 0, lines[:, :, None], lines[:, None, :])   # along rows or columns
        x = x + 0.5 * rng.normal(size=(n, 8, 8))
        return x[:, None].astype(np.float32), y.astype(np.int64)

    (train_x, train_y), (test_x, test_y) = draw(cfg.synthetic_samples), draw(cfg.synthetic_samples // 4)
    return Dataset("stripes", train_x, train_y, test_x, test_y, num_classes=2)
