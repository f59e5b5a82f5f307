"""A user's own model, dataset, topology, plug-in and algorithm, registered in a package outside raysplit
(docs/examples/my_lab, the examples of docs/architecture.md) and run through ``raysplit run`` with a YAML
config; an unregistered name is one line, exit 2, nothing written."""
import re

import pandas as pd
import pytest

from conftest import max_param_diff, train_with
from test_cli import ROOT, raysplit

EXAMPLES = ROOT / "docs" / "examples"
CONFIG = str(EXAMPLES / "my_lab.yaml")


def test_user_extensions_run_through_the_cli(tmp_path):
    out = tmp_path / "res"
    p = raysplit("run", CONFIG, "--out", str(out), "--quiet", cwd=tmp_path)   # found beside the config
    assert p.returncode == 0, p.stderr
    m, led = pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "ledger.csv")
    assert (m["topology"] == "bottleneck").all() and m["test_acc"].iloc[-1] > 0.9
    # the plug-in's observer ran on the server: one activation message per step
    acts = led[led["kind"] == "activation"].groupby("round")
    assert m["cut_messages"].tolist() == acts["messages"].sum().tolist()
    assert (m["cut_abs_mean"] > 0).all()
    # the topology's bottleneck: tiny_net's 8 channels squeezed to 2, at 4x4, float32, for every sample
    assert acts["bytes"].sum().tolist() == [192 * 2 * 4 * 4 * 4] * 2


def test_user_algorithm_and_module_attribute_names(tmp_path, raysplit_here):
    # in this process, on the session's Ray: the fresh process that finds the package beside the config and
    # hands it to Ray's workers is the test above
    out = tmp_path / "res"
    p = raysplit_here("run", CONFIG, "--out", str(out), "--quiet", "--set", "algorithm=fedprox",
                      "--set", "model.name=my_lab.models:tiny_net", "--set", "imports=[my_lab.data, my_lab.topology, "
                      "my_lab.plugins, my_lab.algorithms]")
    assert p.returncode == 0, p.stderr
    m = pd.read_csv(out / "metrics.csv")
    assert (m["algorithm"] == "fedprox").all()
    assert set(pd.read_csv(out / "ledger.csv")["kind"]) == {"weights"}


@pytest.mark.parametrize("override,pattern", [
    ("model.name=my_lab.models:huge_net", r"^raysplit: error: model.name: 'my_lab.models:huge_net' .*tiny_net \(registered models\)"),
    ("topology=star", r"^raysplit: error: topology: 'star' .*one of vanilla, u_shaped, .*bottleneck"),
    ("data.dataset=rings", r"^raysplit: error: data.dataset: 'rings' .*stripes"),
    ("algorithm=fedprox2", r"^raysplit: error: algorithm: 'fedprox2' .*fedprox"),
    ("plugins=[{name: cut_stats2}]", r"^raysplit: error: plugins\[0\].name: 'cut_stats2' .*cut_stats"),
    ("imports=[my_lab.nothing]", r"^raysplit: error: imports\[0\]: 'my_lab.nothing' .*an importable Python module"),
])
def test_unregistered_names_are_one_line_exit_2(tmp_path, raysplit_here, override, pattern):
    # cli.main in this process: the command as a process of its own is tested above and in test_cli.py
    out = tmp_path / "res"
    p = raysplit_here("run", CONFIG, "--out", str(out), "--quiet", "--set", override)
    err = [line for line in p.stderr.splitlines() if line.startswith("raysplit: error")]
    assert p.returncode == 2 and len(err) == 1 and re.search(pattern, err[0]), p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


def test_fedprox_pulls_towards_the_global_weights(ray_session, monkeypatch):
    """The example algorithm does what it says: with one client and one round, FedProx ends closer to the
    starting weights than FedAvg."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from my_lab import algorithms
    from ray import cloudpickle
    from raysplit.algorithms import FedAvg

    cloudpickle.register_pickle_by_value(algorithms)   # the test's Ray workers do not have docs/examples on their path
    from raysplit.config import load
    from raysplit.experiment import prepare
    from raysplit.topology import ComposedNet

    cfg = load(CONFIG, ["data.num_clients=1", "training.rounds=1", "algorithm=fedavg", "plugins=[]"])
    plan = prepare(cfg)
    start = ComposedNet(plan.topology, plan.modules)
    fedavg, fedprox = train_with(FedAvg, plan), train_with(algorithms.FedProx, plan)
    assert 0 < max_param_diff(fedprox, start) < max_param_diff(fedavg, start)


def test_how_to_examples_in_the_docs_are_the_files_the_tests_run():
    """Every code block of docs/architecture.md's how-to section is a part of an example file verbatim."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    howto = doc[doc.index("## How to add"):]
    blocks = re.findall(r"```python\n(.*?)```", howto, re.S)
    assert len(blocks) >= 5
    sources = "\n".join(p.read_text() for p in (EXAMPLES / "my_lab").glob("*.py"))
    for block in blocks:
        assert block.strip() in sources, block[:200]


def test_the_actor_host_imports_no_algorithm():
    import subprocess
    import sys

    code = ("import sys, raysplit.host; "
            "print([m for m in sys.modules if m.startswith(('raysplit.algorithms', 'raysplit.compression'))])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
