"""GPUs: party hosts with num_gpus > 0 run their segments on their GPU; cut tensors cross devices through the
ledger (sent on the CPU, moved to the receiver's device). Skipped where there is no CUDA GPU."""
import copy

import pytest
import ray
import torch

from conftest import small_config
from raysplit.algorithms import SplitFed, SplitNN
from raysplit.experiment import prepare
from test_equivalence import centralized_replay, max_param_diff
from test_splitfed import sflv1_by_hand, sflv2_by_hand

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU_TOL = 1e-4   # GPU kernels round differently from the CPU reference


def train_on_devices(algo_cls, plan) -> tuple[torch.nn.Module, list[str]]:
    algo = algo_cls(plan, progress=False)
    algo.start()
    try:
        devices = ray.get([h.ping.remote() for h in algo.hosts.all])
        for r in range(plan.cfg.training.rounds):
            algo.run_round(r)
        return algo.model(), devices
    finally:
        algo.stop()


@pytest.mark.parametrize("worker_gpus", [0, 0.25])
def test_sequential_split_with_server_on_gpu(ray_session, worker_gpus):
    plan = prepare(small_config("runtime.server.num_gpus=0.5", f"runtime.worker.num_gpus={worker_gpus}",
                                "runtime.workers=2", "training.lr=0.01"))
    model, devices = train_on_devices(SplitNN, plan)
    assert any("server" in d and "cuda" in d for d in devices)
    assert all(("cuda" in d) == (worker_gpus > 0) for d in devices if d.startswith("worker"))
    assert max_param_diff(model, centralized_replay(plan)) <= GPU_TOL


@pytest.mark.parametrize("version,by_hand", [("v1", sflv1_by_hand), ("v2", sflv2_by_hand)])
@pytest.mark.parametrize("worker_gpus", [0, 0.25])
def test_splitfed_on_gpu(ray_session, version, by_hand, worker_gpus):
    plan = prepare(small_config("schedule=parallel", f"splitfed={version}", "runtime.server.num_gpus=0.5",
                                f"runtime.worker.num_gpus={worker_gpus}", "runtime.workers=2",
                                "data.num_clients=4", "training.rounds=1", "training.lr=0.01"))
    initial = copy.deepcopy(plan.modules)
    model, devices = train_on_devices(SplitFed, plan)
    assert any("server" in d and "cuda" in d for d in devices)
    assert max_param_diff(model, by_hand(plan)) <= GPU_TOL
    assert all(torch.equal(m.state_dict()[k], initial[n].state_dict()[k])
               for n, m in plan.modules.items() for k in m.state_dict()), "the plan's modules stay untouched"
