"""Ledger and meter: bandwidth and FLOPs are measured, and match what the tensors and layers imply."""
import math

import torch
from torch import nn

from conftest import shared_run
from raysplit.accounting import Ledger, count_flops, payload_nbytes, summarize


def test_linear_flops_by_hand():
    lin = nn.Linear(30, 7)
    x = torch.zeros(5, 30)
    assert count_flops(lin, [x], input_grad=False) == (2 * 5 * 30 * 7, 2 * 5 * 30 * 7)   # weight grad only
    assert count_flops(lin, [x], input_grad=True) == (2 * 5 * 30 * 7, 4 * 5 * 30 * 7)    # + input grad


def test_count_flops_leaves_the_module_untouched():
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    count_flops(bn, [torch.randn(8, 4)], True)
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())


def test_ledger_send_records_bytes_and_skips_self():
    led = Ledger()
    payload = {"a": torch.zeros(3, 4), "b": [torch.zeros(2, dtype=torch.int64)]}
    assert payload_nbytes(payload) == 3 * 4 * 4 + 2 * 8
    led.send("client/0", "server", "activation", payload)
    led.send("server", "server", "activation", payload)
    rows = summarize(led.drain())
    assert rows == [dict(round=0, src="client/0", dst="server", kind="activation", messages=1, bytes=64)]


def test_vanilla_ledger_and_meter_match_closed_form(ray_session):
    plan, result = shared_run("training.rounds=1")      # one round of the tiny config (test_plugins reads it too)
    cfg = plan.cfg
    assert (cfg.training.optimizer, cfg.training.momentum) == ("sgd", 0.9)    # the closed form's optimizer state
    led, m = result.ledger, result.metrics.iloc[0]
    bottom, top = plan.modules["s0"], plan.modules["s1"]
    b = cfg.training.batch_size
    act_numel = bottom(torch.zeros(1, 1, 8, 8)).numel()          # per sample at the cut
    n = [len(p) for p in plan.client_indices]
    steps = [math.ceil(k / b) for k in n]
    by_kind = led.groupby("kind")["bytes"].sum()
    assert by_kind["activation"] == sum(n) * act_numel * 4
    assert by_kind["gradient"] == sum(n) * act_numel * 4
    assert by_kind["labels"] == sum(n) * 8
    client_params = sum(p.numel() for p in bottom.parameters()) * 4
    hand_offs = cfg.data.num_clients - 1                           # last turn of the last round: no hand-off
    assert by_kind["weights"] == hand_offs * client_params
    assert by_kind["optimizer_state"] == hand_offs * client_params  # one momentum buffer per parameter
    assert led.groupby("kind")["messages"].sum()["activation"] == sum(steps)
    # FLOPs: the meter's totals equal count_flops per batch shape, summed over batches
    expect_client = 0
    for k in n:
        for size in [b] * (k // b) + ([k % b] if k % b else []):
            f, bw = count_flops(bottom, [torch.zeros(size, 1, 8, 8)], input_grad=False)
            expect_client += f + bw
    assert m["client_flops"] == expect_client
    assert m["client_tflops_per_client"] == expect_client / cfg.data.num_clients / 1e12
    assert m["server_flops"] > 0
    assert m["client_bytes"] == by_kind.sum() + by_kind["weights"] + by_kind["optimizer_state"]  # peer hand-off counts twice
