"""One experiment: prepare (validate everything), run the rounds, write the results directory.

Results directory (pandas reads every table):
  config.yaml        the resolved config
  metrics.csv        one row per round: accuracy, loss, FLOPs per role, bytes per link and kind, wall time
  ledger.csv         bytes and messages per (round, src, dst, kind) — sums of the ledger (raw_bytes: before codecs)
  flops.csv          FLOPs per (round, party, phase) — from the meter
  summary.json       final figures
  run.log            the log
It is written under a hidden ``.partial`` name and renamed when the run completes, so a results
directory is never half-written; bad input is refused before anything is written at all.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from tqdm import tqdm

from raysplit import config as config_mod
from raysplit.accounting import Entry, role_of, summarize
from raysplit.algorithms import ALGORITHMS, Plan
from raysplit.config import ExperimentConfig, holder_names
from raysplit.console import replay_startup
from raysplit.data import Dataset, aligned_sample_ids, load_dataset, partition
from raysplit.errors import ConfigError
from raysplit.plugins import build_plugins
from raysplit.topology import ComposedNet, build_topology

log = logging.getLogger("raysplit")


def prepare(cfg: ExperimentConfig, dataset: Dataset | None = None) -> Plan:
    """Load data, build and split the model, partition clients: every data- or model-dependent check.
    ``dataset``: already loaded for this config's ``data`` and ``seed`` (``raysplit compare`` loads it once)."""
    dataset = dataset or load_dataset(cfg.data, cfg.seed)
    topology, modules = build_topology(cfg, dataset.input_shape, dataset.num_classes)
    plugins = build_plugins(cfg)
    if cfg.topology != "vertical":
        return Plan(cfg, dataset, topology, modules, partition(dataset.train_y, cfg.data, cfg.seed), plugins=plugins)
    # vertical: one sample space, each holder holding its features of the same samples (checked by id)
    files = [(f"vertical.holders[{i}].sample_ids", h.sample_ids) for i, h in enumerate(cfg.vertical.holders)]
    ids = aligned_sample_ids(files, len(dataset.train_y))
    holders = {name: ids for name in holder_names(cfg)} | {cfg.vertical.label_holder: ids}
    return Plan(cfg, dataset, topology, modules, [ids], holders, plugins)


