"""The command line: a real run writes a results directory pandas reads; bad input is one line, exit 2,
nothing written."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raysplit import cli, data

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=64", "--set", "data.num_clients=2",
         "--set", "data.synthetic_shape=[1,8,8]", "--set", "model.cut_layers=[pool1]", "--set", "training.rounds=2",
         "--set", "runtime.worker.num_cpus=0.5", "--set", "runtime.server.num_cpus=0.5"]


def raysplit(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "raysplit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_run_writes_a_results_directory(tmp_path):
    out = tmp_path / "res"
    p = raysplit("run", "experiments/vanilla_fmnist.yaml", *SMALL, "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["checkpoints", "config.yaml", "flops.csv", "ledger.csv",
                                                     "metrics.csv", "model", "run.log", "summary.json"]
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["round"]) == [1, 2]
    for col in ("test_acc", "test_loss", "train_loss", "client_flops", "server_flops", "client_tflops_per_client",
                "bytes_client_to_server_activation", "bytes_server_to_client_gradient", "wall_s"):
        assert col in m.columns and m[col].notna().all()
    led = pd.read_csv(out / "ledger.csv")
    assert led.groupby("round")["bytes"].sum().tolist() == m["bytes_total"].tolist()
    assert json.loads((out / "summary.json").read_text())["final_test_acc"] == m["test_acc"].iloc[-1]
    log = (out / "run.log").read_text()
    assert "round 2/2" in log
    assert not list(tmp_path.glob(".*partial"))
    # the start speaks: the first line says what it waits for, written before Ray starts (Ray's own lines, in
    # run.log, come after it), then how long Ray and the party hosts took
    ours = [line for line in p.stderr.splitlines() if re.match(r"^\d\d:\d\d:\d\d ", line)]
    assert ours[0].endswith("starting a local Ray ...") and re.search(r"Ray up in [\d.]+ s: [\d.]+ CPUs", ours[1]), ours
    assert re.search(r"starting 2 party hosts: worker0, server ...", ours[2])
    assert re.search(r"party hosts ready in [\d.]+ s", ours[3])
    first, rays_own = log.index("starting a local Ray"), log.index("Started a local Ray instance")
    assert first < rays_own < log.index("Ray up in")


BAD = [
    (["--set", "data.dataset=imagenet"], r"^raysplit: error: data.dataset: 'imagenet' .* one of fashion_mnist"),
    (["--set", "model.cut_layers=[40]"], r"^raysplit: error: model.cut_layers: 40 .*fmnist_cnn has 10 layers"),
    (["--set", "data.num_clients=1000"], r"^raysplit: error: data.num_clients: 1000 .*at most the number of training samples \(64\)"),
    (["--set", "training.lr=fast"], r"^raysplit: error: training.lr: 'fast' .*a number > 0"),
    (["--set", "training.learning_rate=0.1"], r"^raysplit: error: training.learning_rate: 0.1 .*a known key of training"),
    (["--set", "data.medmnist_file=/nope.npz", "--set", "data.dataset=medmnist"], r"^raysplit: error: data.medmnist_file: '/nope.npz' does not exist"),
    (["--set", "runtime.server.num_cpus=8"], r"^raysplit: error: .*at most 2 CPUs"),
]


@pytest.mark.parametrize("extra,pattern", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, raysplit_here, extra, pattern):
    # the first case as a user meets it, a process of its own (the exit status of `python -m raysplit.cli`);
    # the others through cli.main in this process: the same checks, the same line, the same exit code
    run = raysplit if extra == BAD[0][0] else raysplit_here
    out = tmp_path / "res"
    p = run("run", "experiments/vanilla_fmnist.yaml", *SMALL, *extra, "--out", str(out), "--quiet",
            "--set", "runtime.address=null")
    err = [line for line in p.stderr.splitlines() if line.startswith("raysplit: error")]
    assert p.returncode == 2, p.stderr
    assert len(err) == 1 and re.search(pattern, err[0]), p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_data_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    out = tmp_path / "res"
    code = cli.main(["run", "experiments/vanilla_fmnist.yaml", "--set", f"data.root={tmp_path}", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("raysplit: error: data.dataset: fashion_mnist files not found")
    assert not out.exists()


def test_missing_config_file_and_bad_yaml(tmp_path):
    assert cli.main(["validate", str(tmp_path / "none.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert cli.main(["validate", str(bad)]) == 2


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"# 2\. .*\n(.+)\n", readme).group(1).strip()
    assert test_cmd in ci
