"""The backbone oracle (invariant 3, docs/architecture.md): split training equals the unsplit network trained in one
process on the same batches in the same order, to float32 rounding."""
import copy

import pytest
import torch

from conftest import max_param_diff, shared_run, small_config, train_with
from raysplit.algorithms import SplitNN
from raysplit.data import batches
from raysplit.experiment import prepare
from raysplit.engine import make_optimizer
from raysplit.schedule import client_order
from raysplit.topology import ComposedNet

TOL = 1e-5

CHAINS = {
    "vanilla": ["pool1"],
    "u_shaped": ["pool1", "relu3"],
    "extended": ["pool1", "pool2"],
    "multi_hop": ["pool1", "pool2", "relu3"],
}


def centralized_replay(plan) -> ComposedNet:
    """The unsplit network trained on exactly the batches the clients see, in the same order."""
    cfg = plan.cfg
    torch.manual_seed(0)
    net = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    opt = make_optimizer(net.parameters(), cfg.training)
    epochs = cfg.training.local_epochs
    for r in range(cfg.training.rounds):
        for k in client_order(cfg, r):
            for e in range(epochs):
                for idx in batches(plan.client_indices[k], cfg.training.batch_size, cfg.seed, r * epochs + e, k):
                    x, y = torch.from_numpy(plan.dataset.train_x[idx]), torch.from_numpy(plan.dataset.train_y[idx])
                    loss = sum(torch.nn.functional.cross_entropy(out, plan.topology.labels(t, y))
                               for t, out in net(x).items())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    return net


def train_split(plan) -> ComposedNet:
    return train_with(SplitNN, plan)


def sequential_sets(handoff: str) -> tuple[str, ...]:
    """Three clients in a shuffled order on two workers (consecutive clients live on different actors, so the
    hand-off of weights and optimizer state is what carries training on), Adam, a partial last batch (32 samples a
    client, batches of 12). One run per hand-off for the session (conftest.shared_run): the oracle below checks
    its parameters, test_cost_agreement.py its ledger and meter against the cost model."""
    return (f"handoff={handoff}", "training.optimizer=adam", "training.lr=0.01", "training.client_order=shuffled",
            "runtime.workers=2", "training.batch_size=12")


# Adam: besides the weights, a hand-off carries its state, a step count and two moment buffers per parameter;
# SGD's momentum (one buffer) is handed on by the same code and keeps this oracle for each hand-off in
# test_local_epochs_and_more_clients_than_workers (peer, across two workers) and
# test_chain_topologies_equal_unsplit_network[vanilla] (through the server).
@pytest.mark.parametrize("handoff", ["peer", "server"])
def test_vanilla_sequential_equals_centralized(ray_session, handoff):
    plan, result = shared_run(*sequential_sets(handoff))
    initial = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    split = result.model
    reference = centralized_replay(plan)
    assert max_param_diff(reference, initial) > 1e-3, "training must move the parameters"
    assert max_param_diff(split, reference) <= TOL


def chain_sets(topology: str) -> tuple[str, ...]:
    """One round of a chain topology, the client-side weights handed on through the server."""
    cuts = "[" + ",".join(CHAINS[topology]) + "]"
    return f"topology={topology}", f"model.cut_layers={cuts}", "handoff=server", "training.rounds=1"


def chain_run(topology: str):
    """``chain_sets``' run, its ledger entries kept. One run per topology for the session: test_privacy.py checks
    its ledger, the test below its parameters, test_inference.py infers with it (u_shaped) and test_link.py
    compares it with the same run over Ray calls (multi_hop)."""
    return shared_run(*chain_sets(topology), capture_ledger=True)


@pytest.mark.parametrize("topology", sorted(CHAINS))
def test_chain_topologies_equal_unsplit_network(ray_session, topology):
    plan, result = chain_run(topology)
    assert len(plan.topology.segments) == len(CHAINS[topology]) + 1
    split = result.model
    reference = centralized_replay(plan)
    assert max_param_diff(split, reference) <= TOL


def test_local_epochs_and_more_clients_than_workers(ray_session):
    plan = prepare(small_config("training.local_epochs=2", "training.rounds=1", "data.num_clients=4",
                                "runtime.workers=2", "runtime.worker.num_cpus=0.5", "runtime.server.num_cpus=0.5"))
    assert max_param_diff(train_split(plan), centralized_replay(plan)) <= TOL


def test_centralized_algorithm_equals_split_with_one_client(ray_session):
    """The `centralized` algorithm (all data, one process) sees the same batches as a single client."""
    from raysplit.algorithms import Centralized

    plan, split = shared_run("data.num_clients=1")       # (test_defences.py compares NoPeek with it too)
    ref = Centralized(plan, progress=False)
    ref.start()
    stats = [ref.run_round(r) for r in range(plan.cfg.training.rounds)]
    assert stats[-1]["y"][2] == len(plan.dataset.train_y)
    assert ref.drain()[1][("central", "forward")] > 0
    assert max_param_diff(ref.model(), split.model) <= TOL
