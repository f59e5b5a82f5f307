"""A run's results directory: the rows of its tables, where it is written, the trained model saved and loaded.

Results directory (pandas reads every table):
  config.yaml        the resolved config
  metrics.csv        one row per round: accuracy, loss, FLOPs per role, bytes per link and kind, wall time,
                     simulated time on the config's network (sim_*: network.py, priced from ledger.csv and flops.csv)
  ledger.csv         bytes and messages per (round, src, dst, kind) — sums of the ledger (raw_bytes: before codecs)
  flops.csv          FLOPs per (round, party, phase) — from the meter
  clients.csv        a population's rounds (population: availability, deadline): one row per participant and round,
                     its status (done, dropped, offline, late, spare), start and end in simulated seconds, steps run
  model/             the trained network: <segment>.pt (each segment's state dict) and composed.pt
  checkpoints/       round-<r>/: the experiment's complete state after round r (the last few)
  summary.json       final figures
  run.log            the log
It is written under a hidden ``.NAME.partial`` name (``partial_dir``) and renamed when the run completes.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from raysplit.accounting import Entry, role_of
from raysplit.algorithms import Plan
from raysplit.catalog import is_parallel, load_config
from raysplit.config import ExperimentConfig, NetworkConfig
from raysplit.errors import ConfigError
from raysplit.graph import ComposedNet
from raysplit.network import add_sim_columns, load_network
from raysplit.timeline import STATUSES, Fate
from raysplit.topology import build_topology


def round_row(r: int, cfg: ExperimentConfig, train: dict, test: dict, entries: list[Entry],
              flops: dict, wall: float, extra: dict | None = None) -> dict:
    """One row of metrics.csv. ``extra``: the plug-ins' columns."""
    n = cfg.data.num_clients
    row: dict = dict(round=r + 1, algorithm=cfg.algorithm, topology=cfg.topology, schedule=cfg.schedule,
                     num_clients=n)
    for i, task in enumerate(test):
        suffix = "" if i == 0 else f"_{task}"
        row[f"test_acc{suffix}"], row[f"test_loss{suffix}"] = test[task]
        loss_sum, correct, count = train.get(task, (0.0, 0, 0))
        row[f"train_loss{suffix}"] = loss_sum / count if count else float("nan")
        row[f"train_acc{suffix}"] = correct / count if count else float("nan")
    by_role: dict[str, float] = defaultdict(float)
    for (party, phase), f in flops.items():
        by_role[f"{role_of(party)}_flops_{phase}"] += f
    for role in sorted({k.rsplit("_flops_", 1)[0] for k in by_role} | {"client"}):
        fwd, bwd = by_role.get(f"{role}_flops_forward", 0.0), by_role.get(f"{role}_flops_backward", 0.0)
        row[f"{role}_flops_forward"], row[f"{role}_flops_backward"], row[f"{role}_flops"] = fwd, bwd, fwd + bwd
    # other phases (an attack's compute) get columns of their own, outside the training FLOPs above
    for key in sorted(k for k in by_role if k.rsplit("_flops_", 1)[1] not in ("forward", "backward")):
        row[key] = by_role[key]
    row["client_tflops_per_client"] = row["client_flops"] / n / 1e12
    row["bytes_total"] = sum(e.nbytes for e in entries)
    # bytes sent plus bytes received, summed over clients (a client-to-client hand-off counts for both)
    row["client_bytes"] = sum(e.nbytes * ((role_of(e.src) == "client") + (role_of(e.dst) == "client")) for e in entries)
    row["client_gb_per_client"] = row["client_bytes"] / n / 1e9
    for e in entries:
        key = f"bytes_{role_of(e.src)}_to_{role_of(e.dst)}_{e.kind}"
        row[key] = row.get(key, 0) + e.nbytes
    row.update(extra or {})
    row["wall_s"] = wall
    return row


