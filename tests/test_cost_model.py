"""The analytic cost model: FLOPs by hand, exact byte counts, conventions shared with the runtime."""
from __future__ import annotations

import math

import pytest
import torch

from analysis import cost_model as cm
from analysis import costs
from analysis import paper
from analysis.crossover import Scenario, bytes_per_client, crossover_clients
from analysis.paper_tables import PerUnitFit, SplitFit, table1_fits
from raysplit.accounting import count_flops, payload_nbytes
from raysplit.errors import ConfigError
from raysplit.models import build_model, cut_positions, split_model

FMNIST = dict(model="fmnist_cnn", input_shape=(1, 28, 28), num_classes=10)
FMNIST_PARAMS = (32 * 1 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)   # 421,642
FMNIST_CLIENT_PARAMS = (32 * 1 * 9 + 32) + (64 * 32 * 9 + 64)                                    # conv1, conv2


# ---------------------------------------------------------------------------------------------- FLOPs

def test_mlp_flops_counted_by_hand():
    # mlp(20 features): Linear 20->64, 64->32, 32->3. Forward 2*in*out each; backward 2*in*out for the
    # weight gradient plus 2*in*out for the input gradient, except at the first layer (raw input).
    layers = [(20, 64), (64, 32), (32, 3)]
    fwd = sum(2 * i * o for i, o in layers)
    bwd_no_input_grad = 2 * 20 * 64 + sum(4 * i * o for i, o in layers[1:])
    seg = cm.segment_costs("mlp", (20,), 3, (), batch_size=8)
    assert seg.flops(1) == (fwd, bwd_no_input_grad)
    assert seg.flops(37) == (37 * fwd, 37 * bwd_no_input_grad)
    with_grad = cm.segment_costs("mlp", (20,), 3, (), batch_size=8, first_input_grad=True)
    assert with_grad.flops(1) == (fwd, sum(4 * i * o for i, o in layers))


def test_flops_scale_with_samples_not_batch_size():
    model = build_model("fmnist_cnn", (1, 28, 28), 10)
    by_hand = count_flops(model, [torch.zeros(4, 1, 28, 28)], input_grad=False)
    assert cm.segment_costs(**FMNIST, batch_size=4).flops(4) == by_hand
    assert cm.segment_costs(**FMNIST, batch_size=1).flops(10) == cm.segment_costs(**FMNIST, batch_size=4).flops(10)


@pytest.mark.parametrize("cuts", [["conv1"], ["pool2"], ["pool1", "fc1"]])
def test_splitnn_client_plus_server_equals_whole_model(cuts):
    run = dict(**FMNIST, samples_per_client=50, num_clients=3, batch_size=16)
    split = cm.splitnn_costs(cuts=cuts, epochs=2, **run)
    fed = cm.fedavg_costs(rounds=2, **run)
    assert split.client_flops + split.server_flops == fed.client_flops


def test_server_segment_counts_the_input_gradient():
    model = build_model("fmnist_cnn", (1, 28, 28), 10)
    client, server = split_model(model, cut_positions(model, ["pool2"]))
    x = torch.zeros(16, 64, 7, 7)
    with_grad, without = count_flops(server, [x], True), count_flops(server, [x], False)
    split = cm.splitnn_costs(cuts=["pool2"], samples_per_client=16, num_clients=2, epochs=1, batch_size=16, **FMNIST)
    assert split.server_flops == sum(with_grad) > sum(without)


def test_batch_norm_and_relu_cost_no_flops():
    flops = cm.segment_costs("vgg11", (3, 32, 32), 10, ["conv1"], batch_size=2).batch_flops
    assert cm.segment_costs("vgg11_nobn", (3, 32, 32), 10, ["conv1"], batch_size=2).batch_flops == flops
    assert cm.segment_costs("vgg11", (3, 32, 32), 10, ["relu1"], batch_size=2).batch_flops == flops


# ---------------------------------------------------------------------------------------------- bytes

def test_fedavg_bytes_are_twice_the_parameters():
    run = dict(**FMNIST, samples_per_client=600, num_clients=10, batch_size=64)
    one = cm.fedavg_costs(rounds=1, **run)
    assert one.client_bytes_sent == one.client_bytes_received == FMNIST_PARAMS * 4 == 1_686_568
    assert one.client_bytes == 2 * FMNIST_PARAMS * 4
    assert cm.fedavg_costs(rounds=3, **run).client_bytes == 3 * 2 * FMNIST_PARAMS * 4
    # bytes per round do not depend on the data a client holds
    assert cm.fedavg_costs(rounds=1, **{**run, "samples_per_client": 6}).client_bytes == one.client_bytes


