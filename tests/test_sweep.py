"""raysplit sweep: every grid point a Ray Tune trial; the table's figures equal direct runs of the same configs."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysplit import cli, config
from raysplit.errors import ConfigError
from raysplit.experiment import run
from raysplit.sweep import FIGURES, parse_grid, sweep

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "experiments" / "quickstart_synthetic.yaml")
# four trials at once on the test's 2 CPUs
TINY = ["runtime.worker.num_cpus=0.25", "runtime.server.num_cpus=0.25"]


def test_parse_grid():
    assert parse_grid(["data.num_clients=10,100", "model.cut_layers=[[pool1],[pool2]]"]) == {
        "data.num_clients": [10, 100], "model.cut_layers": [["pool1"], ["pool2"]]}
    assert parse_grid(["model.cut_layers=[pool1],[pool2]"]) == {"model.cut_layers": [["pool1"], ["pool2"]]}
    assert parse_grid(["training.lr=0.1"]) == {"training.lr": [0.1]}
    for bad in (["data.num_clients"], ["=1,2"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_a_bad_grid_point_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sw"
    code = cli.main(["sweep", QUICK, "--grid", "model.cut_layers=[[pool1],[nope]]", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("raysplit: error: model.cut_layers: 'nope'") and "grid point" in err[0]
    assert not out.exists()


def test_sweep_2x2_equals_direct_runs(ray_session, tmp_path):
    grid = {"model.cut_layers": [["pool1"], ["conv2"]], "data.num_clients": [2, 4]}
    result = sweep(QUICK, TINY, grid, out_dir=tmp_path / "sw", progress=False)
    out = result.out_dir
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and table["error"].isna().all()
    assert sorted(p.name for p in (out / "trials").iterdir()) == list(table["trial"])
    assert {(c, n) for c, n in zip(table["model.cut_layers"], table["data.num_clients"])} == {
        ('["pool1"]', 2), ('["pool1"]', 4), ('["conv2"]', 2), ('["conv2"]', 4)}
    for name in ("sweep_model.cut_layers.png", "sweep_data.num_clients.png"):
        assert (out / name).stat().st_size > 10_000
    for _, row in table.iterrows():
        trial_dir = Path(row["results"])
        assert trial_dir.parent == out / "trials" and (trial_dir / "metrics.csv").is_file()
        overrides = [*TINY, f"model.cut_layers={row['model.cut_layers']}", f"data.num_clients={row['data.num_clients']}"]
        direct = run(config.load(QUICK, overrides), out_dir=tmp_path / "direct" / row["trial"], progress=False)
        summary = json.loads((direct.out_dir / "summary.json").read_text())
        for col in FIGURES:
            if col != "wall_s":
                assert row[col] == summary[col], (row["trial"], col)
        assert row["wall_s"] > 0
    # the figures differ between grid points (the test would not notice a sweep that ran one config four times)
    assert table["client_gb_per_client"].nunique() == 4


def test_a_failing_trial_reports_its_error_line_and_the_table_keeps_the_others(tmp_path, monkeypatch):
    from ray import tune

    from raysplit import sweep as sweep_mod

    trials = sweep_mod.plan_trials(QUICK, TINY, {"training.lr": [0.05, 0.1]}, tmp_path / "sw")
    busy = trials[1].out
    busy.mkdir(parents=True)
    (busy / "other.txt").write_text("x")           # its results directory is taken: experiment.run refuses
    reported = []
    monkeypatch.setattr(tune, "report", reported.append)
    sweep_mod._trainable(trials, QUICK, str(tmp_path))({"trial": 1})
    assert reported == [{"error": f"ConfigError: output_dir: {str(busy)!r} is not allowed; expected a directory "
                                  "that does not exist yet or is empty"}]
    ok = {k: 0.5 for k in FIGURES} | {"error": ""}
    table = sweep_mod.trials_table(trials, {0: ok, 1: reported[0]})
    assert list(table["training.lr"]) == [0.05, 0.1]
    assert table["error"].isna().tolist() == [True, False] and table["error"][1].startswith("ConfigError: output_dir")
    assert table.loc[0, "final_test_acc"] == 0.5 and pd.isna(table.loc[1, "final_test_acc"])
    assert table.loc[1, "results"] == ""           # no results directory for the failed trial


def test_settings_grid_then_points_with_the_config_values_filled_in():
    from raysplit.sweep import settings

    base = config.load(QUICK, ["privacy.nopeek=0.1"])
    got = settings({"privacy.nopeek": [0, 1]}, [{"privacy": {"activation_noise": 0.5}}], base)
    assert got == [{"privacy.nopeek": 0, "privacy.activation_noise": 0.0},
                   {"privacy.nopeek": 1, "privacy.activation_noise": 0.0},
                   {"privacy.nopeek": 0.1, "privacy.activation_noise": 0.5}]
    with pytest.raises(ConfigError, match=r"^sweep.points\[0\]"):
        settings({}, [[1]], base)


def test_privacy_study_from_the_configs_sweep_section(ray_session, tmp_path, monkeypatch, capsys):
    """The settings come from the config's sweep: section; the trials' privacy measures become columns, a plot
    and a report table (accuracy, dcor, SSIM, client TFLOPs and GB per client per setting). One setting beside
    the config's own (several: test_settings_...), run as Tune runs a trial (its trainable, in this process:
    Tune's start-up is tested above)."""
    from ray import tune

    from analysis.privacy_utility import privacy_report
    from raysplit import sweep as sweep_mod

    raw = yaml.safe_load(Path(QUICK).read_text())
    raw.update(privacy={"leakage_probe": 32}, attacks={"model_inversion": True, "aux_samples": 32, "targets": 4,
                                                        "decoder_epochs": 2},
               sweep={"grid": {"privacy.nopeek": [1]}})
    raw["training"]["rounds"] = 1
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "study"
    trials = sweep_mod.plan_trials(path, TINY, config.load(path).sweep.grid, out)
    reported = []
    monkeypatch.setattr(tune, "report", reported.append)
    for i in range(len(trials)):
        sweep_mod._trainable(trials, str(path), str(tmp_path))({"trial": i})
    table = sweep_mod.trials_table(trials, dict(enumerate(reported)))
    assert list(table["privacy.nopeek"]) == [1]
    privacy_report(table, list(trials[0].point), out, "study")
    report = pd.read_csv(out / "privacy_report.csv")
    assert list(report["setting"]) == ["nopeek=1"]
    for col in ("final_test_acc", "dcor", "inversion_ssim", "client_tflops_per_client", "client_gb_per_client"):
        assert report[col].notna().all(), col
    trial = pd.read_csv(Path(table["results"][0]) / "metrics.csv")          # the trial's own tables, as run writes
    assert report["dcor"][0] == trial["dcor_s0"].iloc[-1] and report["final_test_acc"][0] == trial["test_acc"].iloc[-1]
    assert "| nopeek=1 |" in (out / "privacy_report.md").read_text()
    assert (out / "privacy_utility.png").stat().st_size > 10_000
    # without --grid and without a sweep: section there is nothing to run: one line, exit 2
    capsys.readouterr()
    assert cli.main(["sweep", QUICK, "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep: section" in err[0] and not (tmp_path / "none").exists()
