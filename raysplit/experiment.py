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

import copy
import json
import logging
import os
import shutil
import time
import warnings
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
from raysplit.data import Dataset, aligned_sample_ids, load_dataset, partition
from raysplit.errors import ConfigError
from raysplit.plugins import build_plugins
from raysplit.topology import INPUT, ComposedNet, Topology, build_topology

log = logging.getLogger("raysplit")


def prepare(cfg: ExperimentConfig, dataset: Dataset | None = None) -> Plan:
    """Load data, build and split the model, partition clients: every data- or model-dependent check.
    ``dataset``: already loaded for this config's ``data`` and ``seed`` (``raysplit compare`` loads it once)."""
    dataset = dataset or load_dataset(cfg.data, cfg.seed)
    # warnings while building and probing the model (e.g. a zero-width layer) are shown only if it passes:
    # a refused model is its one error line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        topology, modules = build_topology(cfg, dataset.input_shape, dataset.num_classes)
        check_algorithm(cfg, topology)
        check_trainable(cfg, topology, modules, dataset)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    plugins = build_plugins(cfg)
    if cfg.topology != "vertical":
        return Plan(cfg, dataset, topology, modules, partition(dataset.train_y, cfg.data, cfg.seed), plugins=plugins)
    # vertical: one sample space, each holder holding its features of the same samples (checked by id)
    files = [(f"vertical.holders[{i}].sample_ids", h.sample_ids) for i, h in enumerate(cfg.vertical.holders)]
    ids = aligned_sample_ids(files, len(dataset.train_y))
    holders = {name: ids for name in holder_names(cfg)} | {cfg.vertical.label_holder: ids}
    return Plan(cfg, dataset, topology, modules, [ids], holders, plugins)


def _unsupported(algo_cls, topology: Topology) -> str | None:
    """Why an algorithm cannot train a topology (its ``supports_topology`` classmethod), or None. An algorithm
    that declares nothing is taken to support every topology."""
    supports = getattr(algo_cls, "supports_topology", None)
    return supports(topology) if callable(supports) else None


def check_algorithm(cfg: ExperimentConfig, topology: Topology) -> None:
    """The algorithm can train this topology (each algorithm class declares what it needs)."""
    why = _unsupported(ALGORITHMS.get(cfg.algorithm, "algorithm"), topology)
    if why:
        able = [n for n in ALGORITHMS.names() if _unsupported(ALGORITHMS.get(n), topology) is None]
        raise ConfigError("algorithm", cfg.algorithm, f"an algorithm that can train topology {cfg.topology}: "
                          f"{', '.join(able) or 'none registered'} ({cfg.algorithm} {why})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def check_trainable(cfg: ExperimentConfig, topology: Topology, modules: dict[str, nn.Module], dataset: Dataset) -> None:
    """One forward and backward pass of every segment on two training samples, as the parties will run them:
    the model fits the data's shape at every cut, every segment has parameters for its optimizer, every head
    has an output for each class of its task. Runs on a copy (the seeded initial modules and the global torch
    random state are left as they were)."""
    cuts = cfg.model.cut_layers
    for seg in topology.segments:
        if not any(p.requires_grad for p in modules[seg.name].parameters()):
            layers = ", ".join(n for n, _ in modules[seg.name].named_children()) or "no layers"
            raise ConfigError("model.cut_layers", cuts, f"cuts that leave every segment a layer with parameters "
                              f"(segment {seg.name}, held by {seg.owner}, would hold only {layers}: nothing to train)")
    x = torch.from_numpy(dataset.train_x[:2])
    y = torch.from_numpy(dataset.train_y[:2])
    model = cfg.model.name
    with torch.random.fork_rng(devices=[]):
        net = ComposedNet(topology, copy.deepcopy(modules)).train()
        vals: dict[str, torch.Tensor] = {}
        for s in topology.segments:
            ins = [topology.view(s.owner, x) if i == INPUT else vals[i] for i in s.inputs]
            try:
                vals[s.name] = net.segs[s.name](*ins)
            except Exception as e:
                shapes = " and ".join(str(list(t.shape[1:])) for t in ins)
                raise ConfigError("model.name", model, f"a model that takes this data's inputs "
                                  f"{list(dataset.input_shape)} at every cut {cuts} (segment {s.name}, held by "
                                  f"{s.owner}, cannot take {shapes}: {_first_line(e)})") from None
        losses = []
        for s in topology.heads:
            out = vals[s.name]
            labels = topology.labels(s.task, torch.from_numpy(dataset.train_y))
            need = int(labels.max()) + 1
            if out.dim() != 2 or out.shape[1] < need:
                raise ConfigError("model.name", model, f"a model whose head {s.name} (task {s.task}) gives a score "
                                  f"for each of the {need} classes of the data (it gives {list(out.shape[1:])})")
            losses.append(nn.functional.cross_entropy(out, topology.labels(s.task, y)))
        try:
            sum(losses).backward()
        except Exception as e:
            raise ConfigError("model.name", model, f"a model whose segments can be trained (the backward pass "
                              f"fails: {_first_line(e)})") from None
        for seg in topology.segments:
            if all(p.grad is None for p in net.segs[seg.name].parameters()):
                raise ConfigError("model.cut_layers", cuts, f"segments that all take part in the loss (segment "
                                  f"{seg.name}, held by {seg.owner}, gets no gradient)")


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
    tmp, handler = None, None
    try:
        algo.start()                       # capacity and cluster errors surface here, before any file
        if write:
            tmp = out.parent / f".{out.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            handler = logging.FileHandler(tmp / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            (tmp / "config.yaml").write_text(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
        log.info("%s: %s / %s / %s, %d clients on %s (%d train, %d test samples), %d rounds",
                 cfg.name, cfg.algorithm, cfg.topology, cfg.schedule, cfg.data.num_clients, cfg.data.dataset,
                 len(plan.dataset.train_y), len(plan.dataset.test_y), cfg.training.rounds)
        bar = tqdm(range(cfg.training.rounds), desc=cfg.name, unit="round", disable=not progress)
        for r in bar:
            t0 = time.perf_counter()
            train = algo.run_round(r)
            entries, flops, extra = algo.drain()
            wall = time.perf_counter() - t0
            evaluate_now = (r + 1) % cfg.runtime.eval_every == 0 or r == cfg.training.rounds - 1
            test = {t: (float("nan"), float("nan")) for t in plan.topology.tasks}
            if evaluate_now:
                model = algo.model()
                test = evaluate(model, plan.dataset.test_x, plan.dataset.test_y)
                for p in plan.plugins:
                    extra.update(p.evaluate(model, plan.dataset))
            row = round_row(r, cfg, train, test, entries, flops, wall, extra)
            rows.append(row)
            ledger_rows += summarize(entries, raw=True)
            flop_rows += [dict(round=r + 1, party=p, role=role_of(p), phase=ph, flops=f) for (p, ph), f in sorted(flops.items())]
            if capture_ledger:
                all_entries += entries
            bar.set_postfix(test_acc=f"{row['test_acc']:.4f}")
            log.info("round %d/%d: test_acc=%.4f train_loss=%.4f client TFLOPs/client=%.4g client GB/client=%.4g "
                     "wall=%.1fs", r + 1, cfg.training.rounds, row["test_acc"], row["train_loss"],
                     row["client_tflops_per_client"], row["client_gb_per_client"], wall)
    except BaseException:
        if tmp is not None and not rows:   # nothing worth keeping; otherwise the .partial folder stays to inspect
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
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
