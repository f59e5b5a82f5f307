"""One experiment: prepare (validate everything), run the rounds, write the results directory (results.py).

The results directory is written under a hidden ``.NAME.partial`` name, its tables rewritten after every
round (readable at any moment), and renamed when the run completes; bad input is refused before anything is
written at all. An interrupted run continues from its last checkpoint (``run(..., resume=partial_dir)``); a
party host that dies is restarted and the run replayed from the last checkpoint, with bitwise the same results.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from tqdm import tqdm

from raysplit import catalog
from raysplit import config as config_mod
from raysplit import population
from raysplit.accounting import Entry, FlopMeter, role_of, summarize
from raysplit.algorithms import Algorithm, Plan
from raysplit.attacks import gradient_receivers
from raysplit.checkpoint import Checkpoint, Checkpoints
from raysplit.config import ExperimentConfig, holder_names
from raysplit.console import replay_startup
from raysplit.data import Dataset, aligned_sample_ids, load_dataset, partition
from raysplit.errors import ConfigError, PartyLost
from raysplit.graph import CLIENT, INPUT, ComposedNet, Topology, eval_mode
from raysplit.hosts import LOST_PARTY
from raysplit.network import resolve
from raysplit.plugins import DriverContext, Plugins
from raysplit.schedule import selected_per_round
from raysplit.results import (Result, check_free, default_output_dir, final_dir, load_model,  # noqa: F401 (public here)
                              clock_s, fate_counts, fate_rows, partial_dir, round_row, save_model, tables,
                              write_csv)
from raysplit.topology import build_topology

log = logging.getLogger("raysplit")


def prepare(cfg: ExperimentConfig, dataset: Dataset | None = None) -> Plan:
    """Check the config's names (catalog.check), load data, build and split the model, partition clients: every
    name-, data- or model-dependent check, once per run. ``dataset``: already loaded for this config's ``data``
    and ``seed`` (``raysplit compare`` loads it once)."""
    catalog.check(cfg)
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
    plugins = catalog.build_plugins(cfg, dataset.num_classes)
    splits = catalog.splits_model(cfg)
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
        return Plan(cfg, dataset, topology, modules, partition(dataset.train_y, cfg.data, cfg.seed, dataset.train_owner),
                    plugins=plugins)
    # vertical: one sample space, each holder holding its features of the same samples (checked by id)
    files = [(f"vertical.holders[{i}].sample_ids", h.sample_ids) for i, h in enumerate(cfg.vertical.holders)]
    ids = aligned_sample_ids(files, len(dataset.train_y))
    holders = {name: ids for name in holder_names(cfg)} | {cfg.vertical.label_holder: ids}
    return Plan(cfg, dataset, topology, modules, [ids], holders, plugins)


def check_algorithm(cfg: ExperimentConfig, topology: Topology) -> None:
    """The algorithm can train this topology (each algorithm class declares what it needs)."""
    why = catalog.unsupported(catalog.algorithm(cfg), topology)
    if why:
        able = catalog.able(topology)
        raise ConfigError("algorithm", cfg.algorithm, f"an algorithm that can train topology {cfg.topology}: "
                          f"{', '.join(able) or 'none registered'} ({cfg.algorithm} {why})")
    check_population(cfg, topology)
    if cfg.algorithm == "splitnn" and cfg.handoff == "server" and CLIENT in topology.roles \
            and "server" not in topology.roles:
        raise ConfigError("handoff", cfg.handoff, f"peer: topology {cfg.topology} has no party named server to "
                          f"relay the hand-offs (its parties: {', '.join(topology.roles)})")


def check_population(cfg: ExperimentConfig, topology: Topology) -> None:
    """The algorithm plans its rounds for what the population section asks (Algorithm.population_support), and a
    round can have the clients it asks for (a trace file is read and checked here)."""
    p, algo = cfg.population, catalog.algorithm(cfg)
    support = getattr(algo, "population_support", frozenset())
    asks = [(f, v, need) for f, v, need in (("population.availability", p.availability, "availability"),
                                            ("population.deadline_s", p.deadline_s, "deadline"),
                                            ("population.over_select", p.over_select, "over_selection"))
            if v not in ("always", None, 1.0)]
    for field, value, need in asks:
        if need not in support or CLIENT not in topology.roles:
            off = {"availability": "always", "deadline": "null", "over_selection": "1"}[need]
            raise ConfigError(field, value, f"{off} for {cfg.algorithm} on topology {cfg.topology} (planned for by "
                              f"{', '.join(catalog.plans_for(need))}, on topologies with clients)")
    population.check(cfg, selected_per_round(cfg))


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
    # torch.tensor copies: the arrays may be read-only views of Ray's object store (hosts.shared_training_set)
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


class _Run:
    """The round loop of one experiment: results so far, checkpoints, recovery from a lost party host."""

    def __init__(self, cfg: ExperimentConfig, plan: Plan, algo: Algorithm, checkpoints: Checkpoints, tmp: Path | None,
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
        if algo.timed():             # the simulated time at which this round begins: every round before it, priced
            algo.now_s = clock_s(self.results, cfg)
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
        if algo.timed():
            row.update(fate_counts(algo.fates), sim_wait_s=algo.wait_s)
            if algo.span_s is not None:
                row["sim_span_s"] = algo.span_s
            self.results.setdefault("client_rows", []).extend(fate_rows(r, algo.fates))
        self.results["rows"].append(row)
        self.results["ledger_rows"] += [{**x, "round": x["round"] + 1} for x in summarize(entries, raw=True)]
        self.results["flop_rows"] += [dict(round=r + 1, party=p, role=role_of(p), phase=ph, flops=f)
                                      for (p, ph), f in sorted(flops.items())]
        if self.capture:
            self.entries += entries
        return row

    def recover(self, error: Exception) -> None:
        """A party host died: name it, restart all hosts and replay from the last checkpoint (bounded)."""
        dead = self.algo.lost_parties()
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
            checkpoint = (r + 1) % cfg.runtime.checkpoint_every == 0 or r + 1 == rounds
            try:
                row = self.one_round(r)
                t0 = time.perf_counter()   # a party lost while its state is gathered: the round is replayed too
                state = self.algo.state() if checkpoint else None
                gathered_s = time.perf_counter() - t0
            except LOST_PARTY as e:
                self.recover(e)
                bar.n = self.done
                continue
            self.done += 1
            if self.tmp is not None:
                for df, name in zip(tables(self.results, cfg), ("metrics.csv", "ledger.csv", "flops.csv")):
                    write_csv(df, self.tmp / name)
                if "client_rows" in self.results:
                    write_csv(pd.DataFrame(self.results["client_rows"]), self.tmp / "clients.csv")
            if checkpoint:                     # its cost: gathering the state and writing it
                t0 = time.perf_counter()
                nbytes = self.checkpoints.save(Checkpoint(self.done, state, self.results))
                log.info("checkpoint after round %d: %.2fs, %.1f MB", self.done,
                         gathered_s + time.perf_counter() - t0, nbytes / 1e6)
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
            check_free(out)
    rt = cfg.runtime
    ck_dir = (Path(rt.checkpoint_dir) / out.name if rt.checkpoint_dir else tmp / "checkpoints") if write else None
    algo = catalog.algorithm(cfg)(plan, capture_ledger=capture_ledger, progress=progress)
    state = _Run(cfg, plan, algo, Checkpoints(ck_dir, rt.keep_checkpoints), tmp if write else None, capture_ledger)
    handler = None
    try:
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
    metrics, ledger, flops_df = tables(state.results, cfg)
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
