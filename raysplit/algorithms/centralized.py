"""The centralized reference: the unsplit network trained in one process, no Ray."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from raysplit.accounting import FlopMeter, merge_stats
from raysplit.algorithms.base import Algorithm, Plan
from raysplit.data import batches
from raysplit.engine import make_optimizer
from raysplit.graph import INPUT, ComposedNet
from raysplit.host import configure_torch
from raysplit.plugins import Plugins
from raysplit.runtime import threads_for


class Centralized(Algorithm):
    """The reference: the unsplit network trained in this process, no Ray, on all training data."""

    PARTY = "central"
    splits_model = False

    def __init__(self, plan: Plan, capture_ledger: bool = False, progress: bool = True):
        super().__init__(plan, capture_ledger, progress)
        self.net = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
        self.meter = FlopMeter()
        self.plugins = Plugins(copy.deepcopy(plan.plugins))

    def start(self) -> None:
        configure_torch(threads_for(self.cfg.runtime.worker), self.cfg.runtime.deterministic)
        self.opt = make_optimizer(self.net.parameters(), self.cfg.training)
        self.indices = np.sort(np.concatenate(self.plan.client_indices))   # all training samples in use

    def train_batch(self, idx: np.ndarray) -> dict:
        ds, topo = self.plan.dataset, self.plan.topology
        x, y = torch.from_numpy(ds.train_x[idx]), torch.from_numpy(ds.train_y[idx])
        vals = self.net.values(x)
        outs = {s.task: vals[s.name] for s in topo.heads}
        losses = {task: nn.functional.cross_entropy(out, topo.labels(task, y)) for task, out in outs.items()}
        loss = sum(losses.values())
        for s in topo.segments:             # the data holders' extra losses (plug-ins), as split training adds them
            if INPUT in s.inputs and not s.task and self.plugins.losses:
                extra, bwd = self.plugins.client_loss(self.meter, self.PARTY, topo.view(s.owner, x), vals[s.name])
                if extra is not None:
                    loss = loss + extra
                    self.meter.add(self.PARTY, "backward", bwd)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.meter.forward(self.PARTY, "net", self.net, [x], False)
        self.meter.backward(self.PARTY, "net", self.net, [x], False)
        return {task: (float(losses[task].detach()) * len(y), int((out.argmax(1) == topo.labels(task, y)).sum()), len(y))
                for task, out in outs.items()}

    def run_round(self, r: int) -> dict:
        out: dict = {}
        epochs = self.cfg.training.local_epochs
        for e in range(epochs):
            for idx in batches(self.indices, self.cfg.training.batch_size, self.cfg.seed, r * epochs + e, 0):
                merge_stats(out, self.train_batch(idx))
        return out

    def state(self) -> dict:
        return {"net": copy.deepcopy(self.net.state_dict()), "optim": copy.deepcopy(self.opt.state_dict())}

    def restore(self, state: dict, round_: int) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optim"])

    def drain(self) -> tuple[list, dict, dict]:
        return [], self.meter.drain(), {}

    def model(self) -> ComposedNet:
        return self.net
