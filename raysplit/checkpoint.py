"""Checkpoints: the complete state of an experiment at a round boundary, so that a run can be resumed
(``raysplit run --resume``) or recovered after a party host dies, with bitwise the same results.

A checkpoint holds every party host's program state (segments, optimizers, hand-off in flight, global
weights; averaging sums are empty at a round boundary), the number of rounds done, and the results so far
(metrics, ledger and FLOP rows). No RNG state is needed: every random choice derives from (seed, round,
client, step). Written atomically as ``<dir>/round-<r>/state.pt`` (+ ``meta.json``), keeping the last few;
the directory can be a shared path on a cluster (the driver writes it). Without a directory (results not
written) the last checkpoint is kept in memory, which is enough to recover from a lost party.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Checkpoint:
    round: int                  # rounds completed
    state: dict                 # the algorithm's state (``algo.state()``)
    results: dict               # {"rows": [...], "ledger_rows": [...], "flop_rows": [...]}


class Checkpoints:
    def __init__(self, directory: Path | None, keep: int = 2):
        self.dir, self.keep = directory, keep
        self._last: bytes | None = None        # the newest, serialized: an exact copy kept in memory

    def save(self, ck: Checkpoint) -> int:
        """Write ``ck``; returns its size in bytes."""
        buf = io.BytesIO()
        torch.save({"round": ck.round, "state": ck.state, "results": ck.results}, buf)
        self._last = buf.getvalue()
        if self.dir is not None:
            final, tmp = self.dir / f"round-{ck.round}", self.dir / f".round-{ck.round}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "state.pt").write_bytes(buf.getvalue())
            (tmp / "meta.json").write_text(json.dumps({"round": ck.round, "bytes": buf.tell()}) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.rounds()[: -self.keep]:
                shutil.rmtree(self.dir / f"round-{old}", ignore_errors=True)
        return buf.tell()

    def rounds(self) -> list[int]:
        if self.dir is None or not self.dir.is_dir():
            return []
        return sorted(int(p.name.split("-", 1)[1]) for p in self.dir.glob("round-*") if (p / "state.pt").is_file())

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint: the in-memory one, else the newest on disk (a resumed run)."""
        if self._last is not None:
            d = torch.load(io.BytesIO(self._last), weights_only=False)
        elif self.rounds():
            d = torch.load(self.dir / f"round-{self.rounds()[-1]}" / "state.pt", weights_only=False)
        else:
            return None
        return Checkpoint(d["round"], d["state"], d["results"])
