"""One experiment: prepare (validate everything), run the rounds, write the results directory.

Results directory (pandas reads every table):
  config.yaml        the resolved config
  metrics.csv        one row per round: accuracy, loss, FLOPs per role, bytes per link and kind, wall time,
                     simulated time on the config's network (sim_*: network.py, priced from ledger.csv and flops.csv)
  ledger.csv         bytes and messages per (round, src, dst, kind) — sums of the ledger (raw_bytes: before codecs)
  flops.csv          FLOPs per (round, party, phase) — from the meter
  model/             the trained network: <segment>.pt (each segment's state dict) and composed.pt
  checkpoints/       round-<r>/: the experiment's complete state after round r (the last few)
  summary.json       final figures
  run.log            the log
It is written under a hidden ``.NAME.partial`` name, its tables rewritten after every round (readable at any
moment), and renamed when the run completes; bad input is refused before anything is written at all. An
interrupted run continues from its last checkpoint (``run(..., resume=partial_dir)``); a party host that
dies is restarted and the run replayed from the last checkpoint, with bitwise the same results.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import torch
import yaml
from torch import nn
from tqdm import tqdm

from raysplit import config as config_mod
from raysplit.accounting import Entry, FlopMeter, role_of, summarize
from raysplit.algorithms import ALGORITHMS, Plan
from raysplit.attacks import gradient_receivers
from raysplit.checkpoint import Checkpoint, Checkpoints
from raysplit.config import ExperimentConfig, holder_names
from raysplit.console import replay_startup
from raysplit.data import Dataset, aligned_sample_ids, load_dataset, partition
from raysplit.errors import ConfigError, PartyLost
from raysplit.models import eval_mode
from raysplit.network import add_sim_columns, resolve
from raysplit.plugins import DriverContext, Plugins, build_plugins
from raysplit.runtime import dead_hosts
from raysplit.topology import CLIENT, INPUT, ComposedNet, Topology, build_topology

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
    plugins = build_plugins(cfg, dataset.num_classes)
    splits = getattr(ALGORITHMS.get(cfg.algorithm), "SPLITS_THE_MODEL", True)
    if cfg.attacks.model_inversion and not splits:
        raise ConfigError("attacks.model_inversion", True, f"false for algorithm {cfg.algorithm}: no cut "
                          "activations cross a party boundary, so there is nothing to invert")
    if cfg.attacks.label_inference and (not splits or not gradient_receivers(topology)):
        raise ConfigError("attacks.label_inference", True, f"false for {cfg.algorithm} on topology {cfg.topology}: no "
                          "party without the labels receives gradients from the label holder (u_shaped and "
                          "vertical with labels at the server have one)")
    if cfg.privacy.label_epsilon is not None and all(topology.label_holders[s.task] == s.owner for s in topology.heads):
        raise ConfigError("privacy.label_epsilon", cfg.privacy.label_epsilon,
                          f"null for topology {cfg.topology}: its labels never leave their holder")
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
    if cfg.algorithm == "splitnn" and cfg.handoff == "server" and CLIENT in topology.roles \
            and "server" not in topology.roles:
        raise ConfigError("handoff", cfg.handoff, f"peer: topology {cfg.topology} has no party named server to "
                          f"relay the hand-offs (its parties: {', '.join(topology.roles)})")


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
    # torch.tensor copies: the arrays may be read-only views of Ray's object store (runtime.shared_training_set)
    x, y = torch.tensor(dataset.train_x[:2]), torch.tensor(dataset.train_y[:2])
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
            labels = topology.labels(s.task, torch.tensor(dataset.train_y))
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
def evaluate(net: ComposedNet, x: np.ndarray, y: np.ndarray, batch: int = 256) -> dict[str, tuple[float, float]]:
    """{task: (accuracy, mean loss)} of the composed network on a held-out set. Batches of 256: 1000 held
    ~250 MB of activations at once in the driver (Fashion-MNIST's CNN), the peak of a whole run's memory, and
    were slower (benchmarks/README.md, memory)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    with eval_mode(net):
        for i in range(0, len(y), batch):
            xb, yb = torch.from_numpy(x[i: i + batch]), torch.from_numpy(y[i: i + batch])
            for task, out in net(xb).items():
                yt = net.topology.labels(task, yb)
                sums[task][0] += float((out.argmax(1) == yt).sum())
                sums[task][1] += float(nn.functional.cross_entropy(out, yt, reduction="sum"))
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


def _tables(results: dict, cfg: ExperimentConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    metrics = add_cumulative(pd.DataFrame(results["rows"]))
    ledger = pd.DataFrame(results["ledger_rows"], columns=LEDGER_COLUMNS)
    flops = pd.DataFrame(results["flop_rows"], columns=FLOP_COLUMNS)
    # simulated time under the config's network: priced from the very tables written beside it
    return add_sim_columns(metrics, ledger, flops, cfg), ledger, flops


def _write_csv(df: pd.DataFrame, path: Path) -> None:
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
    cfg = config_mod.load(d / "config.yaml")
    meta = json.loads((d / "model" / "meta.json").read_text())
    topology, modules = build_topology(cfg, tuple(meta["input_shape"]), meta["num_classes"])
    net = ComposedNet(topology, modules)
    net.load_state_dict(torch.load(d / "model" / "composed.pt", weights_only=True))
    return net


class _Run:
    """The round loop of one experiment: results so far, checkpoints, recovery from a lost party host."""

    def __init__(self, cfg: ExperimentConfig, plan: Plan, algo, checkpoints: Checkpoints, tmp: Path | None,
                 capture: bool):
        self.cfg, self.plan, self.algo, self.checkpoints, self.tmp, self.capture = cfg, plan, algo, checkpoints, tmp, capture
        self.results = self.no_results()
        self.entries: list[Entry] = []
        self.model: ComposedNet | None = None
        self.done = 0                                   # rounds completed
        self.failures: Counter = Counter()
        self.driver_plugins = Plugins(plan.plugins)     # the driver's copies: for evaluate and attacks' views
        self.driver_meter = FlopMeter()                 # attacks' FLOPs, metered to the party that would run them

    @staticmethod
    def no_results() -> dict:
        return {"rows": [], "ledger_rows": [], "flop_rows": []}

    def restore_latest(self) -> None:
        """Continue from the newest checkpoint (hosts just started), or from the start without one."""
        ck = self.checkpoints.latest()
        self.done = ck.round if ck else 0
        self.results = ck.results if ck else self.no_results()
        self.entries = [e for e in self.entries if e.round < self.done]
        if ck:
            self.algo.restore(ck.state, ck.round)
            log.info("continuing after round %d (checkpoint)", ck.round)

    def one_round(self, r: int) -> dict:
        cfg, plan, algo = self.cfg, self.plan, self.algo
        t0 = time.perf_counter()
        train = algo.run_round(r)
        entries, flops, extra = algo.drain()
        wall = time.perf_counter() - t0
        test = {t: (float("nan"), float("nan")) for t in plan.topology.tasks}
        if (r + 1) % cfg.runtime.eval_every == 0 or r == cfg.training.rounds - 1:
            self.bar.set_description_str(f"{cfg.name} (round {r + 1}: evaluating)")
            self.model = algo.model()
            test = evaluate(self.model, plan.dataset.test_x, plan.dataset.test_y)
            context = DriverContext(r + 1, self.tmp, self.driver_plugins, self.driver_meter)
            for p in plan.plugins:
                p.driver = context
                extra.update(p.evaluate(self.model, plan.dataset))
            for key, f in self.driver_meter.drain().items():
                flops[key] = flops.get(key, 0) + f
            self.bar.set_description_str(cfg.name, refresh=False)
        row = round_row(r, cfg, train, test, entries, flops, wall, extra)
        self.results["rows"].append(row)
        self.results["ledger_rows"] += [{**x, "round": x["round"] + 1} for x in summarize(entries, raw=True)]
        self.results["flop_rows"] += [dict(round=r + 1, party=p, role=role_of(p), phase=ph, flops=f)
                                      for (p, ph), f in sorted(flops.items())]
        if self.capture:
            self.entries += entries
        return row

    def recover(self, error: Exception) -> None:
        """A party host died: name it, restart all hosts and replay from the last checkpoint (bounded)."""
        dead = dead_hosts(self.algo.hosts) if getattr(self.algo, "hosts", None) else []
        if not dead:
            raise error
        self.failures.update(dead)
        lost = ", ".join(f"{name} ({n}x)" for name, n in self.failures.items())
        if sum(self.failures.values()) > self.cfg.runtime.max_failures:
            raise PartyLost(f"party host {', '.join(dead)} died in round {self.done + 1}; lost so far: {lost}; more than "
                            f"runtime.max_failures={self.cfg.runtime.max_failures}")
        log.warning("party host %s died in round %d; restarting the party hosts and replaying from the last "
                    "checkpoint (lost so far: %s)", ", ".join(dead), self.done + 1, lost)
        self.algo.stop()
        self.algo.start()
        self.restore_latest()

    def loop(self, progress: bool) -> None:
        cfg, rounds = self.cfg, self.cfg.training.rounds
        self.bar = bar = tqdm(total=rounds, initial=self.done, desc=cfg.name, unit="round", disable=not progress)
        try:
            self._loop(bar)
        finally:
            bar.close()

    def _loop(self, bar) -> None:
        cfg, rounds = self.cfg, self.cfg.training.rounds
        while self.done < rounds:
            r = self.done
            try:
                row = self.one_round(r)
            except ray.exceptions.RayError as e:
                self.recover(e)
                bar.n = self.done
                continue
            self.done += 1
            if self.tmp is not None:
                for df, name in zip(_tables(self.results, cfg), ("metrics.csv", "ledger.csv", "flops.csv")):
                    _write_csv(df, self.tmp / name)
            if self.done % cfg.runtime.checkpoint_every == 0 or self.done == rounds:
                t0 = time.perf_counter()        # the cost of a checkpoint: gathering the state and writing it
                nbytes = self.checkpoints.save(Checkpoint(self.done, self.algo.state(), self.results))
                log.info("checkpoint after round %d: %.2fs, %.1f MB", self.done, time.perf_counter() - t0, nbytes / 1e6)
            bar.set_postfix(test_acc=f"{row['test_acc']:.4f}", refresh=False)
            bar.update(1)                      # the count shown is the rounds done, with this round's accuracy
            log.info("round %d/%d: test_acc=%.4f train_loss=%.4f client TFLOPs/client=%.4g client GB/client=%.4g "
                     "wall=%.1fs", r + 1, rounds, row["test_acc"], row["train_loss"],
                     row["client_tflops_per_client"], row["client_gb_per_client"], row["wall_s"])


def run(cfg: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True,
        capture_ledger: bool = False, write: bool = True, plan: Plan | None = None,
        resume: str | Path | None = None) -> Result:
    """Run an experiment end to end. ``capture_ledger`` keeps every ledger entry (with row fingerprints)
    on the result, for the privacy tests. ``plan``: ``prepare(cfg)`` already done by the caller.
    ``resume``: the ``.NAME.partial`` directory of an interrupted run of ``cfg``: continue from its last
    checkpoint. An interruption (KeyboardInterrupt) keeps the partial directory (``error.partial``)."""
    plan = plan or prepare(cfg)
    resolve(cfg)            # unset compute speeds: the machine's, written into config.yaml with the rest
    if resume is not None:
        tmp = Path(resume)
        out = final_dir(tmp)
    else:
        out = Path(out_dir or cfg.output_dir or default_output_dir(cfg))
        tmp = partial_dir(out)
        if write:
            _check_free(out)
    rt = cfg.runtime
    ck_dir = (Path(rt.checkpoint_dir) / out.name if rt.checkpoint_dir else tmp / "checkpoints") if write else None
    algo = ALGORITHMS.get(cfg.algorithm)(plan, capture_ledger=capture_ledger, progress=progress)
    state = _Run(cfg, plan, algo, Checkpoints(ck_dir, rt.keep_checkpoints), tmp if write else None, capture_ledger)
    handler = None
    try:
        log.info("starting party hosts on Ray%s ...", f" at {cfg.runtime.address}" if cfg.runtime.address else "")
        algo.start()                       # capacity and cluster errors surface here, before any file
        if write:
            tmp.mkdir(parents=True, exist_ok=resume is not None)
            handler = logging.FileHandler(tmp / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            replay_startup(handler)        # Ray's start-up lines: in run.log, not in the terminal
            if resume is None:
                (tmp / "config.yaml").write_text(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
        log.info("%s: %s / %s / %s, %d clients on %s (%d train, %d test samples), %d rounds",
                 cfg.name, cfg.algorithm, cfg.topology, cfg.schedule, cfg.data.num_clients, cfg.data.dataset,
                 len(plan.dataset.train_y), len(plan.dataset.test_y), cfg.training.rounds)
        if resume is not None:
            state.restore_latest()
        state.loop(progress)
        if state.model is None:            # resumed after its last round: nothing was evaluated here
            state.model = algo.model()
    except BaseException as e:
        # an interruption (Ctrl-C, SIGTERM) or lost parties keep what is done and say how to continue
        if write and tmp.exists():
            if isinstance(e, (KeyboardInterrupt, PartyLost)) or state.results["rows"] or resume is not None:
                e.partial = tmp
            else:                          # nothing worth keeping
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        algo.stop()
        if handler:
            log.removeHandler(handler)
            handler.close()
    metrics, ledger, flops_df = _tables(state.results, cfg)
    if write:
        last = metrics.iloc[-1]
        summary = dict(name=cfg.name, algorithm=cfg.algorithm, topology=cfg.topology, rounds=len(metrics),
                       final_test_acc=float(last["test_acc"]), best_test_acc=float(metrics["test_acc"].max()),
                       client_tflops_per_client=float(last["client_tflops_per_client_cum"]),
                       client_gb_per_client=float(last["client_gb_per_client_cum"]),
                       bytes_total=int(last["bytes_total_cum"]), wall_s=float(last["wall_s_cum"]),
                       sim_time_s=float(last["sim_time_s_cum"]))
        for task in plan.topology.tasks[1:]:        # further tasks (multi_task): test_acc_<task>
            summary[f"final_test_acc_{task}"] = float(last[f"test_acc_{task}"])
        save_model(tmp, plan, state.model)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    return Result(out, metrics, ledger, flops_df, state.entries, state.model)
