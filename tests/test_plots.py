"""Plots come from real results, and what they draw equals the metrics."""
import shutil

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from analysis import plots
from conftest import shared_run, small_config
from raysplit import cli, config
from raysplit.experiment import run


@pytest.fixture(scope="module")
def results(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    for algorithm, clients in (("splitnn", 2), ("centralized", 3)):
        run(small_config(f"algorithm={algorithm}", f"data.num_clients={clients}"),
            out_dir=root / f"{algorithm}_{clients}", progress=False)
    # splitnn on 3 clients is the tiny config itself: its run for the session (test_recovery.py and
    # test_defences.py read it too), copied beside the others
    shutil.copytree(shared_run()[1].out_dir, root / "splitnn_3")
    assert config.load(root / "splitnn_3" / "config.yaml").data.num_clients == 3
    return root


def test_report_files_are_written_and_are_images(results, tmp_path):
    written = plots.make_report([results], tmp_path)
    for name, path in written.items():
        assert path.is_file() and path.stat().st_size > 0, name
        if path.suffix == ".png":
            assert imread(path).shape[0] > 300
    report = written["report"].read_text()
    assert "accuracy_vs_client_tflops.png" in report and "SplitNN" in report


def test_accuracy_curve_plots_the_metrics(results):
    df = plots.load_runs([results])
    fig = plots.accuracy_curve(df, "client_tflops_per_client_cum", "x", "t")
    lines = fig.axes[0].lines
    assert len(lines) == 2                       # centralized has no client-side compute: not on this plot
    for line in lines:
        clients = int(line.get_label().split("(")[1].split()[0])
        m = pd.read_csv(results / f"splitnn_{clients}" / "metrics.csv")
        np.testing.assert_array_equal(line.get_xdata(), m["client_tflops_per_client_cum"])
        np.testing.assert_array_equal(line.get_ydata(), m["test_acc"] * 100)
        assert line.get_color() == plots.COLORS["splitnn"]


def test_bars_are_the_final_cumulative_values(results):
    df = plots.load_runs([results])
    fig = plots.grouped_bars(df, "client_gb_per_client_cum", "GB", "t", "%.3g")
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    expect = sorted(pd.read_csv(results / f"splitnn_{k}" / "metrics.csv")["client_gb_per_client_cum"].iloc[-1]
                    for k in (2, 3))
    np.testing.assert_allclose(heights, expect, rtol=0, atol=0)


def test_plot_cli_refuses_a_folder_without_results(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "is not a results directory" in capsys.readouterr().err
