"""SplitFed (the parallel schedule) against the same computation done by hand in one process.

v1: every participant trains its own copy of the whole (unsplit) network from the global weights with a
fresh optimizer; the copies are averaged, weighted by sample count. v2: every participant trains its own
copy of the client-side segments, all of them sharing one server-side model (one optimizer, kept across
rounds) that takes their steps round-robin by step. Both ≤ 1e-5 from the split runs.
"""
import copy

import numpy as np
import pytest
import torch

from conftest import max_param_diff, shared_run, small_config
from raysplit.accounting import payload_nbytes
from raysplit.algorithms import SplitFed
from raysplit.config import from_dict
from raysplit.data import batches
from raysplit.errors import ConfigError
from raysplit.experiment import prepare, run
from raysplit.engine import make_optimizer
from raysplit.schedule import interleave, participants
from raysplit.topology import CLIENT, ComposedNet
from test_equivalence import TOL
from test_privacy import raw_fingerprints

TIMING = ("wall_s", "wall_s_cum")


def local_batches(plan, k: int, r: int) -> list[np.ndarray]:
    cfg = plan.cfg
    epochs = cfg.training.local_epochs
    return [idx for e in range(epochs)
            for idx in batches(plan.client_indices[k], cfg.training.batch_size, cfg.seed, r * epochs + e, k)]


def loss_on(net: ComposedNet, plan, idx) -> torch.Tensor:
    x, y = torch.from_numpy(plan.dataset.train_x[idx]), torch.from_numpy(plan.dataset.train_y[idx])
    return sum(torch.nn.functional.cross_entropy(out, plan.topology.labels(t, y)) for t, out in net(x).items())


def weighted_average(states: list[dict], weights: list[float]) -> dict:
    total = sum(weights)
    return {key: sum(w * s[key].double() for s, w in zip(states, weights)) / total for key in states[0]}


