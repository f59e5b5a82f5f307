"""The privacy-utility study: what a defence buys in privacy and costs in accuracy, compute and bandwidth.

Drawn from a sweep's trials table (``raysplit sweep``, one trial per defence setting) where the trials report
privacy measures: ``privacy_utility.png`` (final test accuracy against the leakage — the distance correlation
between raw inputs and cut activations — and against the model-inversion attack's reconstruction SSIM or the
label-inference attack's AUC, whichever the trials report, one point per setting, the settings of one defence joined by a line) and ``privacy_report.md`` / ``.csv`` (per
setting: accuracy, leakage, attack figures, client TFLOPs and GB per client).

    raysplit sweep experiments/privacy_nopeek_fmnist.yaml
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

AXES = {"dcor": "leakage: distance correlation DCOR(X, Z)", "inversion_ssim": "model inversion: reconstruction SSIM",
        "label_auc_norm": "label inference AUC (gradient norm)",
        "label_auc_direction": "label inference AUC (gradient direction)"}
COST = ["client_tflops_per_client", "client_gb_per_client"]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _off(v) -> bool:
    return v is None or v is False or v == 0 or (isinstance(v, float) and pd.isna(v))


def setting_label(row, keys: list[str]) -> str:
    """The setting's defences that are on, e.g. "nopeek=0.3" ("no defence" when every swept field is off)."""
    return ", ".join(f"{_short(k)}={row[k]:g}" if isinstance(row[k], float) else f"{_short(k)}={row[k]}"
                     for k in keys if not _off(row[k])) or "no defence"


def report_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per finished trial: its setting, accuracy, leakage (the first data holder's ``dcor_*``), the
    attacks' figures, and its cost per client."""
    ok = table[table["error"].isna()].copy()
    dcor = [c for c in ok.columns if c.startswith("dcor_")]
    out = pd.DataFrame({"setting": [setting_label(r, keys) for _, r in ok.iterrows()]}, index=ok.index)
    for k in keys:
        out[k] = ok[k]
    out["final_test_acc"] = ok["final_test_acc"]
    if dcor:
        out["dcor"] = ok[dcor[0]]
    for c in sorted(c for c in ok.columns if c.startswith(("inversion_", "label_auc_"))):
        out[c] = ok[c]
    for c in COST:
        out[c] = ok[c]
    return out.reset_index(drop=True)


def _defence(row, keys: list[str]) -> str:
    """Which defence a setting uses (the swept fields that are on, by name): points of one defence share a line."""
    on = [_short(k) for k in keys if not _off(row[k])]
    return "+".join(on) or "no defence"


def plot_privacy_utility(rep: pd.DataFrame, keys: list[str], path: Path, title: str = "") -> Path | None:
    axes_cols = [c for c in AXES if c in rep.columns and rep[c].notna().any()]
    if not axes_cols:
        return None
    fig, axes = plt.subplots(1, len(axes_cols), figsize=(5.5 * len(axes_cols), 4.2), squeeze=False)
    rep = rep.assign(defence=[_defence(r, keys) for _, r in rep.iterrows()])
    baseline = rep[rep["defence"] == "no defence"]
    for ax, col in zip(axes[0], axes_cols):
        for i, (defence, group) in enumerate(rep.groupby("defence", sort=False)):
            if defence == "no defence":
                continue
            # a defence's line starts at the undefended point, so each curve reads as "turning it up"
            line = pd.concat([baseline, group]).sort_values(col)
            ax.plot(line[col], line["final_test_acc"], "-", color=f"C{i}", alpha=0.5)
            ax.plot(group[col], group["final_test_acc"], "o", color=f"C{i}", label=defence)
        ax.plot(baseline[col], baseline["final_test_acc"], "k*", markersize=12, label="no defence")
        # each point's value(s) (its colour names the defence), alternately above and below: close points stay legible
        for i, (_, r) in enumerate(rep.sort_values(col).iterrows()):
            if r["defence"] != "no defence" and pd.notna(r[col]):
                text = ", ".join(part.split("=", 1)[1] for part in r["setting"].split(", "))
                ax.annotate(text, (r[col], r["final_test_acc"]), fontsize=7, xytext=(3, 4 if i % 2 else -10),
                            textcoords="offset points")
        missing = list(rep.loc[rep[col].isna(), "setting"])
        if missing:            # e.g. a defence that made training diverge: the attack has nothing to score
            ax.text(0.01, 0.01, "no figure for: " + ", ".join(missing), transform=ax.transAxes, fontsize=7,
                    color="gray")
        ax.set_xlabel(AXES[col] + " (lower: more private)")
        ax.set_ylabel("final test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: privacy vs utility, one point per setting")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(rep: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(rep.columns) + " |", "|" + "---|" * len(rep.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rep.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def privacy_report(table: pd.DataFrame, keys: list[str], out: Path, title: str = "") -> list[Path]:
    """Write privacy_report.csv / .md and privacy_utility.png into ``out``; returns the paths written."""
    rep = report_table(table, keys)
    written = [out / "privacy_report.csv", out / "privacy_report.md"]
    rep.to_csv(written[0], index=False)
    written[1].write_text(f"# {title}: privacy vs utility\n\nOne row per setting (final round). dcor: distance "
                          f"correlation between raw inputs and cut activations on a fixed probe set; inversion_ssim: "
                          f"the server's reconstructions of held-out client inputs (1: identical); costs per "
                          f"client, summed over rounds.\n\n" + _markdown(rep))
    png = plot_privacy_utility(rep, keys, out / "privacy_utility.png", title)
    return written + ([png] if png else [])
