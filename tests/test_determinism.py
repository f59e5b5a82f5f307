"""invariant 4, docs/architecture.md: same config and seed, same metrics, whatever the number of worker actors."""
import pytest
import torch

from conftest import small_config
from raysplit.experiment import run

TIMING = ("wall_s", "wall_s_cum")


def metrics(workers: int):
    cfg = small_config(f"runtime.workers={workers}", "data.num_clients=4", "data.partition=dirichlet",
                       "data.alpha=0.3")
    df = run(cfg, progress=False, write=False).metrics
    return df.drop(columns=list(TIMING))


def test_same_metrics_with_one_and_two_workers(ray_session):
    one, two = metrics(1), metrics(2)
    assert list(one.columns) == list(two.columns)
    assert one.equals(two), f"\n{one.T}\n{two.T}"
    assert one["test_acc"].notna().all()


@pytest.mark.parametrize("algorithm", ["splitnn", "splitfed", "fedavg"])
def test_random_draws_do_not_depend_on_the_hosting(ray_session, algorithm):
    """A model that draws random numbers (dropout in the client's segment): each turn's draws are seeded by
    what it is, and nothing a host does once (FLOP counting on its first step of a shape) draws from them."""
    def trained(workers: int):
        cfg = small_config(f"algorithm={algorithm}", "model.name=test_bad_input:dropout_net",
                           "model.cut_layers=[drop]", f"runtime.workers={workers}", "training.rounds=1")
        return run(cfg, progress=False, write=False).model.state_dict()
    one, two = trained(1), trained(2)
    assert all(torch.equal(one[k], two[k]) for k in one)
