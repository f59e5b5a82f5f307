"""Singh et al.'s crossover: bytes per client of SplitNN vs FedAvg as the number of clients grows.

A fixed data set of D samples is split evenly over N clients. Per epoch, a SplitNN client moves
(D/N) x (activations + gradients + labels) plus the client-segment hand-off; a FedAvg client moves the
whole model twice per round whatever its data. So SplitNN's bytes per client fall like 1/N and FedAvg's
stay flat: past some N* split learning is cheaper, and N* grows with D and shrinks with the model size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.cost_model import fedavg_costs, splitnn_costs


@dataclass(frozen=True)
class Scenario:
    label: str
    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    cut: str
    total_samples: int


# One epoch of SplitNN against one FedAvg round of one local epoch: the same pass over the data.
MODELS_AT_THEIR_DATA = (
    Scenario("FmnistCNN, Fashion-MNIST 60k, cut pool2", "fmnist_cnn", (1, 28, 28), 10, "pool2", 60_000),
    Scenario("VGG-16, CIFAR-10 50k, cut relu1", "vgg16", (3, 32, 32), 10, "relu1", 50_000),
    Scenario("ResNet-50, CIFAR-100 50k, cut relu", "resnet50", (3, 32, 32), 100, "relu", 50_000),
)
ONE_MODEL_MORE_DATA = tuple(
    Scenario(f"VGG-16, {d // 1000}k images, cut relu1", "vgg16", (3, 32, 32), 10, "relu1", d)
    for d in (5_000, 50_000, 500_000))


def bytes_per_client(s: Scenario, clients: int, epochs: int = 1, batch_size: int = 2,
                     optimizer: str = "sgd_momentum") -> tuple[int, int]:
    """(SplitNN, FedAvg) bytes per client, sent + received, for ``epochs`` epochs / rounds.

    Neither depends on the batch size; a small one keeps the one-off FLOP count of the model cheap.
    Samples per client are whole: D // N (the remainder is dropped), hence the steps at large N.
    """
    n = s.total_samples // clients
    common = dict(model=s.model, input_shape=s.input_shape, num_classes=s.num_classes, samples_per_client=n,
                  num_clients=clients, batch_size=batch_size)
    split = splitnn_costs(cuts=[s.cut], epochs=epochs, optimizer=optimizer, **common).client_bytes
    fed = fedavg_costs(rounds=epochs, **common).client_bytes
    return split, fed


def crossover_clients(s: Scenario, **kwargs) -> int | None:
    """The fewest clients at which SplitNN needs no more bytes per client than FedAvg (None: never).

    SplitNN's bytes per client only fall as N grows (from N = 2 on, when the hand-off starts), so a
    bisection over N finds the boundary.
    """
    def split_wins(n: int) -> bool:
        split, fed = bytes_per_client(s, n, **kwargs)
        return split <= fed

    if split_wins(1):
        return 1
    lo, hi = 1, s.total_samples          # split_wins(lo) is False; look for the first True in (lo, hi]
    if not split_wins(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if split_wins(mid) else (mid, hi)
    return hi


def _client_grid(total_samples: int, top: int = 10_000) -> list[int]:
    return sorted({int(round(x)) for x in np.logspace(0, np.log10(min(top, total_samples)), 90)})


def plot_crossover(out: str | Path = "analysis/figures/crossover.png") -> Path:
    # pyplot here, not at the top: bytes_per_client and crossover_clients need no figures
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.8), sharey=True)
    # (title, scenarios, where each N* label sits relative to its point, in points)
    panels = (("(a) three models, each on its own data set", MODELS_AT_THEIR_DATA, [(8, 8), (-80, -18), (8, 8)]),
              ("(b) VGG-16: more data moves the crossover right", ONE_MODEL_MORE_DATA, [(8, 8), (8, -18), (8, 8)]))
    for ax, (title, scenarios, label_offsets) in zip(axes, panels):
        same_model = len({s.model for s in scenarios}) == 1
        for i, (color, s) in enumerate(zip(("tab:blue", "tab:orange", "tab:green"), scenarios)):
            grid = _client_grid(s.total_samples)
            split, fed = zip(*(bytes_per_client(s, n) for n in grid))
            ax.plot(grid, [b / 1e9 for b in split], color=color, lw=2, label=s.label)
            if not same_model:
                ax.plot(grid, [b / 1e9 for b in fed], color=color, lw=2, ls="--")
            elif i == 0:                     # one model: FedAvg's line is the same whatever the data size
                ax.axhline(fed[0] / 1e9, color="black", lw=2, ls="--")
            n_star = crossover_clients(s)
            if n_star is not None:
                y = bytes_per_client(s, n_star)[1] / 1e9
                ax.plot([n_star], [y], "o", color=color, ms=9, mec="black", zorder=5)
                ax.annotate(f"N* = {n_star:,}", (n_star, y), textcoords="offset points",
                            xytext=label_offsets[i], fontsize=10, color=color, fontweight="bold")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of clients N (data split evenly; log scale)", fontsize=11)
        ax.set_title(title, fontsize=12)
        ax.grid(True, which="major", alpha=0.3)
        style = [Line2D([], [], color="gray", lw=2, label="SplitNN (1 epoch)"),
                 Line2D([], [], color="gray", lw=2, ls="--", label="FedAvg (1 round, 1 local epoch)"),
                 Line2D([], [], color="gray", marker="o", ls="", mec="black",
                        label="crossover: SplitNN cheaper from here on")]
        handles = ax.get_legend_handles_labels()[0] + style
        ax.legend(handles=handles, fontsize=9, loc="upper right", framealpha=0.95)
    axes[0].set_ylabel("bytes per client, sent + received (GB; log scale)", fontsize=11)
    fig.suptitle("Communication per client, SplitNN vs FedAvg (Singh et al.): FedAvg is flat in N, "
                 "SplitNN falls like 1/N", fontsize=13)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