def test_fedavg_bytes_count_float_state_only_with_batch_norm():
    model = build_model("vgg11", (3, 32, 32), 10)
    floats = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    params = sum(p.numel() for p in model.parameters())
    c = cm.fedavg_costs("vgg11", (3, 32, 32), 10, samples_per_client=2, num_clients=2, rounds=1, batch_size=2)
    assert c.client_bytes_sent == floats > params * 4      # running means/vars, not num_batches_tracked


def test_splitnn_bytes_exact_and_linear_in_samples():
    def costs(n):
        return cm.splitnn_costs(cuts=["pool2"], samples_per_client=n, num_clients=5, epochs=2, batch_size=64, **FMNIST)

    c = costs(100)
    activation = 2 * 100 * 64 * 7 * 7 * 4
    handoff = 2 * FMNIST_CLIENT_PARAMS * 4                 # 2 epochs x client weights; momentum is as big
    assert c.client_sent == {"activation": activation, "labels": 2 * 100 * 8, "weights": handoff,
                             "optimizer_state": handoff}
    assert c.client_received == {"gradient": activation, "weights": handoff, "optimizer_state": handoff}
    fixed = 2 * 2 * handoff                                # sent + received, weights + momentum
    assert costs(300).client_bytes - fixed == 3 * (c.client_bytes - fixed)


def test_handoff_matches_real_state_dicts():
    # the client segment of VGG-11 (conv1, bn1, relu1) after one real training step
    model = build_model("vgg11", (3, 32, 32), 10, seed=0)
    segment = split_model(model, cut_positions(model, ["relu1"]))[0]
    size = cm.segment_costs("vgg11", (3, 32, 32), 10, ["relu1"], batch_size=2).states[0]
    assert payload_nbytes(segment.state_dict()) == size.state_bytes()      # includes int64 num_batches_tracked
    for name, make in [("sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
                       ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
                       ("adam", lambda p: torch.optim.Adam(p))]:
        opt = make(segment.parameters())
        segment(torch.randn(2, 3, 32, 32)).sum().backward()
        opt.step()
        assert payload_nbytes(opt.state_dict()) == size.optimizer_bytes(name), name


def test_handoff_modes_and_a_lone_client():
    run = dict(**FMNIST, cuts=["pool2"], samples_per_client=10, epochs=3, batch_size=8)
    peer = cm.splitnn_costs(num_clients=4, handoff="peer", **run)
    server = cm.splitnn_costs(num_clients=4, handoff="server", **run)
    assert peer.client_bytes == server.client_bytes
    assert "weights" not in peer.server_received and server.server_received["weights"] == peer.client_sent["weights"]
    alone = cm.splitnn_costs(num_clients=1, **run)
    assert alone.client_sent["weights"] == alone.client_sent["optimizer_state"] == 0


def test_large_batch_sgd_steps_and_bytes():
    run = dict(**FMNIST, samples_per_client=100, num_clients=8, batch_size=32)
    lb = cm.large_batch_sgd_costs(epochs=2, **run)
    steps = 2 * math.ceil(100 / 32)                        # last batch partial
    assert lb.client_sent == {"gradient_update": steps * FMNIST_PARAMS * 4}
    assert lb.client_received == {"weights": steps * FMNIST_PARAMS * 4}
    assert lb.client_flops == cm.fedavg_costs(rounds=2, **run).client_flops


def test_cut_activation_sizes_of_the_imagenet_stem():
    seg = cm.segment_costs("resnet18_imagenet", (3, 32, 32), 100, ["relu", "maxpool"], batch_size=2)
    assert seg.cut_numels == (64 * 16 * 16, 64 * 8 * 8)


def test_building_a_model_leaves_the_callers_rng_alone():
    cm._built.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cm.segment_costs("mlp", (7,), 2, (), batch_size=2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kwargs, field", [
    (dict(handoff="ring"), "handoff"), (dict(optimizer="rmsprop"), "optimizer"),
    (dict(batch_size=0), "batch_size"), (dict(samples_per_client=0), "samples_per_client"),
    (dict(cuts=["fc2"]), "cut"), (dict(model="alexnet"), "model"), (dict(input_shape=(1, 0, 28)), "input_shape"),
])
def test_bad_arguments_raise_config_errors(kwargs, field):
    run = dict(**FMNIST, cuts=["pool2"], samples_per_client=10, num_clients=2, epochs=1, batch_size=8)
    with pytest.raises(ConfigError) as err:
        cm.splitnn_costs(**{**run, **kwargs})
    assert err.value.field == field


