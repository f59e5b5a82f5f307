"""Plots and a report from results directories (what `raysplit run` / `raysplit compare` write).

Every figure is drawn from the runs' metrics.csv, nothing else: accuracy versus cumulative client-side
TFLOPs (the papers' Figure 3), bandwidth and compute per client grouped by number of clients (Tables 2
and 1), accuracy versus wall time and versus bytes. One colour per method in every figure; two runs of the
same method on as many clients are told apart by their directory names (or by --label), each in a shade of
the method's colour.

    raysplit plot RESULTS_DIR... [--out DIR] [--label TEXT ...]
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_hex, to_rgb  # noqa: E402

from raysplit import config as config_mod  # noqa: E402
from raysplit.errors import RaysplitError  # noqa: E402
from raysplit.network import describe, load_network, network_for  # noqa: E402

COLORS = {"splitnn": "tab:blue", "fedavg": "tab:red", "large_batch_sgd": "tab:green", "splitfed": "tab:purple",
          "async_split": "tab:orange", "centralized": "black"}
LABELS = {"splitnn": "SplitNN", "fedavg": "Federated averaging", "large_batch_sgd": "Large-batch sync. SGD",
          "splitfed": "SplitFed", "async_split": "Async split learning", "centralized": "Centralized (reference)"}
ORDER = list(COLORS)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Results directories under the given paths: a run itself, or a comparison holding runs."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file():
            runs.append(p)
        elif p.is_dir() and any((c / "metrics.csv").is_file() for c in p.iterdir()):
            runs += sorted(c for c in p.iterdir() if (c / "metrics.csv").is_file())
        else:
            raise RaysplitError(f"results: {str(p)!r} is not a results directory; expected a folder holding "
                                "metrics.csv, or folders that do (as `raysplit run` and `raysplit compare` write)")
    return runs


def load_runs(paths: list[str | Path], network: dict | None = None, labels: list[str] | None = None) -> pd.DataFrame:
    """All rounds of all runs, one row per (run, round), with the run's directory in column ``run``, its name in
    the figures in ``series`` (and ``label``, with its number of clients) and its colour in ``color``.
    ``network``: re-price every run's simulated time on this network (a raw ``network:`` mapping); runs
    written before the network model get theirs computed from their tables. ``labels``: one per path, naming
    its run (or prefixing its comparison's runs) in the figures."""
    if labels is not None and len(labels) != len(paths):
        raise RaysplitError(f"--label: {len(labels)} given for {len(paths)} results directories; expected one "
                            "label per results directory, in the same order")
    # here, not at the top: raysplit.results loads torch and Ray, which plotting runs that already carry
    # their simulated time (and ``import analysis.plots``) does without
    from raysplit.results import simulate

    frames, named = [], {}
    for i, path in enumerate(paths):
        found = find_runs([path])
        for run in found:
            named[str(run)] = (labels[i], len(found) > 1) if labels is not None else None
    for run in map(Path, named):
        df = pd.read_csv(run / "metrics.csv")
        if network is not None or "sim_time_s_cum" not in df.columns:
            try:
                df = simulate(run, network)
            except RaysplitError:
                if network is not None:
                    raise
                df["sim_time_s_cum"] = float("nan")     # no config.yaml or tables to price: no simulated time
        df.insert(0, "run", str(run))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["method"] = pd.Categorical(df["algorithm"], categories=ORDER + sorted(set(df["algorithm"]) - set(ORDER)))
    df = df.sort_values(["method", "num_clients", "run", "round"], kind="stable")
    runs = final_rows(df)
    series = _series(runs, named)
    df["series"] = df["run"].map(series)
    df["label"] = [f"{s} ({n} clients)" for s, n in zip(df["series"], df["num_clients"])]
    shades: dict[str, list[str]] = {}            # method -> its series, in order: the first in the method's colour
    for run in runs.itertuples():
        shades.setdefault(run.algorithm, [])
        if series[run.run] not in shades[run.algorithm]:
            shades[run.algorithm].append(series[run.run])
    color = {r.run: shade(COLORS.get(r.algorithm, "tab:gray"), shades[r.algorithm].index(series[r.run]))
             for r in runs.itertuples()}
    df["color"] = df["run"].map(color)
    return df


def _series(runs: pd.DataFrame, named: dict) -> dict[str, str]:
    """{run: its name in figures}: the method's, after the user's --label where one was given; where two runs of
    one method on as many clients would share a name, each also gets the end of its path that tells them apart."""
    out = {}
    for r in runs.itertuples():
        method = LABELS.get(r.algorithm, r.algorithm)
        given = named.get(r.run)
        out[r.run] = method if given is None else (f"{given[0]}: {method}" if given[1] else given[0])
    groups: dict[tuple, list[str]] = {}
    for r in runs.itertuples():
        groups.setdefault((out[r.run], r.num_clients), []).append(r.run)
    for same in groups.values():
        if len(same) > 1:
            for run, tail in zip(same, distinct_tails(same)):
                out[run] = f"{out[run]} \N{EM DASH} {tail}"
    return out


def distinct_tails(paths: list[str]) -> list[str]:
    """The shortest ends of the paths that differ: ``a/cmp/splitnn``, ``b/cmp/splitnn`` -> ``a/cmp/splitnn``...
    ``runA``, ``runB`` from ``results/runA`` and ``results/runB``."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max(map(len, parts)) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in paths]


def shade(color: str, i: int) -> str:
    """The i-th shade of a colour: 0 the colour itself, then darker and lighter in turn."""
    if i == 0:
        return color
    rgb = np.array(to_rgb(color))
    step = 0.35 * ((i + 1) // 2)
    mixed = rgb * (1 - step) if i % 2 else rgb + (1 - rgb) * step
    return to_hex(np.clip(mixed, 0, 1))


def log_ticks(axis) -> None:
    """Labels on a log axis that never overlap, whatever its span: plain numbers at 1, 10, 100 (1, 2, 5 within
    a few decades, a few evenly spaced values within less than one) and no labels on the minor ticks, which
    matplotlib otherwise labels on a short axis, one over another."""
    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0 or hi <= lo:
        return
    decades = np.log10(hi / lo)
    if decades < 1:
        axis.set_major_locator(ticker.MaxNLocator(nbins=4))
    else:
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0) if decades < 3 else (1.0,)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last round (cumulative columns hold the run's totals)."""
    return df.groupby("run", sort=False).tail(1)


def _style(row, all_clients: list[int]) -> dict:
    """The run's colour (its method's, or a shade of it), a line style per number of clients."""
    dashes = ["-", "--", ":", "-."]
    return dict(color=row.color, linestyle=dashes[all_clients.index(row.num_clients) % 4], marker="o", markersize=3,
                label=row.label)


def wrapped(title: str, width: int = 72) -> str:
    """A title's lines wrapped to fit a figure's width (a network's description is long)."""
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def accuracy_curve(df: pd.DataFrame, x: str, xlabel: str, title: str, logx: bool = False) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    clients = sorted(df["num_clients"].unique())
    for run, g in df.groupby("run", sort=False):
        g = g.dropna(subset=["test_acc"])
        if g.empty or g[x].isna().all() or (x.startswith("client_") and g[x].max() == 0):   # no client-side work (centralized)
            continue
        ax.plot(g[x], g["test_acc"] * 100, **_style(g.iloc[0], clients))
    if logx:
        ax.set_xscale("log")
        log_ticks(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(wrapped(title))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:         # nothing to draw (no simulated time): no empty legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grouped_bars(df: pd.DataFrame, column: str, ylabel: str, title: str, fmt: str) -> plt.Figure:
    """One group per number of clients, one bar per method: the papers' table comparisons."""
    last = final_rows(df)
    last = last[last.groupby("algorithm")[column].transform("max") > 0]   # the centralized reference has no clients
    order = list(dict.fromkeys(last["series"]))              # by method, as load_runs sorts the runs
    table = last.pivot_table(index="num_clients", columns="series", values=column, aggfunc="mean")[order]
    color = dict(zip(last["series"], last["color"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(1, len(table.columns))
    for i, series in enumerate(table.columns):
        xs = [j + (i - (len(table.columns) - 1) / 2) * width for j in range(len(table.index))]
        bars = ax.bar(xs, table[series], width, color=color[series], label=series)
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
    ax.set_xticks(range(len(table.index)), [f"{n} clients" for n in table.index])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_yscale("log")
    ax.margins(y=0.15)
    log_ticks(ax.yaxis)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    last = final_rows(df)
    best = df.groupby("run", sort=False)["test_acc"].max()
    return pd.DataFrame({
        "method": last["series"].to_numpy(),
        "clients": last["num_clients"].to_numpy(),
        "rounds": last["round"].to_numpy(),
        "final test acc (%)": (last["test_acc"] * 100).round(2).to_numpy(),
        "best test acc (%)": (best.loc[last["run"]] * 100).round(2).to_numpy(),
        "client TFLOPs / client": last["client_tflops_per_client_cum"].to_numpy(),
        "client GB / client": last["client_gb_per_client_cum"].to_numpy(),
        "wall (s)": last["wall_s_cum"].round(1).to_numpy(),
        "simulated (s)": last["sim_time_s_cum"].round(1).to_numpy(),
        "run": last["run"].to_numpy(),
    })


def _markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sim_time_panels(paths: list[str | Path], networks: dict[str, dict | None],
                    labels: list[str] | None = None) -> plt.Figure:
    """Accuracy vs simulated time, one panel per network ({label: raw network mapping; None: the runs' own})."""
    fig, axes = plt.subplots(1, len(networks), figsize=(6.5 * len(networks), 4.8), sharey=True, squeeze=False)
    for ax, (label, network) in zip(axes[0], networks.items()):
        df = load_runs(paths, network, labels)
        clients = sorted(df["num_clients"].unique())
        for run, g in df.groupby("run", sort=False):
            g = g.dropna(subset=["test_acc"])
            if g.empty or g["sim_time_s_cum"].max() == 0:
                continue
            ax.plot(g["sim_time_s_cum"], g["test_acc"] * 100, **_style(g.iloc[0], clients))
        ax.set_xscale("log")
        log_ticks(ax.xaxis)
        ax.set_xlabel("simulated time (s, log scale)")
        ax.set_title(wrapped(f"{label}\n{_network_line(paths, network)}", 80), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle("Accuracy vs simulated training time (ledger and FLOPs priced on the network)")
    fig.tight_layout()
    return fig


def _network_line(paths: list[str | Path], network: dict | None) -> str:
    try:
        cfg = config_mod.load(find_runs(paths)[0] / "config.yaml")
    except RaysplitError:
        return "(no config.yaml: no network to price on)"
    return describe(network_for(cfg, network).cfg)


def make_report(paths: list[str | Path], out: str | Path, networks: list[str | Path] = (),
                labels: list[str] | None = None) -> dict[str, Path]:
    """Write every figure and report.md (figures + table) into ``out``; return {name: path}. ``networks``:
    YAML files with a ``network:`` section; the first re-prices the simulated times, and with several,
    accuracy_vs_sim_time_networks.png draws one panel per network. ``labels``: one per path (load_runs)."""
    loaded = {Path(p).stem: load_network(p) for p in networks}
    df = load_runs(paths, next(iter(loaded.values()), None), labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = {
        "accuracy_vs_client_tflops": accuracy_curve(
            df, "client_tflops_per_client_cum", "cumulative client-side compute per client (TFLOPs)",
            "Accuracy vs client-side compute (cf. Figure 3)", logx=True),
        "accuracy_vs_client_gb": accuracy_curve(
            df, "client_gb_per_client_cum", "cumulative data sent + received per client (GB)",
            "Accuracy vs client bandwidth", logx=True),
        "accuracy_vs_wall_time": accuracy_curve(df, "wall_s_cum", "wall time (s)", "Accuracy vs wall time"),
        "accuracy_vs_sim_time": accuracy_curve(
            df, "sim_time_s_cum", "simulated time on the network (s, log scale)",
            f"Accuracy vs simulated time\n{_network_line(paths, next(iter(loaded.values()), None))}", logx=True),
        "bandwidth_per_client": grouped_bars(
            df, "client_gb_per_client_cum", "GB per client (sent + received, log scale)",
            "Bandwidth per client (cf. Table 2)", "%.3g"),
        "client_tflops_per_client": grouped_bars(
            df, "client_tflops_per_client_cum", "client-side TFLOPs per client (log scale)",
            "Client-side compute per client (cf. Table 1)", "%.3g"),
    }
    if len(loaded) > 1:
        figs["accuracy_vs_sim_time_networks"] = sim_time_panels(paths, loaded, labels)
    figs = {name: save(fig, out / f"{name}.png") for name, fig in figs.items()}
    table = summary_table(df)
    table.to_csv(out / "summary.csv", index=False)
    lines = ["# raysplit report", "", "Runs: " + ", ".join(f"`{r}`" for r in table["run"]), "",
             _markdown(table.drop(columns=["run"])), "",
             "Client-side compute is measured per party with torch's FlopCounterMode (forward + backward); "
             "bytes are sums of the ledger (every tensor that crossed a party boundary), sent + received, "
             "averaged over clients. Simulated time prices the ledger and the FLOPs on the runs' network "
             "(raysplit/network.py; `--network FILE` re-prices).", ""]
    for name, path in figs.items():
        lines += [f"## {name.replace('_', ' ')}", "", f"![{name}]({path.name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return {**figs, "report": out / "report.md", "summary": out / "summary.csv"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="raysplit plot", description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results directories (runs or comparisons)")
    ap.add_argument("--out", help="where to write the figures and report.md (default: <first results dir>/report)")
    ap.add_argument("--network", action="append", default=[], metavar="YAML",
                    help="re-price the simulated time on this network (a YAML file with a network: section); "
                         "repeat for a figure with one panel per network")
    ap.add_argument("--label", action="append", metavar="TEXT",
                    help="the name of a results directory's run in the figures, one per directory in order (a "
                         "comparison's runs get it before their method's name); default: the method's name, and "
                         "where two runs of a method would share it, their directory names")
    args = ap.parse_intermixed_args(argv)      # options before, between or after the directories
    try:
        named = {"labels": args.label} if args.label else {}
        written = make_report(args.results, args.out or Path(args.results[0]) / "report", networks=args.network,
                              **named)
    except RaysplitError as e:
        print(f"raysplit: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {written['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
