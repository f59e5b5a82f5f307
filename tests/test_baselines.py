"""FedAvg and large-batch SGD on the party hosts: equivalence oracles (invariant 3, docs/architecture.md) and the ledger
against its closed form."""
import copy
import math

import numpy as np
import pytest
import torch

from conftest import max_param_diff, shared_run, small_config, train_with
from raysplit.accounting import count_flops, row_fingerprints
from raysplit.algorithms import Centralized, FedAvg, LargeBatchSGD
from raysplit.data import batches
from raysplit.experiment import prepare, run
from raysplit.engine import make_optimizer
from raysplit.schedule import participants
from raysplit.topology import ComposedNet

TOL = 1e-5


def sgd_step(net, opt, plan, idx) -> None:
    x, y = torch.from_numpy(plan.dataset.train_x[idx]), torch.from_numpy(plan.dataset.train_y[idx])
    loss = sum(torch.nn.functional.cross_entropy(out, plan.topology.labels(t, y)) for t, out in net(x).items())
    opt.zero_grad()
    loss.backward()
    opt.step()


def assert_no_raw_data(plan, entries) -> None:
    """invariant 1, docs/architecture.md: only weights and gradients travel; no raw input row, no labels."""
    raw = row_fingerprints(torch.from_numpy(plan.dataset.train_x))
    assert entries and all(e.kind in ("weights", "gradient_update") and not (e.fingerprints & raw) for e in entries)


def initial(plan) -> ComposedNet:
    return ComposedNet(plan.topology, copy.deepcopy(plan.modules))


# --------------------------------------------------------------------------- FedAvg

def test_fedavg_one_client_one_epoch_equals_centralized(ray_session):
    """Adam; FedAvg's clients train with SGD and momentum against the replay below (the same client loop)."""
    plan = prepare(small_config("algorithm=fedavg", "data.num_clients=1", "training.rounds=1",
                                "training.local_epochs=1", "training.optimizer=adam", "training.lr=0.01"))
    reference = Centralized(plan, progress=False)
    reference.start()
    reference.run_round(0)
    fed = train_with(FedAvg, plan)
    assert max_param_diff(reference.model(), initial(plan)) > 1e-3, "training must move the parameters"
    assert max_param_diff(fed, reference.model()) <= TOL


def fedavg_replay(plan) -> ComposedNet:
    """FedAvg in one process: each sampled client trains a copy of the global network with a fresh
    optimizer on its batches; the global network becomes the sample-weighted average."""
    cfg = plan.cfg
    net = initial(plan)
    epochs = cfg.training.local_epochs
    for r in range(cfg.training.rounds):
        states, sizes = [], []
        for k in participants(cfg, r):
            local = copy.deepcopy(net)
            opt = make_optimizer(local.parameters(), cfg.training)
            for e in range(epochs):
                for idx in batches(plan.client_indices[k], cfg.training.batch_size, cfg.seed, r * epochs + e, k):
                    sgd_step(local, opt, plan, idx)
            states.append(local.state_dict())
            sizes.append(len(plan.client_indices[k]))
        net.load_state_dict({name: sum(s[name].double() * n for s, n in zip(states, sizes)) / sum(sizes)
                             for name in states[0]})
    return net


# several clients of unequal sizes on two workers, partial participation, two local epochs: the run (once for the
# session, conftest.shared_run) that the replay below checks and test_same_metrics_with_one_and_two_workers
# reruns on one worker
FEDAVG = ("algorithm=fedavg", "data.num_clients=5", "data.partition=dirichlet", "data.alpha=0.5",
          "training.participation=0.6", "training.local_epochs=2", "training.rounds=2", "runtime.workers=2")


def test_fedavg_equals_its_one_process_replay(ray_session):
    """Several clients of unequal sizes on two workers, partial participation, two local epochs."""
    plan, result = shared_run(*FEDAVG)
    assert len({len(i) for i in plan.client_indices}) > 1, "unequal clients, so the weighting matters"
    assert participants(plan.cfg, 0) != participants(plan.cfg, 1) and len(participants(plan.cfg, 0)) == 3
    assert max_param_diff(result.model, fedavg_replay(plan)) <= TOL


def test_fedavg_one_client_plain_sgd_equals_centralized_over_rounds(ray_session):
    """Without optimizer state (plain SGD) a one-client FedAvg round is exactly a centralized epoch, so the
    global weights carry on from round to round."""
    plan = prepare(small_config("algorithm=fedavg", "data.num_clients=1", "training.rounds=3",
                                "training.momentum=0"))
    reference = Centralized(plan, progress=False)
    reference.start()
    for r in range(3):
        reference.run_round(r)
    assert max_param_diff(train_with(FedAvg, plan), reference.model()) <= TOL