# ---------------------------------------------------------------------------------------------- crossover

SMALL = Scenario("fmnist", "fmnist_cnn", (1, 28, 28), 10, "pool2", 60_000)


def test_crossover_more_clients_favour_splitnn():
    n_star = crossover_clients(SMALL)
    assert n_star is not None and 2 < n_star < SMALL.total_samples
    split, fed = bytes_per_client(SMALL, n_star - 1)
    assert split > fed                                     # below N*: FedAvg is cheaper
    split, fed = bytes_per_client(SMALL, n_star)
    assert split <= fed                                    # from N* on: SplitNN is cheaper
    split, fed = bytes_per_client(SMALL, 10 * n_star)
    assert split < fed


def test_crossover_moves_with_data_and_model_size():
    n_star = crossover_clients(SMALL)
    more_data = Scenario("", "fmnist_cnn", (1, 28, 28), 10, "pool2", 10 * SMALL.total_samples)
    bigger_model = Scenario("", "fmnist_cnn", (1, 28, 28), 2000, "pool2", SMALL.total_samples)  # wider fc2
    assert crossover_clients(more_data) > n_star           # more data per client favours FedAvg
    assert crossover_clients(bigger_model) < n_star        # a bigger model favours SplitNN


# ---------------------------------------------------------------------------------------------- paper tables

def test_printed_precision():
    assert paper.bounds("1.2") == pytest.approx((1.15, 1.25))
    assert paper.bounds("13") == pytest.approx((12.5, 13.5))
    assert paper.rounds_to(0.03043, "0.03") and not paper.rounds_to(0.1522, "0.1548")


def test_table1_fit_reproduces_its_source_cell():
    (fit, fit_grad) = table1_fits(["vgg11"])
    assert fit.ratio == pytest.approx(fit.epoch_flops["splitnn"][500] / fit.epoch_flops["fedavg"][500])
    assert fit.epoch_flops["large_batch_sgd"] == fit.epoch_flops["fedavg"]
    pred = fit.predict(fit.epochs_exact())
    assert pred["fedavg"][100] == pytest.approx(29.4)
    assert pred["fedavg"][500] == pytest.approx(29.4 / 5)
    assert fit_grad.ratio > fit.ratio                      # counting the input gradient adds client work only
    assert fit.epochs_exact(2) == pytest.approx(2 * fit.epochs_exact())


def test_table2_fit_pieces():
    # 262.2 MB and 52.46 MB per client per epoch: 22-23 epochs give both "6" and "1.2" GB
    fit = SplitFit("resnet50", "relu", 65536, {100: 262_178_736, 500: 52_460_656}, 30_736)
    assert fit.epochs == 23 and fit.consistent_epochs() == [22, 23]
    fed = PerUnitFit("fedavg", 190_066_976)
    assert fed.whole_units(500) == []                      # 2.4 GB is no whole number of rounds
    assert 16 in fed.whole_units(100)


# ---------------------------------------------------------------------------------------------- command line

QUERY = ["query", "--model", "fmnist_cnn", "--input-shape", "1,28,28", "--classes", "10", "--cut", "pool2",
         "--samples-per-client", "600", "--clients", "10", "--epochs", "1", "--batch-size", "64"]


def test_query_prints_the_three_methods(capsys):
    assert costs.main(QUERY) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in ("splitnn", "fedavg", "large_batch_sgd"))


@pytest.mark.parametrize("change", [("--model", "alexnet"), ("--cut", "fc9"), ("--input-shape", "1,x,28"),
                                    ("--clients", "0"), ("--handoff", "ring")])
def test_bad_query_returns_2_with_one_line(capsys, change):
    argv = list(QUERY)
    if change[0] in argv:
        argv[argv.index(change[0]) + 1] = change[1]
    else:
        argv += list(change)
    assert costs.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1


def test_missing_subcommand_returns_2(capsys):
    assert costs.main([]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