def sflv1_by_hand(plan) -> ComposedNet:
    cfg = plan.cfg
    torch.manual_seed(0)
    glob = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    for r in range(cfg.training.rounds):
        states, weights = [], []
        for k in participants(cfg, r):
            net = copy.deepcopy(glob)
            opt = make_optimizer(net.parameters(), cfg.training)
            for idx in local_batches(plan, k, r):
                loss = loss_on(net, plan, idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append(net.state_dict())
            weights.append(float(len(plan.client_indices[k])))
        glob.load_state_dict({k: v.float() for k, v in weighted_average(states, weights).items()})
    return glob


def sflv2_by_hand(plan) -> ComposedNet:
    cfg, topo = plan.cfg, plan.topology
    torch.manual_seed(0)
    glob = ComposedNet(topo, copy.deepcopy(plan.modules))
    client_names = [s.name for s in topo.segments if s.owner == CLIENT]
    server_params = [p for n, m in glob.segs.items() if n not in client_names for p in m.parameters()]
    server_opt = make_optimizer(server_params, cfg.training)           # one server model, one optimizer
    for r in range(cfg.training.rounds):
        order = participants(cfg, r)
        nets, opts, steps = {}, {}, {}
        for k in order:   # each participant: its own client-side copy, the server-side modules shared
            segs = {n: (copy.deepcopy(m) if n in client_names else m) for n, m in glob.segs.items()}
            nets[k] = ComposedNet(topo, segs)
            opts[k] = make_optimizer([p for n in client_names for p in segs[n].parameters()], cfg.training)
            steps[k] = local_batches(plan, k, r)
        for k, j in interleave(order, {k: len(steps[k]) for k in order}):
            loss = loss_on(nets[k], plan, steps[k][j])
            opts[k].zero_grad()
            server_opt.zero_grad()
            loss.backward()
            opts[k].step()
            server_opt.step()
        weights = [float(len(plan.client_indices[k])) for k in order]
        for n in client_names:
            avg = weighted_average([nets[k].segs[n].state_dict() for k in order], weights)
            glob.segs[n].load_state_dict({key: v.float() for key, v in avg.items()})
    return glob


def train_logged(plan) -> tuple[ComposedNet, list]:
    """``train``, with the run's ledger entries."""
    algo, entries = SplitFed(plan, capture_ledger=True, progress=False), []
    algo.start()
    try:
        for r in range(plan.cfg.training.rounds):
            algo.run_round(r)
            entries += algo.drain()[0]
        return algo.model(), entries
    finally:
        algo.stop()


def assert_weights_only_via(entries, point: str) -> None:
    """Client-side weights go between the clients and the averaging point only: with the fed server (the
    default), the main server never receives them (in u_shaped they hold the client's label-side head)."""
    weights = [e for e in entries if e.kind == "weights"]
    assert weights and all({e.src, e.dst} - {point} and point in (e.src, e.dst) for e in weights)
    assert all(e.dst.startswith("client/") or e.src.startswith("client/") for e in weights)
    if point != "server":
        assert not [e for e in entries if e.dst == "server" and e.kind in ("weights", "optimizer_state")]


BY_HAND = {"v1": sflv1_by_hand, "v2": sflv2_by_hand}


def adam_sets(version: str) -> tuple[str, ...]:
    """Adam (v2: one server optimizer whose state every participant's steps advance) on u_shaped (the server's
    segment gets a forward and a backward call per step), five clients of unequal sizes on two workers, one
    round. One run per version for the session (conftest.shared_run): the test below checks its parameters,
    test_link.py compares it (over links, the default) with the same run over Ray calls."""
    return ("schedule=parallel", "topology=u_shaped", "model.cut_layers=[pool1, relu3]", "data.num_clients=5",
            "data.partition=dirichlet", "data.alpha=0.5", "runtime.workers=2", "training.optimizer=adam",
            "training.lr=0.01", f"splitfed={version}", "training.rounds=1")


# both versions with SGD and momentum meet the same by-hand computations in
# test_sampled_participants_over_rounds_and_local_epochs and test_other_topologies.
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_splitfed_equals_the_computation_by_hand(ray_session, version):
    plan, result = shared_run(*adam_sets(version))
    assert plan.cfg.algorithm == "splitfed" and plan.cfg.training.optimizer == "adam"
    sizes = {len(i) for i in plan.client_indices}
    assert len(sizes) > 1, "unequal clients: the average must be weighted by sample count"
    initial = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    split, reference = result.model, BY_HAND[version](plan)
    assert max_param_diff(reference, initial) > 1e-3, "training must move the parameters"
    assert max_param_diff(split, reference) <= TOL


def test_v1_and_v2_differ_and_orders_matter(ray_session):
    """The oracles can fail: v1's average of server copies is not v2's one server model."""
    plan = prepare(small_config("schedule=parallel", "data.num_clients=3", "training.rounds=1"))
    assert max_param_diff(sflv1_by_hand(plan), sflv2_by_hand(plan)) > 1e-3


def sampled_sets(version: str, workers: int = 2) -> tuple[str, ...]:
    """Three of five clients of unequal sizes drawn each round, in the draw's order, two local epochs, two
    rounds. The two-worker run, once per version for the session (its ledger entries kept): the by-hand
    oracle below, the one-vs-two-workers test further down and test_cluster.py's placement runs read it."""
    return ("schedule=parallel", f"splitfed={version}", "data.num_clients=5", "data.partition=dirichlet",
            "data.alpha=0.3", "training.clients_per_round=3", "training.client_order=shuffled",
            "training.local_epochs=2", "training.rounds=2", f"runtime.workers={workers}")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_sampled_participants_over_rounds_and_local_epochs(ray_session, version):
    plan, result = shared_run(*sampled_sets(version), capture_ledger=True)
    drawn = [participants(plan.cfg, r) for r in range(2)]
    assert all(len(d) == 3 for d in drawn) and drawn[0] != drawn[1]
    assert len({len(i) for i in plan.client_indices}) > 1, "unequal clients: the average is weighted"
    assert max_param_diff(result.model, BY_HAND[version](plan)) <= TOL


@pytest.mark.parametrize("version,cuts,point", [("v1", "[pool1,relu3]", "fed_server"), ("v2", "[pool1,relu3]", "fed_server"),
                                               ("v1", "[pool1,pool2]", "fed_server"), ("v2", "[pool1,relu3]", "server")])
def test_other_topologies(ray_session, version, cuts, point):
    """u_shaped (the server's segment gets a forward and a backward call per step) and extended (a relay
    with its own per-client copies in v1); the averaging point a party of its own (the fed server, by
    default) or the main server: the same arithmetic, only who receives the weights differs."""
    topology = "u_shaped" if cuts == "[pool1,relu3]" else "extended"
    plan = prepare(small_config("schedule=parallel", f"splitfed={version}", f"topology={topology}",
                                f"model.cut_layers={cuts}", "training.rounds=1", "runtime.workers=2",
                                "runtime.worker.num_cpus=0.25", "runtime.server.num_cpus=0.25",
                                f"training.averaging_point={point}"))
    model, entries = train_logged(plan)
    assert max_param_diff(model, BY_HAND[version](plan)) <= TOL
    assert_weights_only_via(entries, point)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_same_metrics_with_one_and_two_workers_and_weights_in_the_ledger(ray_session, version):
    # two workers: the sampled oracle's run (above); one worker: the same config on one worker host
    plan, two = shared_run(*sampled_sets(version), capture_ledger=True)
    result = run(small_config(*sampled_sets(version, workers=1)), progress=False, write=False, capture_ledger=True)
    one, entries = result.metrics.drop(columns=list(TIMING)), result.entries
    two = two.metrics.drop(columns=list(TIMING))
    assert one.equals(two), f"\n{one.T}\n{two.T}"
    assert one["test_acc"].notna().all() and (one["algorithm"] == "splitfed").all()
    client_bytes = payload_nbytes({n: m.state_dict() for n, m in plan.modules.items()
                                   if plan.topology.segment(n).owner == CLIENT})
    for r in range(2):
        k_r = participants(from_dict({"data": {"num_clients": 5}, "seed": 7, "training": {"clients_per_round": 3}}), r)
        assert len(k_r) == 3
        down = sorted(e.dst for e in entries if e.round == r and e.kind == "weights" and e.src == "fed_server")
        up = sorted(e.src for e in entries if e.round == r and e.kind == "weights" and e.dst == "fed_server")
        assert down == up == sorted(f"client/{k}" for k in k_r)
        assert {e.nbytes for e in entries if e.round == r and e.kind == "weights"} == {client_bytes}
        assert {e.src for e in entries if e.round == r and e.kind == "activation"} == {f"client/{k}" for k in k_r}
    assert not [e for e in entries if e.kind == "optimizer_state"]
    assert_weights_only_via(entries, "fed_server")
    raw = raw_fingerprints(plan.dataset)        # invariant 1, docs/architecture.md holds for SplitFed too
    assert not any(e.fingerprints & raw for e in entries)
    assert {e.dst for e in entries if e.kind == "labels"} == {"server"}


def test_participation_sampling_is_seeded():
    cfg = from_dict({"data": {"num_clients": 100}, "training": {"participation": 0.1}, "seed": 3})
    a, b = participants(cfg, 0), participants(cfg, 0)
    assert a == b and len(a) == 10 == len(set(a)) and a == sorted(a)
    assert participants(cfg, 1) != a
    assert participants(from_dict({"data": {"num_clients": 100}, "training": {"participation": 0.1}, "seed": 4}), 0) != a
    assert len(participants(from_dict({"data": {"num_clients": 100}, "training": {"clients_per_round": 7}}), 0)) == 7
    assert interleave([4, 1, 2], {4: 2, 1: 1, 2: 3}) == [(4, 0), (1, 0), (2, 0), (4, 1), (2, 1), (2, 2)]


@pytest.mark.parametrize("sets,pattern", [
    (["training.clients_per_round=11"], r"training.clients_per_round: 11 .*at most data.num_clients \(10\)"),
    (["training.participation=0"], r"training.participation: 0.0 .*\(0, 1\]"),
    (["training.participation=0.5", "training.clients_per_round=3"], r"training.participation: 0.5 .*not both"),
    (["splitfed=v3"], r"splitfed: 'v3' .*one of v1, v2"),
    (["training.averaging_point=client"], r"training.averaging_point: 'client' .*one of fed_server, server"),
    (["topology=extended", "parties=[client,fed_server,server]"], r"training.averaging_point: 'fed_server' .*named fed_server"),
    (["schedule=batched"], r"schedule: 'batched' .*one of sequential, parallel, async"),
])
def test_bad_parallel_config(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict({}, ["schedule=parallel", *sets])


def test_splitnn_with_parallel_schedule_is_splitfed_and_vice_versa():
    assert from_dict({}, ["schedule=parallel"]).algorithm == "splitfed"
    assert from_dict({}, ["algorithm=splitfed"]).schedule == "parallel"
    assert from_dict({}, []).schedule == "sequential"
