"""invariant 4, docs/architecture.md: same config and seed, same metrics and the same trained parameters, whatever
the number of worker actors."""
import pytest
import torch

from conftest import small_config
from raysplit.experiment import run

TIMING = ("wall_s", "wall_s_cum")

# SplitNN: four clients of unequal sizes, two rounds (the metrics of every round compared); SplitFed and FedAvg:
# one round (the one-vs-two-workers metrics of their own configs: test_splitfed.py, test_baselines.py)
HOSTING = {"splitnn": ["data.num_clients=4", "data.partition=dirichlet", "data.alpha=0.3"],
           "splitfed": ["training.rounds=1"], "fedavg": ["training.rounds=1"]}


@pytest.mark.parametrize("algorithm", sorted(HOSTING))
def test_random_draws_do_not_depend_on_the_hosting(ray_session, algorithm):
    """A model that draws random numbers (dropout in the client's segment): each turn's draws are seeded by
    what it is, and nothing a host does once (FLOP counting on its first step of a shape) draws from them. The
    metrics (every column but wall time) and the trained parameters are bitwise the same on one and on two
    worker hosts."""
    def trained(workers: int):
        cfg = small_config(f"algorithm={algorithm}", "model.name=test_bad_input:dropout_net",
                           "model.cut_layers=[drop]", f"runtime.workers={workers}", *HOSTING[algorithm])
        return run(cfg, progress=False, write=False)
    one, two = trained(1), trained(2)
    m1, m2 = one.metrics.drop(columns=list(TIMING)), two.metrics.drop(columns=list(TIMING))
    assert list(m1.columns) == list(m2.columns)
    assert m1.equals(m2), f"\n{m1.T}\n{m2.T}"
    assert m1["test_acc"].notna().all() and len(m1) == (2 if algorithm == "splitnn" else 1)
    a, b = one.model.state_dict(), two.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
