"""Split inference with a finished run's trained parties: the same predictions as the composed network,
exactly, and only activations cross."""
import numpy as np
import pytest
import torch

from conftest import shared_run
from raysplit.errors import ConfigError
from raysplit.experiment import load_model
from raysplit.inference import infer
from test_equivalence import chain_run
from test_topologies import VERTICAL_CASES, vertical_run

# one round of each, trained once for the session (conftest.shared_run: its results directory is what infer
# reads) by the tests that check its training: test_accounting.py and test_plugins.py (vanilla), the chain
# oracle of test_equivalence.py (u_shaped), and the vertical oracle and ledger tests of test_topologies.py
# (vertical: two holders of image halves, their activations summed, the labels at holder0)
CASES = {"vanilla": lambda: shared_run("training.rounds=1"), "u_shaped": lambda: chain_run("u_shaped"),
         "vertical": lambda: vertical_run(*VERTICAL_CASES["image-sum-holder-labels"])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_inference_equals_the_composed_network(ray_session, tmp_path, case):
    plan, trained = CASES[case]()
    assert plan.cfg.training.rounds == 1 and (case == "vertical") == (plan.cfg.vertical.label_holder == "holder0")
    result = infer(trained.out_dir, batch_size=7, out_dir=tmp_path / "inference")   # (the shared run's directory: read only)
    assert result.summary["accuracy"] == trained.metrics["test_acc"].iloc[-1]        # the run's test accuracy, exactly
    net = load_model(trained.out_dir).eval()
    from raysplit.data import load_dataset
    ds = load_dataset(plan.cfg.data, plan.cfg.seed)
    with torch.no_grad():
        expected = net(torch.from_numpy(ds.test_x))["y"].argmax(1).numpy()
    assert np.array_equal(result.predictions["prediction"].to_numpy(), expected)
    kinds = set(result.ledger["kind"])
    assert kinds <= {"activation", "sample_ids"} and "activation" in kinds   # no gradients, no labels, no logits
    assert result.summary["batches"] == -(-len(ds.test_y) // 7)
    assert (result.flops["phase"] == "forward").all() and result.flops["flops"].gt(0).all()
    assert (result.out_dir / "predictions.csv").is_file()
    # simulated latency per batch: the sequential time model over the inference ledger and FLOPs
    from raysplit.network import network_for, sequential_time
    from raysplit import config
    comm, compute = sequential_time(result.ledger, result.flops, network_for(config.load(trained.out_dir / "config.yaml")))
    assert result.summary["sim_latency_ms"] == pytest.approx(1e3 * (comm + compute) / result.summary["batches"])
    assert result.summary["sim_comm_ms"] > 0 and result.summary["sim_compute_ms"] > 0


def test_infer_needs_a_finished_run(tmp_path):
    with pytest.raises(ConfigError, match=r"^RESULTS_DIR: .*a finished run's results directory"):
        infer(tmp_path)