def add_cumulative(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("client_tflops_per_client", "client_gb_per_client", "bytes_total", "client_flops", "wall_s"):
        df[f"{col}_cum"] = df[col].cumsum()
    return df


def default_output_dir(cfg: ExperimentConfig) -> Path:
    return Path("results") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def final_dir(partial: Path) -> Path:
    """``.NAME.partial`` -> ``NAME`` (where a resumed run lands)."""
    name = partial.name
    if not (name.startswith(".") and name.endswith(".partial")):
        raise ConfigError("--resume", str(partial), "the .NAME.partial directory of an interrupted run")
    return partial.parent / name[1:-len(".partial")]


def check_free(out: Path) -> None:
    """The results directory can be written: it does not exist yet or is empty, and the nearest folder
    that exists above it is a directory this user can write to (checked before anything starts)."""
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError("output_dir", str(out), "a directory that does not exist yet or is empty")
        parent = out.absolute().parent
        while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError("output_dir", str(out), f"a path under directories ({parent} is a file)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError("output_dir", str(out), f"a path under a directory this user can write to ({parent} is not)")
    except OSError as e:
        raise ConfigError("output_dir", str(out), f"a path this user can write to ({e.strerror or e})") from None
    if partial_dir(out).exists():
        raise ConfigError("output_dir", str(out), f"a directory with no interrupted run; {partial_dir(out)} holds one: "
                          f"continue it with `raysplit run --resume {partial_dir(out)}`, or delete it")


@dataclass
class Result:
    out_dir: Path
    metrics: pd.DataFrame
    ledger: pd.DataFrame
    flops: pd.DataFrame
    entries: list[Entry]
    model: ComposedNet | None = None


LEDGER_COLUMNS = ["round", "src", "dst", "kind", "messages", "bytes", "raw_bytes"]
FLOP_COLUMNS = ["round", "party", "role", "phase", "flops"]


def tables(results: dict, cfg: ExperimentConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    metrics = add_cumulative(pd.DataFrame(results["rows"]))
    ledger = pd.DataFrame(results["ledger_rows"], columns=LEDGER_COLUMNS)
    flops = pd.DataFrame(results["flop_rows"], columns=FLOP_COLUMNS)
    # simulated time under the config's network: priced from the very tables written beside it
    return add_sim_columns(metrics, ledger, flops, cfg, is_parallel(cfg)), ledger, flops


def clock_s(results: dict, cfg: ExperimentConfig) -> float:
    """The simulated seconds the rounds so far took (their sim_time_s, summed): when the next round begins."""
    if not results["rows"]:
        return 0.0
    return float(tables(results, cfg)[0]["sim_time_s"].sum())


def fate_counts(fates: list[Fate]) -> dict:
    """metrics.csv's population columns: how many took part, and how many of them ended each way."""
    return {"participants": len(fates), **{f"clients_{s}": sum(f.status == s for f in fates) for s in STATUSES}}


def fate_rows(r: int, fates: list[Fate]) -> list[dict]:
    """clients.csv: one row per participant and round."""
    return [dict(round=r + 1, client=f.client, status=f.status, start_s=f.start_s, end_s=f.end_s, steps=f.steps,
                 planned_steps=f.planned) for f in fates]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)          # readers always see a whole table


def save_model(out: Path, plan: Plan, net: ComposedNet) -> None:
    """``model/<segment>.pt`` (each segment's state dict), ``model/composed.pt`` (the unsplit network's), and
    what ``load_model`` needs to rebuild it."""
    d = out / "model"
    d.mkdir(exist_ok=True)
    for name, seg in net.segs.items():
        torch.save(seg.state_dict(), d / f"{name}.pt")
    torch.save(net.state_dict(), d / "composed.pt")
    meta = dict(input_shape=list(plan.dataset.input_shape), num_classes=plan.dataset.num_classes,
                segments={s.name: s.owner for s in plan.topology.segments})
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_model(results_dir: str | Path) -> ComposedNet:
    """The trained network of a results directory, rebuilt from its config and loaded (no data needed)."""
    d = Path(results_dir)
    cfg = load_config(d / "config.yaml")
    meta = json.loads((d / "model" / "meta.json").read_text())
    topology, modules = build_topology(cfg, tuple(meta["input_shape"]), meta["num_classes"])
    net = ComposedNet(topology, modules)
    net.load_state_dict(torch.load(d / "model" / "composed.pt", weights_only=True))
    return net


def simulate(results_dir: str | Path, network: NetworkConfig | dict | str | Path | None = None) -> pd.DataFrame:
    """A results directory's metrics.csv re-priced: its sim_* columns under ``network`` (a raw ``network:``
    mapping, a NetworkConfig, or a YAML file holding one) or, by default, under its own config's network."""
    d = Path(results_dir)
    for name in ("config.yaml", "metrics.csv", "ledger.csv", "flops.csv"):
        if not (d / name).is_file():
            raise ConfigError("results", str(d), f"a results directory of `raysplit run` (it has no {name})")
    cfg = load_config(d / "config.yaml")
    if isinstance(network, (str, Path)):
        network = load_network(network)
    return add_sim_columns(pd.read_csv(d / "metrics.csv"), pd.read_csv(d / "ledger.csv"),
                           pd.read_csv(d / "flops.csv"), cfg, is_parallel(cfg), network)
