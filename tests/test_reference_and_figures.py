"""Issue 25, items 4 and 5: docs/config.md is the schema's (every field described, the file up to date), and the
figures and help texts tell things apart: runs of one method, log-axis labels, sweep ticks, what colour means,
codecs.csv's "none" row, the files paper_tables.md names, `raysplit codecs -h` and `costs query -h`.
No Ray: the figures are drawn from small metrics.csv files written here."""
from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysplit import config, config_reference, config_schema

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- docs/config.md

def sections(cls=config_schema.ExperimentConfig, prefix=""):
    """(class, dotted name, field) of every field, nested sections included."""
    hints = typing.get_type_hints(cls, vars(config_schema))
    for f in dataclasses.fields(cls):
        yield cls, prefix + f.name, f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from sections(hints[f.name], prefix + f.name + ".")
        item = typing.get_args(hints[f.name])[:1] if typing.get_origin(hints[f.name]) is list else ()
        if item and dataclasses.is_dataclass(item[0]):          # vertical.holders: a list of HolderConfig
            yield from sections(item[0], prefix + f.name + "[].")


def test_every_config_field_has_a_description():
    missing = [name for cls, name, f in sections() if not config_reference.description(cls, f.name)]
    assert missing == [], "describe these fields in config_schema.DESCRIPTIONS"
    known = {f"{k.__name__}.{f.name}" for cls, _, f in sections() for k in cls.__mro__ if dataclasses.is_dataclass(k)
             for f in dataclasses.fields(k)}
    assert sorted(set(config_schema.DESCRIPTIONS) - known) == [], "descriptions of fields that are gone"


def test_docs_config_md_is_what_the_schema_renders():
    assert (ROOT / "docs" / "config.md").read_text() == config_reference.render(), \
        "regenerate: python -m raysplit.config_reference docs/config.md"