@torch.no_grad()
def evaluate(net: ComposedNet, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> dict[str, tuple[float, float]]:
    """{task: (accuracy, mean loss)} of the composed network on a held-out set."""
    was_training = net.training
    net.eval()
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i in range(0, len(y), batch):
        xb, yb = torch.from_numpy(x[i: i + batch]), torch.from_numpy(y[i: i + batch])
        for task, out in net(xb).items():
            yt = net.topology.labels(task, yb)
            sums[task][0] += float((out.argmax(1) == yt).sum())
            sums[task][1] += float(nn.functional.cross_entropy(out, yt, reduction="sum"))
    net.train(was_training)
    return {t: (c / len(y), l / len(y)) for t, (c, l) in sums.items()}


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


def _check_free(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("output_dir", str(out), "a directory that does not exist yet or is empty")


@dataclass
class Result:
    out_dir: Path
    metrics: pd.DataFrame
    ledger: pd.DataFrame
    flops: pd.DataFrame
    entries: list[Entry]


def run(cfg: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True,
        capture_ledger: bool = False, write: bool = True, plan: Plan | None = None) -> Result:
    """Run an experiment end to end. ``capture_ledger`` keeps every ledger entry (with row fingerprints)
    on the result, for the privacy tests. ``plan``: ``prepare(cfg)`` already done by the caller."""
    plan = plan or prepare(cfg)
    out = Path(out_dir or cfg.output_dir or default_output_dir(cfg))
    if write:
        _check_free(out)
    algo = ALGORITHMS.get(cfg.algorithm)(plan, capture_ledger=capture_ledger, progress=progress)
    rows, ledger_rows, flop_rows, all_entries = [], [], [], []
    tmp, handler, bar = None, None, None
    try:
        log.info("starting party hosts on Ray%s ...", f" at {cfg.runtime.address}" if cfg.runtime.address else "")
        algo.start()                       # capacity and cluster errors surface here, before any file
        if write:
            tmp = out.parent / f".{out.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            handler = logging.FileHandler(tmp / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            replay_startup(handler)        # Ray's start-up lines: in run.log, not in the terminal
            (tmp / "config.yaml").write_text(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
        log.info("%s: %s / %s / %s, %d clients on %s (%d train, %d test samples), %d rounds",
                 cfg.name, cfg.algorithm, cfg.topology, cfg.schedule, cfg.data.num_clients, cfg.data.dataset,
                 len(plan.dataset.train_y), len(plan.dataset.test_y), cfg.training.rounds)
        bar = tqdm(total=cfg.training.rounds, desc=cfg.name, unit="round", disable=not progress)
        for r in range(cfg.training.rounds):
            t0 = time.perf_counter()
            train = algo.run_round(r)
            entries, flops, extra = algo.drain()
            wall = time.perf_counter() - t0
            evaluate_now = (r + 1) % cfg.runtime.eval_every == 0 or r == cfg.training.rounds - 1
            test = {t: (float("nan"), float("nan")) for t in plan.topology.tasks}
            if evaluate_now:
                bar.set_description_str(f"{cfg.name} (round {r + 1}: evaluating)")
                model = algo.model()
                test = evaluate(model, plan.dataset.test_x, plan.dataset.test_y)
                for p in plan.plugins:
                    extra.update(p.evaluate(model, plan.dataset))
                bar.set_description_str(cfg.name, refresh=False)
            row = round_row(r, cfg, train, test, entries, flops, wall, extra)
            rows.append(row)
            ledger_rows += summarize(entries, raw=True)
            flop_rows += [dict(round=r + 1, party=p, role=role_of(p), phase=ph, flops=f) for (p, ph), f in sorted(flops.items())]
            if capture_ledger:
                all_entries += entries
            bar.set_postfix(test_acc=f"{row['test_acc']:.4f}", refresh=False)
            bar.update(1)                  # the count shown is the rounds done, with this round's accuracy
            log.info("round %d/%d: test_acc=%.4f train_loss=%.4f client TFLOPs/client=%.4g client GB/client=%.4g "
                     "wall=%.1fs", r + 1, cfg.training.rounds, row["test_acc"], row["train_loss"],
                     row["client_tflops_per_client"], row["client_gb_per_client"], wall)
    except BaseException:
        if tmp is not None and not rows:   # nothing worth keeping; otherwise the .partial folder stays to inspect
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        algo.stop()
        if handler:
            log.removeHandler(handler)
            handler.close()
    metrics = add_cumulative(pd.DataFrame(rows))
    ledger = pd.DataFrame(ledger_rows, columns=["round", "src", "dst", "kind", "messages", "bytes", "raw_bytes"])
    ledger["round"] += 1
    flops_df = pd.DataFrame(flop_rows, columns=["round", "party", "role", "phase", "flops"])
    if tmp is not None:
        metrics.to_csv(tmp / "metrics.csv", index=False)
        ledger.to_csv(tmp / "ledger.csv", index=False)
        flops_df.to_csv(tmp / "flops.csv", index=False)
        last = metrics.iloc[-1]
        summary = dict(name=cfg.name, algorithm=cfg.algorithm, topology=cfg.topology, rounds=len(metrics),
                       final_test_acc=float(last["test_acc"]), best_test_acc=float(metrics["test_acc"].max()),
                       client_tflops_per_client=float(last["client_tflops_per_client_cum"]),
                       client_gb_per_client=float(last["client_gb_per_client_cum"]),
                       bytes_total=int(last["bytes_total_cum"]), wall_s=float(last["wall_s_cum"]))
        for task in plan.topology.tasks[1:]:        # further tasks (multi_task): test_acc_<task>
            summary[f"final_test_acc_{task}"] = float(last[f"test_acc_{task}"])
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    return Result(out, metrics, ledger, flops_df, all_entries)
