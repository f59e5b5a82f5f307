"""``raysplit compare``: SplitNN, FedAvg and large-batch SGD (and SplitFed, in ``compare.methods``) on the same data,
partition, model and seed.

One experiment config serves all three; ``algorithm`` is set per method and the config's ``compare``
section may override training or runtime settings per method (e.g. ``fedavg: {training.lr: 0.1}``).
The results directory holds one ordinary results directory per method (as ``raysplit run`` writes it),
the shared config, and ``comparison.csv`` (one row per method). Like a single run it is written under a
hidden ``.partial`` name and renamed only when all three methods have finished; every method's config,
data and model are checked before anything runs or is written.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from raysplit import config as config_mod
from raysplit.config import ExperimentConfig, method_config, method_overrides
from raysplit.data import load_dataset
from raysplit.errors import ConfigError
from raysplit.experiment import prepare, run
from raysplit.network import resolve
from raysplit.results import check_free, default_output_dir

log = logging.getLogger("raysplit")

COLUMNS = ["method", "rounds", "final_test_acc", "best_test_acc", "client_tflops_per_client",
           "client_gb_per_client", "bytes_total", "wall_s", "sim_time_s"]


@dataclass
class Comparison:
    out_dir: Path
    table: pd.DataFrame


def compare(cfg: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True) -> Comparison:
    resolve(cfg)             # one measured compute speed for all the methods, in every config.yaml
    configs = {m: method_config(cfg, m) for m in cfg.compare.methods}
    # every data and model check before any run; the methods share data and seed, so load the data once
    dataset = load_dataset(cfg.data, cfg.seed)
    plans = {}
    for method, mcfg in configs.items():
        try:
            plans[method] = prepare(mcfg, dataset)
        except ConfigError as e:        # name the override that made this method's model invalid
            if e.field in method_overrides(cfg, method):
                raise ConfigError(f"compare.{method}.{e.field}", e.value, e.allowed) from None
            raise
    out = Path(out_dir or cfg.output_dir or default_output_dir(cfg))
    check_free(out)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    try:
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
        for method, mcfg in configs.items():
            log.info("compare: %s (%d/%d)", method, len(rows) + 1, len(configs))
            result = run(mcfg, out_dir=tmp / method, progress=progress, plan=plans.pop(method))
            summary = json.loads((result.out_dir / "summary.json").read_text())
            rows.append({"method": method, **{c: summary[c] for c in COLUMNS[1:]}})
    except BaseException:
        if not rows:                    # nothing worth keeping; otherwise the .partial folder stays to inspect
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.to_csv(tmp / "comparison.csv", index=False)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return Comparison(out, table)
