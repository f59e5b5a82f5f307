"""Plots and a report from results directories (what `raysplit run` / `raysplit compare` write).

Every figure is drawn from the runs' metrics.csv, nothing else: accuracy versus cumulative client-side
TFLOPs (the papers' Figure 3), bandwidth and compute per client grouped by number of clients (Tables 2
and 1), accuracy versus wall time and versus bytes. One colour per method in every figure.

    raysplit plot RESULTS_DIR... [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

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


def load_runs(paths: list[str | Path], network: dict | None = None) -> pd.DataFrame:
    """All rounds of all runs, one row per (run, round), with the run's directory in column ``run``.
    ``network``: re-price every run's simulated time on this network (a raw ``network:`` mapping); runs
    written before the network model get theirs computed from their tables."""
    # here, not at the top: raysplit.results loads torch and Ray, which plotting runs that already carry
    # their simulated time (and ``import analysis.plots``) does without
    from raysplit.results import simulate

    frames = []
    for run in find_runs(paths):
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
    return df.sort_values(["method", "num_clients", "run", "round"], kind="stable")


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last round (cumulative columns hold the run's totals)."""
    return df.groupby("run", sort=False).tail(1)


def _label(row) -> str:
    return f"{LABELS.get(row.algorithm, row.algorithm)} ({row.num_clients} clients)"


def _style(algorithm: str, num_clients: int, all_clients: list[int]) -> dict:
    dashes = ["-", "--", ":", "-."]
    return dict(color=COLORS.get(algorithm, "tab:gray"), linestyle=dashes[all_clients.index(num_clients) % 4],
                marker="o", markersize=3)


def accuracy_curve(df: pd.DataFrame, x: str, xlabel: str, title: str, logx: bool = False) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    clients = sorted(df["num_clients"].unique())
    for run, g in df.groupby("run", sort=False):
        g = g.dropna(subset=["test_acc"])
        if g.empty or g[x].isna().all() or (x.startswith("client_") and g[x].max() == 0):   # no client-side work (centralized)
            continue
        first = g.iloc[0]
        ax.plot(g[x], g["test_acc"] * 100, label=_label(first), **_style(first.algorithm, first.num_clients, clients))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:         # nothing to draw (no simulated time): no empty legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grouped_bars(df: pd.DataFrame, column: str, ylabel: str, title: str, fmt: str) -> plt.Figure:
    """One group per number of clients, one bar per method: the papers' table comparisons."""
    last = final_rows(df)
    last = last[last.groupby("algorithm")[column].transform("max") > 0]   # the centralized reference has no clients
    table = last.pivot_table(index="num_clients", columns="method", values=column, aggfunc="mean", observed=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(1, len(table.columns))
    for i, method in enumerate(table.columns):
        xs = [j + (i - (len(table.columns) - 1) / 2) * width for j in range(len(table.index))]
        bars = ax.bar(xs, table[method], width, color=COLORS.get(method, "tab:gray"), label=LABELS.get(method, method))
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
    ax.set_xticks(range(len(table.index)), [f"{n} clients" for n in table.index])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_yscale("log")
    ax.margins(y=0.15)
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
        "method": [LABELS.get(a, a) for a in last["algorithm"]],
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


def sim_time_panels(paths: list[str | Path], networks: dict[str, dict | None]) -> plt.Figure:
    """Accuracy vs simulated time, one panel per network ({label: raw network mapping; None: the runs' own})."""
    fig, axes = plt.subplots(1, len(networks), figsize=(6.5 * len(networks), 4.8), sharey=True, squeeze=False)
    for ax, (label, network) in zip(axes[0], networks.items()):
        df = load_runs(paths, network)
        clients = sorted(df["num_clients"].unique())
        for run, g in df.groupby("run", sort=False):
            g = g.dropna(subset=["test_acc"])
            if g.empty or g["sim_time_s_cum"].max() == 0:
                continue
            first = g.iloc[0]
            ax.plot(g["sim_time_s_cum"], g["test_acc"] * 100, label=_label(first),
                    **_style(first.algorithm, first.num_clients, clients))
        ax.set_xscale("log")
        ax.set_xlabel("simulated time (s, log scale)")
        ax.set_title(f"{label}\n{_network_line(paths, network)}", fontsize=9)
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


def make_report(paths: list[str | Path], out: str | Path, networks: list[str | Path] = ()) -> dict[str, Path]:
    """Write every figure and report.md (figures + table) into ``out``; return {name: path}. ``networks``:
    YAML files with a ``network:`` section; the first re-prices the simulated times, and with several,
    accuracy_vs_sim_time_networks.png draws one panel per network."""
    loaded = {Path(p).stem: load_network(p) for p in networks}
    df = load_runs(paths, next(iter(loaded.values()), None))
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
        figs["accuracy_vs_sim_time_networks"] = sim_time_panels(paths, loaded)
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
    args = ap.parse_intermixed_args(argv)      # options before, between or after the directories
    try:
        written = make_report(args.results, args.out or Path(args.results[0]) / "report", networks=args.network)
    except RaysplitError as e:
        print(f"raysplit: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {written['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
