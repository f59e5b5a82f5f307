"""invariant 4, docs/architecture.md: same config and seed, same metrics, whatever the number of worker actors."""
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
