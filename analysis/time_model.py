"""Analytic time model: how long SplitNN, FedAvg and large-batch SGD take on a network, in closed form.

The bytes and FLOPs are the cost model's (analysis/cost_model.py); the network and its conventions are the
simulator's (raysplit/network.py: a message costs the sum of its two ends' latencies plus its bytes at the
slower of the sender's uplink and the receiver's downlink; sequential turns add up; parallel rounds are
phases that wait for the slowest client, with the server's link shared by every client). All clients alike
(the config's ``network.client``). ``tests/test_cost_agreement.py`` checks that these closed forms equal the
simulated time of real runs, as it checks the bytes.

- SplitNN (sequential; N clients of n samples, s = ceil(n/b) steps a turn, R epochs): every turn sends s
  activation and s label messages up and s gradient messages down; R*N - 1 hand-offs (none into the very
  first turn) of two messages each (weights, optimizer state), client to client or through the server;
  the client's and the server's compute add up.
      T = R*N*(3 s L + 8 (A + 8n) / up + 8 A / down + C_client + C_server) + (R N - 1) * handoff
  with L = latency(client) + latency(server), up = min(client up, server down), down = min(server up,
  client down), A the activation bytes of a turn.
- FedAvg, per round: broadcast, local training (clients at once), upload.
      T = 2 L + 8 W max(1/client down, N/server up) + 8 W max(1/client up, N/server down) + C_client
- Large-batch SGD, per epoch (s steps): every step a gradient up and the weights down.
      T = 2 s L + 8 s W max(1/client down, N/server up) + 8 s G max(1/client up, N/server down) + C_client
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis.cost_model import fedavg_costs, large_batch_sgd_costs, segment_costs, splitnn_costs
from raysplit.config import LinkConfig, NetworkConfig
from raysplit.network import Link, Network, describe


@dataclass(frozen=True)
class Time:
    comm_s: float
    compute_s: float

    @property
    def total_s(self) -> float:
        return self.comm_s + self.compute_s


def links(network: NetworkConfig | None = None) -> tuple[Link, Link]:
    """(client, server) links of a network config (default: raysplit's clinic default)."""
    net = Network(network or NetworkConfig(), num_clients=0)
    return net.roles["client"], net.roles["server"]


def _phase(latency: float, nbytes_each: float, own_bps: float, shared_bps: float, clients: int) -> float:
    return latency + 8 * nbytes_each * max(1 / own_bps, clients / shared_bps)


def splitnn_time(model: str, input_shape: Sequence[int], num_classes: int, cuts: Sequence[str | int],
                 samples_per_client: int, num_clients: int, epochs: int, batch_size: int,
                 network: NetworkConfig | None = None, *, optimizer: str = "sgd_momentum", handoff: str = "peer",
                 bytes_per_element: int = 4) -> Time:
    c, s = links(network)
    costs = splitnn_costs(model, input_shape, num_classes, cuts, samples_per_client, num_clients, epochs, batch_size,
                          bytes_per_element=bytes_per_element, optimizer=optimizer, handoff=handoff)
    n, N, R = samples_per_client, num_clients, epochs
    steps = math.ceil(n / batch_size)
    lat = c.latency_s + s.latency_s
    up, down = min(c.up_bps, s.down_bps), min(s.up_bps, c.down_bps)
    act = costs.client_sent["activation"] / R                  # one turn's activations (= its gradients)
    labels = costs.client_sent["labels"] / R
    turn = 3 * steps * lat + 8 * (act + labels) / up + 8 * act / down
    handed = (costs.client_sent["weights"] + costs.client_sent["optimizer_state"]) / R if N > 1 else 0
    if handoff == "peer":
        one_handoff = 2 * 2 * c.latency_s + 8 * handed / min(c.up_bps, c.down_bps)
    else:                                                       # to the server, then on to the next client
        one_handoff = 2 * 2 * lat + 8 * handed / up + 8 * handed / down
    handoffs = R * N - 1 if N > 1 else 0
    compute = N * (costs.client_flops / c.flops_per_s + costs.server_flops / s.flops_per_s)
    return Time(R * N * turn + handoffs * one_handoff, compute)


def fedavg_time(model: str, input_shape: Sequence[int], num_classes: int, samples_per_client: int,
                num_clients: int, rounds: int, batch_size: int, network: NetworkConfig | None = None, *,
                local_epochs: int = 1, bytes_per_element: int = 4) -> Time:
    c, s = links(network)
    costs = fedavg_costs(model, input_shape, num_classes, samples_per_client, num_clients, rounds, batch_size,
                         local_epochs=local_epochs, bytes_per_element=bytes_per_element)
    w, N, lat = costs.client_sent["weights"] / rounds, num_clients, c.latency_s + s.latency_s
    per_round = _phase(lat, w, c.down_bps, s.up_bps, N) + _phase(lat, w, c.up_bps, s.down_bps, N)
    return Time(rounds * per_round, costs.client_flops / c.flops_per_s)


def large_batch_sgd_time(model: str, input_shape: Sequence[int], num_classes: int, samples_per_client: int,
                         num_clients: int, epochs: int, batch_size: int, network: NetworkConfig | None = None, *,
                         bytes_per_element: int = 4) -> Time:
    c, s = links(network)
    costs = large_batch_sgd_costs(model, input_shape, num_classes, samples_per_client, num_clients, epochs,
                                  batch_size, bytes_per_element=bytes_per_element)
    steps = epochs * math.ceil(samples_per_client / batch_size)
    w, g = costs.client_received["weights"] / steps, costs.client_sent["gradient_update"] / steps
    N, lat = num_clients, c.latency_s + s.latency_s
    per_step = _phase(lat, w, c.down_bps, s.up_bps, N) + _phase(lat, g, c.up_bps, s.down_bps, N)
    return Time(steps * per_step, costs.client_flops / c.flops_per_s)


# --------------------------------------------------------------------------- the crossover in time

def model_size(model: str, input_shape: Sequence[int], num_classes: int) -> int:
    return segment_costs(model, input_shape, num_classes, (), batch_size=2).states[0].num_parameters


# in every panel of the time crossover: colour and line style the method, marker the model
METHOD_STYLE = {"SplitNN": dict(color="tab:blue", ls="-"), "FedAvg": dict(color="tab:red", ls="--")}
MODEL_MARKER = {"fmnist_cnn": "o", "vgg16": "^", "resnet50": "s"}
CROSSOVER_COLOR = "gray"


def _mark_crossover(ax, xs, split, fed, what: str = "") -> None:
    """A dotted line where SplitNN becomes the faster (first x from which it stays no slower)."""
    wins = [i for i in range(len(xs)) if all(a <= b for a, b in zip(split[i:], fed[i:]))]
    if wins and wins[0] > 0:
        x = xs[wins[0]]
        ax.axvline(x, color=CROSSOVER_COLOR, lw=1, ls=":")
        ax.annotate(f"SplitNN faster from {x:,}{what}", (x, fed[wins[0]]), fontsize=8, color=CROSSOVER_COLOR,
                    xytext=(4, -14), textcoords="offset points")


def plot_time_crossover(out="crossover_time.png", network: NetworkConfig | None = None):
    """Write time_crossover_figure to ``out``; return the path."""
    import matplotlib.pyplot as plt

    fig = time_crossover_figure(network)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def time_crossover_figure(network: NetworkConfig | None = None):
    """Time of one epoch (SplitNN) vs one round of one local epoch (FedAvg), as the number of clients, the data
    per client, the model and the client uplink vary; each panel varies one from a Fashion-MNIST baseline.
    Colour (and line style) means the method in every panel, the marker the model (METHOD_STYLE, MODEL_MARKER)."""
    # pyplot here, not at the top: the closed forms above (raysplit costs query, the tests) need no figures
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    network = network or NetworkConfig()
    base = dict(model="fmnist_cnn", input_shape=(1, 28, 28), num_classes=10, cut="pool1", n=600, clients=100)
    models = (("fmnist_cnn", (1, 28, 28), 10, "pool1"), ("vgg16", (3, 32, 32), 10, "relu1"),
              ("resnet50", (3, 32, 32), 100, "relu"))

    def both(model=base["model"], shape=base["input_shape"], classes=base["num_classes"], cut=base["cut"],
             n=base["n"], clients=base["clients"], net=network):
        split = splitnn_time(model, shape, classes, [cut], n, clients, 1, 64, net).total_s
        fed = fedavg_time(model, shape, classes, n, clients, 1, 64, net).total_s
        return split, fed

    def with_uplink(mbps: float) -> NetworkConfig:
        c = network.client
        return NetworkConfig(client=LinkConfig(mbps, c.down_mbps, c.latency_ms, c.flops_per_s), server=network.server,
                             others=network.others)

    panels = (
        ("samples per client (100 clients)", [int(x) for x in np.unique(np.logspace(1, 4, 13).round())],
         lambda v: both(n=v)),
        ("client uplink (Mbit/s; 100 clients x 600 samples)", [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
         lambda v: both(net=with_uplink(v))),
    )
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    # (a) Singh et al.'s setting in time: a fixed data set split over more and more clients
    ax = axes[0]
    for (model, shape, classes, cut), total in ((models[0], 60_000), (models[1], 50_000)):
        xs = [int(x) for x in np.unique(np.logspace(0, np.log10(total // 10), 14).round())]
        split, fed = zip(*(both(model=model, shape=shape, classes=classes, cut=cut, n=total // x, clients=x) for x in xs))
        ax.plot(xs, split, marker=MODEL_MARKER[model], **METHOD_STYLE["SplitNN"],
                label=f"SplitNN, {model}, {total // 1000}k samples")
        ax.plot(xs, fed, marker=MODEL_MARKER[model], **METHOD_STYLE["FedAvg"],
                label=f"FedAvg, {model}, {total // 1000}k samples")
        _mark_crossover(ax, xs, split, fed, f" ({model})")
    ax.set_xlabel("number of clients N (a fixed data set split evenly)")
    ax.legend(fontsize=7)
    for ax, (xlabel, xs, fn) in zip(axes[1:3], panels):
        split, fed = zip(*(fn(x) for x in xs))
        ax.plot(xs, split, marker=MODEL_MARKER["fmnist_cnn"], **METHOD_STYLE["SplitNN"],
                label="SplitNN, fmnist_cnn, 1 epoch (sequential turns)")
        ax.plot(xs, fed, marker=MODEL_MARKER["fmnist_cnn"], **METHOD_STYLE["FedAvg"],
                label="FedAvg, fmnist_cnn, 1 round of 1 local epoch")
        _mark_crossover(ax, xs, split, fed)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    ax = axes[3]
    names, split, fed, sizes = [], [], [], []
    for model, shape, classes, cut in models:
        s_, f_ = both(model=model, shape=shape, classes=classes, cut=cut)
        names.append(model)
        sizes.append(model_size(model, shape, classes))
        split.append(s_)
        fed.append(f_)
    order = np.argsort(sizes)
    xs = [sizes[i] for i in order]
    ax.plot(xs, [split[i] for i in order], **METHOD_STYLE["SplitNN"], label="SplitNN")
    ax.plot(xs, [fed[i] for i in order], **METHOD_STYLE["FedAvg"], label="FedAvg")
    for i in order:
        for value, method in ((split[i], "SplitNN"), (fed[i], "FedAvg")):
            ax.plot([sizes[i]], [value], ls="none", marker=MODEL_MARKER[names[i]], color=METHOD_STYLE[method]["color"])
        ax.annotate(names[i], (sizes[i], fed[i]), fontsize=8, xytext=(4, -12), textcoords="offset points")
    ax.legend(fontsize=7)
    ax.set_xlabel("model size (parameters; 100 clients x 600 samples, each model at its own cut)")
    axes[0].set_ylabel("simulated time of one pass over the data (s, log scale)")
    c, s_ = network.client.flops_per_s, network.server.flops_per_s
    speed = f"clients {c:.3g}, server {s_:.3g} FLOP/s" if c and s_ else "measured FLOP/s"
    fig.suptitle(f"SplitNN (1 epoch) vs FedAvg (1 round, 1 local epoch) in time, analytic (analysis/time_model.py): "
                 f"{describe(network)}; {speed}", fontsize=11)
    fig.tight_layout()
    return fig
