"""Parameter sweeps on Ray Tune: every point of a grid is one Tune trial running ``experiment.run``.

    raysplit sweep CONFIG --grid model.cut_layers=[[pool1],[pool2]] --grid data.num_clients=10,100 [--set ...]
    raysplit sweep experiments/privacy_nopeek_fmnist.yaml      (settings from the config's ``sweep:`` section)

The settings: every combination of the grid (``--grid``, and the config's ``sweep.grid``), then each of the
config's ``sweep.points`` (settings one by one, e.g. a defence's strengths beside another's). Writes one
directory:
  config.yaml              the base config (before the grid)
  trials/<trial>/          one results directory per setting (as ``raysplit run`` writes)
  trials.csv               one row per trial: the swept values, final accuracy, client TFLOPs and GB per
                           client, wall time, the final privacy measures the run reports (leakage ``dcor_*``,
                           ``inversion_*``, ``label_auc_*``), its results directory, and its error line if it failed
  sweep_<field>.png        final accuracy and client GB per client against each swept field
  privacy_utility.png, privacy_report.md / .csv   where the trials report privacy measures: accuracy against
                           leakage and reconstruction quality, one point per setting, and the table
                           (``analysis/privacy_utility.py``)
A failed trial is reported (its ``error``) and the others go on. Every setting is checked (config,
data, model, cuts) before anything is written or any trial starts.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import ray
import yaml
from ray import tune
from tqdm import tqdm

from raysplit import config as config_mod
from raysplit import experiment
from raysplit.config import ExperimentConfig
from raysplit.data import load_dataset
from raysplit.errors import ConfigError
from raysplit.graph import CLIENT
from raysplit.registry import add_search_path
from raysplit.results import check_free
from raysplit.runtime import bundle, check_capacity, connect

log = logging.getLogger("raysplit")

FIGURES = ("final_test_acc", "best_test_acc", "client_tflops_per_client", "client_gb_per_client", "bytes_total",
           "wall_s")
# the plug-ins' privacy measures a trial reports too (their last evaluated value): leakage, attacks
MEASURES = ("dcor_", "inversion_", "label_auc_")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: "[pool1],[pool2]" -> ["[pool1]", "[pool2]"]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``["data.num_clients=10,100", "model.cut_layers=[[pool1],[pool2]]"]`` -> {field: [values]}.
    Values are YAML: a comma-separated list (``10,100``, ``[pool1],[pool2]``) or one YAML list."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError("--grid", spec, "KEY=VALUES, e.g. data.num_clients=10,100 or "
                              "model.cut_layers=[[pool1],[pool2]]")
        try:
            parts = _split_top(text)
            if len(parts) > 1:
                values = [yaml.safe_load(p) for p in parts]
            else:
                one = yaml.safe_load(text)
                values = one if isinstance(one, list) else [one]
        except yaml.YAMLError:
            raise ConfigError(f"--grid {key}", text, "YAML values separated by commas, or one YAML list") from None
        if key in grid:
            raise ConfigError("--grid", key, "each field once")
        if not values:
            raise ConfigError(f"--grid {key}", text, "at least one value")
        grid[key] = values
    if not grid:
        raise ConfigError("--grid", None, "at least one KEY=VALUES")
    return grid


def settings(grid: dict[str, list], points: list[dict], base) -> list[dict]:
    """The sweep's settings, in order: every combination of ``grid``, then each of ``points``; each setting
    names every swept field (a field a setting leaves out: the base config's value)."""
    points = [config_mod._flatten(p) if isinstance(p, dict) else p for p in points]
    for i, p in enumerate(points):
        if not isinstance(p, dict) or not p:
            raise ConfigError(f"sweep.points[{i}]", p, "a mapping of fields to values, e.g. {privacy.nopeek: 1}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}", values, "a non-empty list of values")
    keys = list(dict.fromkeys([*grid, *(k for p in points for k in p)]))
    raw = config_mod.to_dict(base)
    fallback = {k: _get(raw, k) for k in keys}
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    return [{k: s.get(k, fallback[k]) for k in keys} for s in [*combos, *points]]


def _get(raw: dict, dotted: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None          # not a field: the setting's check names it
        node = node[part]
    return node


def _yaml(value) -> str:
    """A value as an override's YAML text that reads back as the same value (JSON would write 1e-06, which
    YAML reads as a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def _slug(point: dict) -> str:
    def short(v):
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", json.dumps(v).replace('"', "")).strip("_") or "none"
    return "-".join(f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in point.items())


@dataclass
class Trial:
    name: str
    point: dict                       # field -> value
    out: Path
    requests: list                    # (config field, Resources) of each party host the run starts
    cfg: ExperimentConfig             # the setting's config, loaded and checked once (the trial runs it)

    @property
    def bundles(self) -> list[dict]:
        """The party hosts' placement-group bundles (hosts that request nothing need none)."""
        return [b for b in (bundle(r) for _, r in self.requests) if b]


@dataclass
class SweepResult:
    out_dir: Path
    table: pd.DataFrame
    keys: list[str]                   # the swept fields
    name: str

    @property
    def has_privacy_measures(self) -> bool:
        return any(c.startswith(MEASURES) for c in self.table.columns)


def host_requests(cfg, plan) -> list:
    """(field, Resources) per party host the run will start, as ``hosts.start_hosts`` counts them (at
    least one non-client host: the whole-model algorithms start just the server)."""
    roles = plan.topology.roles
    n_workers = min(cfg.runtime.workers, len(plan.client_indices)) if CLIENT in roles else 0
    others = max(1, len([r for r in roles if r != CLIENT]))
    return [("runtime.worker", cfg.runtime.worker)] * n_workers + [("runtime.server", cfg.runtime.server)] * others


def plan_trials(config_path, overrides: list[str], grid: dict[str, list], out: Path,
                points: list[dict] = (), base: ExperimentConfig | None = None) -> list[Trial]:
    """Every setting (``settings``) as a trial, each loaded once and checked as ``raysplit validate`` checks a
    config. ``base``: the config with ``overrides`` already loaded."""
    trials, datasets = [], {}
    base = base or config_mod.load(config_path, overrides)
    for i, point in enumerate(settings(grid, list(points), base)):
        extra = [f"{k}={_yaml(v)}" for k, v in point.items() if v is not None]
        try:
            cfg = config_mod.load(config_path, [*overrides, *extra])
            key = json.dumps([config_mod.to_dict(cfg)["data"], cfg.seed], sort_keys=True, default=str)
            if key not in datasets:                      # grid points that share data load it once
                datasets[key] = load_dataset(cfg.data, cfg.seed)
            plan = experiment.prepare(cfg, datasets[key])
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.allowed} (in the sweep's grid point {point})") from None
        if cfg.runtime.placement is not None:
            raise ConfigError("runtime.placement", cfg.runtime.placement,
                              "null in a sweep (each trial reserves its party hosts as one placement group)")
        name = f"{i:03d}-{_slug(point)}"
        trials.append(Trial(name, point, out / "trials" / name, host_requests(cfg, plan), cfg))
    return trials


def _trainable(trials: list[Trial], config_path: str, cwd: str):
    def trial_fn(tune_config: dict) -> None:
        os.chdir(cwd)        # Tune starts a trial in its own folder; configs and data paths are the user's
        add_search_path(Path(config_path).parent)     # the user's modules beside the config, as the driver found them
        t = trials[tune_config["trial"]]
        try:
            result = experiment.run(t.cfg, out_dir=t.out, progress=False)
            summary = json.loads((result.out_dir / "summary.json").read_text())
            metrics = {k: summary[k] for k in FIGURES} | {"error": ""}
            last = result.metrics.iloc[-1]         # the last round is always evaluated
            metrics |= {k: float(last[k]) for k in result.metrics.columns if k.startswith(MEASURES)}
        except Exception as e:                                        # noqa: BLE001 - reported, others go on
            metrics = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
        tune.report(metrics)
    return trial_fn


def _resources(trials: list[Trial], driver_node: str):
    def resources(tune_config: dict):
        # The trial's function itself needs no CPU: it only drives the party hosts, which are Ray actors that
        # request their own CPUs/GPUs (runtime.worker / runtime.server). Tune reserves all of a trial's hosts
        # at once as one placement group (child actors are captured into it), so a trial starts only when
        # every one of its hosts fits: concurrency is bounded by the cluster's resources, and trials never
        # deadlock holding half their hosts each (which 0-CPU trainables with free-floating hosts could).
        # The first bundle pins the trial's function to the driver's node: it writes the results directory
        # there, where the sweep's table is written.
        head = {f"node:{driver_node}": 0.001}
        return tune.PlacementGroupFactory([head, *trials[tune_config["trial"]].bundles], strategy="PACK")
    return resources


def sweep(config_path, overrides: list[str], grid: dict[str, list], out_dir=None, progress: bool = True,
          base=None, points: list[dict] = ()) -> SweepResult:
    """Run every setting (the grid's combinations, then ``points``) as a Ray Tune trial; write the trials,
    ``trials.csv`` and plots into one directory (``analysis.privacy_utility.privacy_report`` adds the privacy
    study's figure and table where trials report privacy measures: ``raysplit sweep`` does)."""
    config_path = str(Path(config_path).resolve())
    base = base or config_mod.load(config_path, overrides)
    out = Path(out_dir or Path("results") / f"{base.name}-sweep-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    check_free(out)
    trials = plan_trials(config_path, overrides, grid, out, points, base)
    keys = list(trials[0].point)
    connect(base.runtime.address)
    for t in trials:          # a trial the cluster can never place would wait forever: refuse it now
        try:
            check_capacity(t.requests)
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.allowed} (in the sweep's grid point {t.point})") from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config_mod.to_dict(base), sort_keys=False))
    (out / "grid.yaml").write_text(yaml.safe_dump({"grid": grid, "points": list(points)}, sort_keys=False,
                                                  default_flow_style=None))
    log.info("sweep %s: %d trials over %s", base.name, len(trials), ", ".join(keys))

    bar = tqdm(total=len(trials), desc=f"{base.name} sweep", unit="trial", disable=not progress)

    planned = trials

    class Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            t = planned[trial.config["trial"]]
            msg = result.get("error") or (f"final test_acc={result['final_test_acc']:.4f} "
                                          f"client GB/client={result['client_gb_per_client']:.4g}")
            log.info("trial %s: %s", t.name, msg)

        def on_trial_complete(self, iteration, trials, trial, **info):
            bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            bar.update(1)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")    # Tune's own tables: not in the terminal (verbose=0)
    storage = tempfile.mkdtemp(prefix="raysplit-tune-")
    try:
        tuner = tune.Tuner(
            tune.with_resources(_trainable(trials, config_path, os.getcwd()),
                                _resources(trials, ray.util.get_node_ip_address())),
            param_space={"trial": tune.grid_search(list(range(len(trials))))},
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0, callbacks=[Progress()],
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
        )
        results = tuner.fit()
    finally:
        bar.close()
        shutil.rmtree(storage, ignore_errors=True)
    by_trial = {}
    for r in results:
        metrics = dict(r.metrics or {})
        if r.error is not None and not metrics.get("error"):
            metrics["error"] = f"{type(r.error).__name__}: {r.error}".splitlines()[0]
        by_trial[r.config["trial"]] = metrics
    table = trials_table(trials, by_trial)
    table.to_csv(out / "trials.csv", index=False)
    plot_sweep(table, keys, out, title=base.name)
    return SweepResult(out, table, keys, base.name)


def trials_table(trials: list[Trial], by_trial: dict[int, dict]) -> pd.DataFrame:
    """One row per trial: its grid values, its figures (NaN where it failed), its results directory, its error."""
    rows = []
    for i, t in enumerate(trials):
        m = by_trial.get(i, {"error": "the trial did not run"})
        row = {"trial": t.name, **{k: _cell(v) for k, v in t.point.items()}}
        row |= {k: m.get(k, float("nan")) for k in FIGURES}
        row |= {k: v for k, v in m.items() if k.startswith(MEASURES)}
        row["results"] = str(t.out) if (t.out / "summary.json").is_file() else ""
        row["error"] = m.get("error") or None
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(v):
    return v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)


def plot_sweep(table: pd.DataFrame, keys: list[str], out: Path, title: str = "") -> list[Path]:
    """Per swept field: final accuracy and client GB per client against its values, one line per setting of
    the other fields (sweep_figure). Failed trials are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        fig = sweep_figure(table, key, keys, title)
        path = out / f"sweep_{re.sub(r'[^A-Za-z0-9_.]+', '_', key)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def sweep_figure(table: pd.DataFrame, key: str, keys: list[str], title: str = ""):
    """One swept field's figure: final test accuracy (%, as every other figure) and client GB per client against
    its values, ticks at the values swept (never between two numbers of clients), a log axis where they span
    more than a decade and a half."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker

    ok = table[table["error"].isna()]
    values = list(dict.fromkeys(table[key]))          # grid order
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    pos = {v: (v if numeric else i) for i, v in enumerate(values)}
    others = [k for k in keys if k != key]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for setting, group in (ok.groupby(others, sort=False) if others else [((), ok)]):
        setting = setting if isinstance(setting, tuple) else (setting,)
        label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or None
        xs = [pos[v] for v in group[key]]
        for ax, col, scale in zip(axes, ("final_test_acc", "client_gb_per_client"), (100, 1)):
            ax.plot(xs, group[col] * scale, "o-", label=label)
    logx = numeric and min(values) > 0 and max(values) / min(values) >= 30
    for ax, col in zip(axes, ("final test accuracy (%)", "client GB per client")):
        ax.set_xlabel(key)
        ax.set_ylabel(col)
        ax.grid(True, alpha=0.3)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        if numeric:
            ax.set_xticks(sorted(values), [f"{v:g}" for v in sorted(values)])
        else:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
    if others:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: sweep over {key}")
    fig.tight_layout()
    return fig
