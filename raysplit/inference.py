"""Split inference: a trained run's parties serve predictions the way they trained, activations forward only.

``raysplit infer RESULTS_DIR [--data test|FILE.npz] [--batch-size B]`` loads the segments a run saved
(``model/``), places the parties as Ray actors exactly as in training (same topology, same ``runtime``
resources, local or on a cluster), and runs each batch's forward pass split across them. A head's logits
stay with the head's owner and are read by the simulator. Writes ``<RESULTS_DIR>/inference/``:
predictions.csv, ledger.csv (what crossed: activations, and sample ids where a party reads its own rows),
flops.csv (per party), summary.json (accuracy, measured latency per batch, and the simulated latency per
batch under the run's network: network.py's sequential model, as a batch's forward hops wait for each
other; ``network``: another network's YAML or mapping instead). Plug-ins (codecs, defences)
are not applied: the predictions equal the composed network's exactly.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from raysplit.accounting import role_of, summarize
from raysplit.catalog import load_config
from raysplit.data import load_dataset
from raysplit.engine import SEGMENTS, SegmentServer
from raysplit.errors import ConfigError, DataError
from raysplit.hosts import Hosts, start_hosts
from raysplit.link import opened
from raysplit.network import describe, load_network, network_for, sequential_time
from raysplit.runtime import connect
from raysplit.topology import build_topology


class Inference(SegmentServer):
    """Program on every host: serve segment forwards; on the first data holder's host, drive a batch."""

    def predict_batch(self, client: int, clock, idx: np.ndarray) -> dict:
        return self.engine.predict(self.store, client, clock, idx)


@dataclass
class InferenceResult:
    out_dir: Path
    predictions: pd.DataFrame
    ledger: pd.DataFrame
    flops: pd.DataFrame
    summary: dict


def _data(cfg, data: str) -> tuple[np.ndarray, np.ndarray | None]:
    if data == "test":
        ds = load_dataset(cfg.data, cfg.seed)
        return ds.test_x, ds.test_y
    path = Path(data)
    if not path.is_file():
        raise ConfigError("--data", data, "test, or an .npz file with an array x (and optionally labels y)")
    try:
        z = np.load(path)
        return z["x"].astype(np.float32), (z["y"].astype(np.int64) if "y" in z else None)
    except Exception:
        raise DataError(f"--data: {data!r} is not an .npz file with an array x (and optionally y)") from None


def infer(results_dir: str | Path, data: str = "test", batch_size: int | None = None, address: str | None = None,
          out_dir: str | Path | None = None, network: str | Path | dict | None = None) -> InferenceResult:
    d = Path(results_dir)
    if not (d / "model" / "composed.pt").is_file():
        raise ConfigError("RESULTS_DIR", str(d), "a finished run's results directory (it holds model/composed.pt)")
    cfg = load_config(d / "config.yaml", [f"runtime.address={address}"] if address else [])
    net = network_for(cfg, load_network(network) if isinstance(network, (str, Path)) else network)
    meta = json.loads((d / "model" / "meta.json").read_text())
    topology, modules = build_topology(cfg, tuple(meta["input_shape"]), meta["num_classes"])
    for name, module in modules.items():
        module.load_state_dict(torch.load(d / "model" / f"{name}.pt", weights_only=True))
    x, y = _data(cfg, data)
    if tuple(x.shape[1:]) != tuple(meta["input_shape"]):
        raise ConfigError("--data", data, f"inputs shaped {meta['input_shape']} as the model was trained on "
                          f"(got {list(x.shape[1:])})")
    size = batch_size or cfg.training.batch_size
    if size <= 0:
        raise ConfigError("--batch-size", size, "a number > 0")
    out = Path(out_dir) if out_dir else d / "inference"
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", str(out), "a directory that does not exist yet or is empty")
    connect(cfg.runtime.address)
    labels = y if y is not None else np.zeros(len(x), dtype=np.int64)   # held where training held them; unused
    hosts: Hosts = start_hosts(cfg, topology, modules, x, labels, [np.arange(len(x))])
    try:
        hosts.install(SEGMENTS, dict.fromkeys(hosts.all, Inference))
        driver, outputs, latency = hosts.client_host[0], {t: [] for t in topology.tasks}, []
        for j, start in enumerate(range(0, len(x), size)):
            t0 = time.perf_counter()
            batch = np.arange(start, min(start + size, len(x)))
            res = hosts.get(hosts.call(driver, SEGMENTS, "predict_batch", 0, (0, j), batch))
            for task, (logits,) in res.items():
                outputs[task].append(opened(logits))
            latency.append(time.perf_counter() - t0)
        entries, flops, _ = hosts.drain()
    finally:
        hosts.stop()
    rows, summary = [], {"samples": len(x), "batch_size": size, "batches": len(latency),
                         "latency_ms_median": 1e3 * float(np.median(latency)), "latency_ms_mean": 1e3 * float(np.mean(latency))}
    for task, parts in outputs.items():
        pred = np.concatenate(parts).argmax(1)
        truth = topology.labels(task, torch.from_numpy(y)).numpy() if y is not None else None
        rows.append(pd.DataFrame({"index": np.arange(len(x)), "task": task, "prediction": pred,
                                  **({"label": truth} if truth is not None else {})}))
        if truth is not None:
            summary["accuracy" if task == topology.tasks[0] else f"accuracy_{task}"] = float((pred == truth).mean())
    ledger = pd.DataFrame(summarize(entries, raw=True))
    flops_df = pd.DataFrame([dict(party=p, role=role_of(p), phase=ph, flops=f) for (p, ph), f in sorted(flops.items())])
    comm, compute = sequential_time(ledger, flops_df, net)     # every batch alike: the mean is the batch's
    summary.update(sim_latency_ms=1e3 * (comm + compute) / len(latency), sim_comm_ms=1e3 * comm / len(latency),
                   sim_compute_ms=1e3 * compute / len(latency), network=describe(net.cfg))
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    predictions = pd.concat(rows, ignore_index=True)
    predictions.to_csv(tmp / "predictions.csv", index=False)
    ledger.drop(columns=["round"]).to_csv(tmp / "ledger.csv", index=False)
    flops_df.to_csv(tmp / "flops.csv", index=False)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return InferenceResult(out, predictions, ledger, flops_df, summary)
