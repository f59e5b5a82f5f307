import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs, as on the CI machine)."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")   # as raysplit.runtime.connect does
    # party hosts unpickle plug-ins and models defined in test modules, and those of the user's package in
    # docs/examples (test_extending runs it in this process): let them import those modules (a fresh
    # `raysplit run` puts the config's folder there itself: test_extending's subprocess run checks that)
    here = os.path.dirname(os.path.abspath(__file__))
    examples = os.path.join(os.path.dirname(here), "docs", "examples")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, examples, os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def raysplit_here(ray_session, capfd, monkeypatch):
    """``raysplit ARGS`` run in this process through ``raysplit.cli.main`` (on the session's Ray where the
    command gets that far), in ``cwd`` (the repository by default), returning a ``subprocess.CompletedProcess``
    as ``test_cli.raysplit`` does: the exit code and what the command wrote to stdout and stderr (captured at
    the file descriptors). For the tests of what a command does or refuses; the command as a process of its
    own (the entry point, its exit status, signals) is tested through ``test_cli.raysplit`` and
    ``test_recovery._cli``, without the few seconds each new process and its Ray take to start."""
    from raysplit import cli

    def call(*args: str, cwd=Path(__file__).resolve().parents[1]) -> subprocess.CompletedProcess:
        capfd.readouterr()
        with monkeypatch.context() as m:
            m.chdir(cwd)
            code = cli.main(list(args))
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["raysplit", *args], code, out, err)
    return call


def small_config(*sets: str):
    """A tiny synthetic experiment: fast enough to run many times per test session (its names checked, as
    ``raysplit.load_config`` checks a file's)."""
    from raysplit import catalog

    raw = {
        "name": "test", "seed": 7,
        "data": {"dataset": "synthetic", "num_clients": 3, "synthetic_samples": 96, "synthetic_shape": [1, 8, 8],
                 "synthetic_classes": 4},
        "model": {"name": "fmnist_cnn", "cut_layers": ["pool1"]},
        "training": {"rounds": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9},
        "runtime": {"workers": 1, "worker": {"num_cpus": 0.5}, "server": {"num_cpus": 0.5}},
    }
    return catalog.config_from_dict(raw, list(sets))


_SHARED_RUNS: dict = {}
_SHARED_DIR: list[Path] = []


def shared_run(*sets: str, capture_ledger: bool = False):
    """``run(small_config(*sets))``, once per test session: returns ``(plan, result)``, the same objects to every
    test that asks for the same settings (the same ``sets``, in the same order). For tests that only read a run
    (its metrics, ledger, FLOPs, ledger entries, trained model, or its results directory, ``result.out_dir``,
    written under a temporary directory of the session) and would otherwise repeat it: a config's results do
    not depend on when or beside what it runs (the same config and seed give bitwise the same results:
    test_determinism.py, test_recovery.py), so a repeat adds start-up time (a party host is a process of its
    own: ~5 s of CPU to start) and nothing checked. Callers must not modify what it returns. Needs the
    ``ray_session`` fixture."""
    from raysplit.experiment import prepare, run

    key = (sets, capture_ledger)
    if key not in _SHARED_RUNS:
        if not _SHARED_DIR:
            _SHARED_DIR.append(Path(tempfile.mkdtemp(prefix="raysplit-shared-runs-")))
            atexit.register(shutil.rmtree, _SHARED_DIR[0], True)
        plan = prepare(small_config(*sets))
        _SHARED_RUNS[key] = plan, run(plan.cfg, out_dir=_SHARED_DIR[0] / f"run{len(_SHARED_RUNS)}", progress=False,
                                      capture_ledger=capture_ledger, plan=plan)
    return _SHARED_RUNS[key]


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
