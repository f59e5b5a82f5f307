"""Cut-layer compression compared: one config trained under several codec settings, and what each costs in
accuracy and saves in client bandwidth.

    raysplit codecs CONFIG [--out DIR] [--set KEY=VALUE ...]

Writes DIR/<variant>/ (an ordinary results directory per setting), DIR/codecs.csv (per setting: final and
best accuracy, client GB per client, bytes relative to no codec) and DIR/accuracy_vs_client_gb.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import pandas as pd  # noqa: E402

from raysplit import config as config_mod  # noqa: E402
from raysplit.data import load_dataset  # noqa: E402
from raysplit.errors import RaysplitError  # noqa: E402

log = logging.getLogger("raysplit")

# name -> (activation codec, gradient codec); the top-k ratio is the config's compression.topk_ratio
VARIANTS = {
    "none": (None, None),
    "float16": ("float16", "float16"),
    "int8": ("int8", "int8"),
    "int8 + top-k gradients": ("int8", "topk"),
    "top-k": ("topk", "topk"),
}


def run_variants(config: str, overrides: list[str], out: Path, progress: bool = True) -> pd.DataFrame:
    # here, not at the top: these load torch and Ray, which `raysplit codecs -h` and a refused config do
    # without (as raysplit/cli.py's commands do)
    from raysplit.experiment import prepare, run
    from raysplit.results import check_free

    cfgs = {name: config_mod.load(config, [*overrides, f"compression.activation={a or 'null'}",
                                           f"compression.gradient={g or 'null'}"])
            for name, (a, g) in VARIANTS.items()}
    check_free(out)
    first = next(iter(cfgs.values()))
    dataset = load_dataset(first.data, first.seed)        # every variant trains on the same data
    rows = []
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        log.info("codecs: %s (%d/%d): activations %s, gradients %s", name, i, len(cfgs),
                 cfg.compression.activation or "as they are", cfg.compression.gradient or "as they are")
        result = run(cfg, out_dir=out / name.replace(" ", "_").replace("+", "and"), progress=progress,
                     plan=prepare(cfg, dataset))
        summary = json.loads((result.out_dir / "summary.json").read_text())
        rows.append(variant_row(name, cfg, summary, result.out_dir))
    return variants_table(rows)


def variant_row(name: str, cfg, summary: dict, run_dir: Path) -> dict:
    """A setting's row of codecs.csv. No codec (the config's null) is written "none": an empty cell, which
    pandas reads back (and prints) as NaN, would not say that the tensors crossed as they are."""
    return dict(variant=name, activation=cfg.compression.activation or "none",
                gradient=cfg.compression.gradient or "none", topk_ratio=cfg.compression.topk_ratio,
                final_test_acc=summary["final_test_acc"], best_test_acc=summary["best_test_acc"],
                client_gb_per_client=summary["client_gb_per_client"], run=str(run_dir))


def variants_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["bytes_vs_none"] = table["client_gb_per_client"] / table.loc[table["variant"] == "none", "client_gb_per_client"].iloc[0]
    return table


def plot(table: pd.DataFrame, title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table.itertuples():
        m = pd.read_csv(Path(row.run) / "metrics.csv")
        ax.plot(m["client_gb_per_client_cum"], m["test_acc"] * 100, marker="o",
                label=f"{row.variant} ({row.bytes_vs_none:.2f}x bytes)")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 3, 5)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("cumulative data sent + received per client (GB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="raysplit codecs", description=" ".join(__doc__.split("\n\n")[0].split()),
                                 epilog=" ".join(__doc__.split("\n\n")[2].split()))
    ap.add_argument("config", help="experiment YAML (its compression section is replaced by each setting)")
    ap.add_argument("--out", metavar="DIR", help="results directory (default results/<name>-codecs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        name = config_mod.load(args.config, args.set).name
        out = Path(args.out or f"results/{name}-codecs")
        table = run_variants(args.config, args.set, out, progress=not args.quiet)
    except RaysplitError as e:
        print(f"raysplit: error: {e}", file=sys.stderr)
        return 2
    table.to_csv(out / "codecs.csv", index=False)
    fig = plot(table, f"{name}: accuracy vs client bandwidth, by cut-layer codec")
    fig.savefig(out / "accuracy_vs_client_gb.png", dpi=130)
    print(table.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