def test_fedavg_ledger_and_meter_match_closed_form(ray_session):
    cfg = small_config("algorithm=fedavg", "data.num_clients=4", "training.participation=0.5",
                       "training.rounds=2", "training.local_epochs=2")
    plan = prepare(cfg)
    result = run(cfg, progress=False, write=False, capture_ledger=True)
    assert_no_raw_data(plan, result.entries)
    led = result.ledger
    net = initial(plan)
    params = sum(p.numel() for p in net.parameters())
    assert sum(t.numel() for t in net.state_dict().values()) == params   # FmnistCNN: no buffers
    assert set(led["kind"]) == {"weights"}
    for r in range(2):
        clients = participants(cfg, r)
        assert len(clients) == 2
        rows = led[led["round"] == r + 1]
        per_client = {}
        for _, row in rows.iterrows():
            client = row["dst"] if row["src"] == "server" else row["src"]
            assert row["messages"] == 1 and row["bytes"] == params * 4
            per_client[client] = per_client.get(client, 0) + row["bytes"]
        assert per_client == {f"client/{k}": 2 * params * 4 for k in clients}
        m = result.metrics.iloc[r]
        assert m["client_bytes"] == 2 * 2 * params * 4
        # FLOPs: the whole network, forward and backward (no input gradient), on each of the clients' batches
        expect = 0
        for k in clients:
            n = len(plan.client_indices[k])
            sizes = [cfg.training.batch_size] * (n // cfg.training.batch_size) + ([n % cfg.training.batch_size] if n % cfg.training.batch_size else [])
            for size in sizes:
                expect += cfg.training.local_epochs * sum(count_flops(net, [torch.zeros(size, 1, 8, 8)], False))
        assert m["client_flops"] == expect


# --------------------------------------------------------------------------- large-batch SGD

def large_batch_replay(plan) -> ComposedNet:
    """Centralized SGD whose batch t is the concatenation, in client order, of every client's batch t."""
    cfg = plan.cfg
    net = initial(plan)
    opt = make_optimizer(net.parameters(), cfg.training)
    epochs = cfg.training.local_epochs
    for r in range(cfg.training.rounds):
        for e in range(epochs):
            per_client = [batches(idx, cfg.training.batch_size, cfg.seed, r * epochs + e, k)
                          for k, idx in enumerate(plan.client_indices)]
            for t in range(max(len(b) for b in per_client)):
                sgd_step(net, opt, plan, np.concatenate([b[t] for b in per_client if t < len(b)]))
    return net


# the run (once for the session) that the next test's replay checks and test_same_metrics_with_one_and_two_workers
# reruns on one worker
LARGE_BATCH = ("algorithm=large_batch_sgd", "data.num_clients=3", "training.batch_size=16", "training.optimizer=adam",
               "training.lr=0.01", "runtime.workers=2")


def test_large_batch_sgd_equals_centralized_batch_n_times_b(ray_session):
    """3 clients of batch 16 == one batch of 48: 96 samples, 32 a client, 2 full steps an epoch. Adam at the
    server; SGD with momentum meets the same replay in the next test."""
    plan, result = shared_run(*LARGE_BATCH)
    assert {len(i) for i in plan.client_indices} == {32}
    reference = large_batch_replay(plan)
    assert max_param_diff(reference, initial(plan)) > 1e-3
    assert max_param_diff(result.model, reference) <= TOL


def test_large_batch_sgd_partial_batches_weighted_by_samples(ray_session):
    """Unequal clients (Dirichlet) with partial last batches: some clients sit out the last steps, and
    the average is weighted by sample count, so it still equals the concatenated batch."""
    plan = prepare(small_config("algorithm=large_batch_sgd", "data.num_clients=4", "data.partition=dirichlet",
                                "data.alpha=0.5", "training.batch_size=10", "training.local_epochs=2"))
    steps = [math.ceil(len(i) / 10) for i in plan.client_indices]
    assert len(set(steps)) > 1 and any(len(i) % 10 for i in plan.client_indices)
    assert max_param_diff(train_with(LargeBatchSGD, plan), large_batch_replay(plan)) <= TOL


def test_large_batch_sgd_ledger_matches_closed_form(ray_session):
    cfg = small_config("algorithm=large_batch_sgd", "data.num_clients=3", "data.synthetic_samples=100",
                       "training.batch_size=16", "training.rounds=1")
    plan = prepare(cfg)
    result = run(cfg, progress=False, write=False, capture_ledger=True)
    assert_no_raw_data(plan, result.entries)
    led = result.ledger
    params = sum(p.numel() for p in initial(plan).parameters())
    steps = {k: math.ceil(len(idx) / 16) for k, idx in enumerate(plan.client_indices)}   # 34, 33, 33 samples
    assert steps == {0: 3, 1: 3, 2: 3} and len(plan.client_indices[0]) % 16
    up = led[led["kind"] == "gradient_update"].set_index("src")
    down = led[led["kind"] == "weights"].set_index("dst")
    assert set(led["kind"]) == {"gradient_update", "weights"}
    for k, s in steps.items():
        # per step: the gradient up and the weights down, each one number per parameter
        assert up.loc[f"client/{k}", "messages"] == s and up.loc[f"client/{k}", "bytes"] == s * params * 4
        assert down.loc[f"client/{k}", "messages"] == s and down.loc[f"client/{k}", "bytes"] == s * params * 4
        assert up.loc[f"client/{k}", "dst"] == "server" and down.loc[f"client/{k}", "src"] == "server"


@pytest.mark.parametrize("sets", [FEDAVG, LARGE_BATCH], ids=["fedavg", "large_batch_sgd"])
def test_same_metrics_with_one_and_two_workers(ray_session, sets):
    """invariant 4, docs/architecture.md for the baselines: hosting does not change results. Two workers: the
    runs the replays above check (FedAvg: unequal clients, partial participation, two local epochs)."""
    assert sets[-1] == "runtime.workers=2"
    two = shared_run(*sets)[1].metrics
    one = run(small_config(*sets[:-1], "runtime.workers=1"), progress=False, write=False).metrics
    dfs = [m.drop(columns=["wall_s", "wall_s_cum"]) for m in (one, two)]
    assert dfs[0].equals(dfs[1]), f"{sets[0]}\n{dfs[0].T}\n{dfs[1].T}"
    assert dfs[0]["test_acc"].notna().all()
