import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, as on the CI machine)."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")   # as raysplit.runtime.connect does
    # party hosts unpickle plug-ins and models defined in test modules: let them import those modules
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def small_config(*sets: str):
    """A tiny synthetic experiment: fast enough to run many times per test session."""
    from raysplit import config

    raw = {
        "name": "test", "seed": 7,
        "data": {"dataset": "synthetic", "num_clients": 3, "synthetic_samples": 96, "synthetic_shape": [1, 8, 8],
                 "synthetic_classes": 4},
        "model": {"name": "fmnist_cnn", "cut_layers": ["pool1"]},
        "training": {"rounds": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
        "runtime": {"workers": 1, "worker": {"num_cpus": 0.5}, "server": {"num_cpus": 0.5}},
    }
    return config.from_dict(raw, list(sets))


def train_with(algo_cls, plan):
    """Train ``plan`` with an algorithm for all its rounds; return the final ComposedNet."""
    algo = algo_cls(plan, progress=False)
    algo.start()
    try:
        for r in range(plan.cfg.training.rounds):
            algo.run_round(r)
        return algo.model()
    finally:
        algo.stop()


def max_param_diff(a, b) -> float:
    """Largest absolute difference between two networks' state dicts (same keys required)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
