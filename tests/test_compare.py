"""`raysplit compare`: three methods on the same data and seed into one results directory; bad input is
one line, exit 2, nothing written. The command runs in this process (cli.main, on the session's Ray): the
command as a process of its own is tested in test_cli.py."""
import json
import re

import pandas as pd
import pytest
import yaml

from raysplit import config
from test_cli import SMALL, raysplit

METHODS = ["splitnn", "fedavg", "large_batch_sgd"]


def test_compare_writes_one_directory_with_three_runs(tmp_path, raysplit_here):
    """As a process of its own: it starts Ray once for the three methods."""
    out = tmp_path / "cmp"
    p = raysplit("compare", "experiments/compare_fmnist.yaml", *SMALL, "--set", "data.num_clients=3",
                 "--set", "compare.fedavg.training.lr=0.03", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("starting a local Ray") == p.stderr.count("Ray up in") == 1, p.stderr
    assert p.stderr.count("party hosts ready in") == 3, p.stderr
    assert sorted(x.name for x in out.iterdir()) == sorted(["comparison.csv", "config.yaml", "report", *METHODS])
    report = (out / "report" / "report.md").read_text()          # the figures, drawn from these three runs
    assert all(m in report for m in ("SplitNN", "Federated averaging", "Large-batch sync. SGD"))
    assert (out / "report" / "accuracy_vs_client_tflops.png").stat().st_size > 0
    assert (out / "report" / "accuracy_vs_sim_time.png").stat().st_size > 0          # issue 14
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["method"]) == METHODS
    assert table["sim_time_s"].gt(0).all()
    speeds = {yaml.safe_load((out / m / "config.yaml").read_text())["network"]["client"]["flops_per_s"] for m in METHODS}
    assert len(speeds) == 1 and None not in speeds      # one measured compute speed, written into every config
    for method in METHODS:
        run_dir = out / method
        assert (run_dir / "metrics.csv").is_file() and (run_dir / "ledger.csv").is_file()
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["algorithm"] == method and cfg["data"] == yaml.safe_load((out / "config.yaml").read_text())["data"]
        summary = json.loads((run_dir / "summary.json").read_text())
        row = table.set_index("method").loc[method]
        assert row["final_test_acc"] == summary["final_test_acc"]
        assert row["client_tflops_per_client"] == summary["client_tflops_per_client"]
        assert row["client_gb_per_client"] == summary["client_gb_per_client"] > 0
    lrs = {m: yaml.safe_load((out / m / "config.yaml").read_text())["training"]["lr"] for m in METHODS}
    assert lrs == {"splitnn": 0.05, "fedavg": 0.03, "large_batch_sgd": 0.02}   # the example's own override kept
    # same batches, one local epoch: FedAvg and large-batch SGD do the same client arithmetic; SplitNN's
    # clients compute only their segment
    flops = {m: pd.read_csv(out / m / "metrics.csv")["client_flops"].sum() for m in METHODS}
    assert flops["fedavg"] == flops["large_batch_sgd"] > flops["splitnn"] > 0
    assert not list(tmp_path.glob(".*partial"))
    # a method after another in the same process (and Ray) gives what it gives alone, but for the wall clock
    alone = tmp_path / "fedavg"
    p = raysplit_here("run", "experiments/compare_fmnist.yaml", *SMALL, "--set", "data.num_clients=3", "--set",
                      "algorithm=fedavg", "--set", "training.lr=0.03", "--out", str(alone), "--quiet")
    assert p.returncode == 0, p.stderr
    for name in ("metrics.csv", "ledger.csv", "flops.csv"):
        theirs, mine = (pd.read_csv(d / name) for d in (out / "fedavg", alone))
        keep = [c for c in theirs.columns if not c.startswith("wall_s")]
        pd.testing.assert_frame_equal(theirs[keep], mine[keep], check_exact=True)


@pytest.mark.parametrize("extra,pattern", [
    (["--set", "compare.fedavg.training.lr=fast"], "compare.fedavg.training.lr: 'fast' .*a number > 0"),
    (["--set", "compare.fedavg.data.num_clients=5"], "compare.fedavg.data.num_clients: 5 .*the methods share"),
    (["--set", "compare.splitnn.model.cut_layers=[40]"], "compare.splitnn.model.cut_layers: 40 .*fmnist_cnn has 10 layers"),
    (["--set", "training.participation=1.5"], "training.participation: 1.5 .*a number in \\(0, 1\\]"),
    (["--set", "compare.methods=[splitnn, splitnn]"], "compare.methods: .*distinct methods from splitnn, splitfed"),
])
def test_compare_bad_input_is_one_line_exit_2_nothing_written(tmp_path, raysplit_here, extra, pattern):
    out = tmp_path / "cmp"
    p = raysplit_here("compare", "experiments/compare_fmnist.yaml", *SMALL, *extra, "--out", str(out), "--quiet")
    err = [line for line in p.stderr.splitlines() if line.startswith("raysplit: error")]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert re.search(pattern, err[0]), err[0]
    assert "Traceback" not in p.stderr and not list(tmp_path.iterdir())


def test_method_config_overrides_and_round_trip():
    cfg = config.from_dict({"training": {"lr": 0.1}, "compare": {"fedavg": {"training": {"lr": 0.3}},
                                                                 "large_batch_sgd": {"runtime.workers": 2}}})
    fed, lb, split = (config.method_config(cfg, m) for m in ("fedavg", "large_batch_sgd", "splitnn"))
    assert (config.method_config(cfg, "splitfed").algorithm, config.method_config(cfg, "splitfed").schedule) == \
        ("splitfed", "parallel")
    assert (fed.algorithm, fed.training.lr) == ("fedavg", 0.3)
    assert (lb.training.lr, lb.runtime.workers) == (0.1, 2)
    assert split.training.lr == 0.1 and split.compare == config.CompareConfig()
    assert config.to_dict(split) == config.to_dict(config.from_dict(config.to_dict(split)))