def test_the_reference_lists_every_field_with_its_type_default_and_allowed_values():
    text = config_reference.render()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_.\[\]]+)` \|.*$", text, re.M)}
    assert sorted(rows) == sorted(name for _, name, _ in sections())
    assert rows["data.partition"].startswith('| `data.partition` | string | `"iid"` | iid, dirichlet, shards, natural |')
    assert '| `training.lr` | float | `0.05` | a number > 0 |' in rows["training.lr"]
    assert '| int or null | `null` | an integer in 1..1,024 (or null) |' in rows["runtime.server.torch_threads"]
    assert '| `network.server.up_mbps` | float | `1000.0` |' in rows["network.server.up_mbps"]   # HubLinkConfig's
    for name in ("torch_threads", "deterministic", "eval_every", "client_order", "output_dir", "medmnist_file",
                 "shards_per_client", "decoder_epochs", "positive_class", "weight_decay"):   # the ten
        assert any(n.endswith("." + name) or n == name for n in rows), name
    defaults = config.to_dict(config.from_dict({}))
    for name, row in rows.items():
        if "[]" in name or "| section (below) |" in row:
            continue
        value = defaults
        for part in name.split("."):
            value = value[part]
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()) or not value:
            assert f"`{config_reference.default_text(value)}`" in row, name
    assert "## Bring your own data" in text and "raysplit validate" in text


# --------------------------------------------------------------------------------------------- figures

def write_run(d: Path, algorithm: str, clients: int, scale: float = 1.0, acc0: float = 0.3) -> Path:
    """A results directory of 4 rounds: small numbers within one decade, as a short run has."""
    d.mkdir(parents=True, exist_ok=True)
    r = np.arange(1, 5)
    pd.DataFrame(dict(round=r, algorithm=algorithm, num_clients=clients, test_acc=acc0 + 0.05 * r,
                      client_tflops_per_client_cum=0.0021 * r * scale, client_gb_per_client_cum=0.00013 * r * scale,
                      wall_s_cum=3.0 * r, sim_time_s_cum=1.7 * r * scale)).to_csv(d / "metrics.csv", index=False)
    return d


@pytest.fixture(scope="module")
def two_comparisons(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "runA" / "splitnn", "splitnn", 3)
    write_run(root / "runA" / "fedavg", "fedavg", 3, 1.3)
    write_run(root / "runB" / "splitnn", "splitnn", 3, 1.1, 0.35)
    return root


def legend(ax) -> dict[str, str]:
    return {line.get_label(): line.get_color() for line in ax.lines}


def test_two_runs_of_a_method_get_their_own_label_and_colour(two_comparisons):
    from analysis import plots

    df = plots.load_runs([two_comparisons / "runA", two_comparisons / "runB"])
    fig = plots.accuracy_curve(df, "client_tflops_per_client_cum", "x", "t", logx=True)
    drawn = legend(fig.axes[0])
    assert drawn == {"SplitNN \N{EM DASH} runA/splitnn (3 clients)": plots.COLORS["splitnn"],
                     "SplitNN \N{EM DASH} runB/splitnn (3 clients)": plots.shade(plots.COLORS["splitnn"], 1),
                     "Federated averaging (3 clients)": plots.COLORS["fedavg"]}
    assert len(set(drawn.values())) == 3
    bars = plots.grouped_bars(df, "client_gb_per_client_cum", "GB", "t", "%.3g").axes[0]
    assert [t.get_text() for t in bars.get_legend().get_texts()] == [
        "SplitNN \N{EM DASH} runA/splitnn", "SplitNN \N{EM DASH} runB/splitnn", "Federated averaging"]
    assert len(bars.patches) == 3                                # not averaged into one bar


def test_plot_label_names_the_runs(two_comparisons, tmp_path, capsys):
    from analysis import plots

    df = plots.load_runs([two_comparisons / "runA", two_comparisons / "runB" / "splitnn"], labels=["base", "tuned"])
    assert set(legend(plots.accuracy_curve(df, "wall_s_cum", "x", "t").axes[0])) == {
        "base: SplitNN (3 clients)", "base: Federated averaging (3 clients)", "tuned (3 clients)"}
    assert plots.main([str(two_comparisons / "runA"), "--label", "a", "--label", "b", "--out", str(tmp_path)]) == 2
    assert "--label: 2 given for 1 results directories" in capsys.readouterr().err


def overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            labels = [t for t, loc in zip(axis.get_ticklabels(which="both"),
                                          [*axis.get_majorticklocs(), *axis.get_minorticklocs()])
                      if t.get_visible() and t.get_text() and lo <= loc <= hi]
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            pairs += [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    return pairs


def test_log_axis_labels_do_not_overlap_on_a_small_run(two_comparisons):
    from analysis import plots

    df = plots.load_runs([two_comparisons / "runA"])
    for x in ("client_tflops_per_client_cum", "client_gb_per_client_cum", "sim_time_s_cum"):
        fig = plots.accuracy_curve(df, x, "x", "t", logx=True)
        assert overlapping_tick_labels(fig) == [], x
        assert len([t for t in fig.axes[0].get_xticklabels() if t.get_text()]) >= 2, x   # still labelled
    # 1.2e-3 .. 1.9e-3: matplotlib labelled every minor tick, 1.2x10^-3 ... 1.9x10^-3, one over another
    narrow = df.assign(client_tflops_per_client_cum=1.2e-3 * (1.9 / 1.2) ** ((df["round"] - 1) / 3))
    assert overlapping_tick_labels(plots.accuracy_curve(narrow, "client_tflops_per_client_cum", "x", "t", logx=True)) == []
    wide = df.assign(client_tflops_per_client_cum=df["client_tflops_per_client_cum"] * 10.0 ** (df["round"] * 2))
    assert overlapping_tick_labels(plots.accuracy_curve(wide, "client_tflops_per_client_cum", "x", "t", logx=True)) == []
    assert overlapping_tick_labels(plots.grouped_bars(df, "client_gb_per_client_cum", "GB", "t", "%.3g")) == []


def test_sweep_ticks_at_the_swept_values_and_accuracy_in_percent():
    from raysplit.sweep import sweep_figure

    table = pd.DataFrame(dict(trial=["a", "b", "c"], **{"data.num_clients": [2, 3, 4]},
                              final_test_acc=[0.5, 0.625, 0.75], client_gb_per_client=[0.1, 0.2, 0.3],
                              error=[None, None, None]))
    fig = sweep_figure(table, "data.num_clients", ["data.num_clients"], "t")
    fig.canvas.draw()
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "3", "4"]   # no 2.25 clients
    assert fig.axes[0].get_ylabel() == "final test accuracy (%)"
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [50.0, 62.5, 75.0])
    wide = table.assign(**{"data.num_clients": [10, 100, 1000]})
    fig = sweep_figure(wide, "data.num_clients", ["data.num_clients"], "t")
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["10", "100", "1000"]
    assert overlapping_tick_labels(fig) == []


def test_costs_time_colour_means_the_method_in_every_panel(monkeypatch):
    from types import SimpleNamespace

    from analysis import time_model
    from raysplit.config import HubLinkConfig, LinkConfig, NetworkConfig

    # the closed forms take minutes for VGG and ResNet on a busy machine; the figure's colours do not need them
    monkeypatch.setattr(time_model, "splitnn_time", lambda *a, **k: SimpleNamespace(total_s=100.0 / max(1, a[5])))
    monkeypatch.setattr(time_model, "fedavg_time", lambda *a, **k: SimpleNamespace(total_s=2.0 * max(1, a[4])))
    monkeypatch.setattr(time_model, "model_size", lambda m, *a: {"fmnist_cnn": 10**5, "vgg16": 10**7}.get(m, 10**8))
    net = NetworkConfig(client=LinkConfig(flops_per_s=1e10), server=HubLinkConfig(flops_per_s=1e11))
    fig = time_model.time_crossover_figure(net)
    assert len(fig.axes) == 4
    colors = {"SplitNN": time_model.METHOD_STYLE["SplitNN"]["color"], "FedAvg": time_model.METHOD_STYLE["FedAvg"]["color"]}
    seen = set()
    for ax in fig.axes:
        for line in ax.lines:
            label = line.get_label()
            method = next((m for m in colors if label.startswith(m)), None)
            if method:
                assert line.get_color() == colors[method], (ax.get_xlabel(), label)
                seen.add((ax.get_xlabel(), method))
            else:        # crossover marks and the per-model markers of the last panel: no third meaning of colour
                assert line.get_color() in (*colors.values(), time_model.CROSSOVER_COLOR), (ax.get_xlabel(), label)
    assert len(seen) == 8                                      # both methods in each panel, by name


# --------------------------------------------------------------------------------------------- tables and help

def test_codecs_csv_says_none_where_no_codec_is_used(tmp_path):
    from analysis import codecs

    rows = []
    for name, (a, g) in codecs.VARIANTS.items():
        cfg = config.from_dict({"compression": {"activation": a, "gradient": g}})
        rows.append(codecs.variant_row(name, cfg, {"final_test_acc": 0.5, "best_test_acc": 0.6,
                                                   "client_gb_per_client": 2.0 if a is None else 1.0}, tmp_path))
    codecs.variants_table(rows).to_csv(tmp_path / "codecs.csv", index=False)
    back = pd.read_csv(tmp_path / "codecs.csv")
    assert not back.drop(columns=["run"]).isna().any().any()
    none = back[back["variant"] == "none"].iloc[0]
    assert (none["activation"], none["gradient"], none["bytes_vs_none"]) == ("none", "none", 1.0)


def test_paper_tables_md_names_only_files_in_the_repository():
    text = (ROOT / "analysis" / "paper_tables.md").read_text()
    assert "PAPER.md" not in text
    named = set(re.findall(r"\b(?:analysis|raysplit|docs|experiments)/[\w/.-]+\.(?:py|md|yaml|png)\b", text))
    assert named and all((ROOT / p).is_file() for p in named), named


def test_codecs_help_is_whole_sentences(capsys):
    from raysplit import cli

    with pytest.raises(SystemExit):
        cli.main(["codecs", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert "what each costs in accuracy and saves in client bandwidth." in out
    assert "DIR/codecs.csv" in out and "DIR/accuracy_vs_client_gb.png." in out


def test_every_costs_option_has_help():
    import argparse

    from analysis import costs

    parser = costs._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        bare = [a.dest for a in p._actions if not a.help]
        assert bare == [], f"costs {name}: options without help"
