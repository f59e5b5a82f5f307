"""What FedAvg and large-batch SGD share: every party holds the whole network, not a segment.

They run on the same party hosts as SplitNN (worker hosts with virtual clients, and a server host), with
every transfer through the hosts' ledgers and every FLOP through their meters, so the three methods are
measured on identical terms. Programs: ``WholeModelClient`` on the workers (it trains the whole network
for its virtual clients one after another; they keep no state between calls beyond their indices) and
``WholeModelServer`` on the server (the global copy; it averages what the clients send, weighted by their
sample counts, in client order, so results do not depend on how clients are spread over workers). The
driver only submits calls and passes ObjectRefs between hosts (it never fetches weights or gradients).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from raysplit.accounting import TrainStats
from raysplit.algorithms.base import Algorithm
from raysplit.averaging import WeightedSums
from raysplit.data import batches
from raysplit.engine import detached_state, make_optimizer, party_id
from raysplit.graph import CLIENT, ComposedNet, Topology
from raysplit.hosts import Hosts

SERVER = "server"
WHOLE = "whole"          # the key the programs are installed under


class WholeModelProgram:
    def __init__(self, host, modules: dict[str, nn.Module]):
        self.host, self.training = host, host.training
        self.whole = ComposedNet(host.topo, modules).to(host.device)

    def whole_state(self) -> dict[str, torch.Tensor]:
        return detached_state(self.whole)

    def state(self) -> dict:
        return {}                       # clients keep nothing between rounds

    def load_state(self, state: dict) -> None:
        pass


class WholeModelClient(WholeModelProgram):
    def __init__(self, host, modules):
        super().__init__(host, modules)
        self._epoch_batches: dict[tuple[int, int], list[np.ndarray]] = {}

    def _forward_backward(self, me: str, idx: np.ndarray) -> dict:
        """Loss of the whole network on a batch (summed over tasks) and its backward, metered for ``me``."""
        h = self.host
        x = torch.from_numpy(h.data["x"][idx]).to(h.device)
        y = torch.from_numpy(h.data["y"][idx]).to(h.device)
        outs = self.whole(x)
        labels = {task: h.topo.labels(task, y) for task in outs}
        losses = {task: nn.functional.cross_entropy(out, labels[task]) for task, out in outs.items()}
        sum(losses.values()).backward()
        h.meter.forward(me, "whole", self.whole, [x], False)
        h.meter.backward(me, "whole", self.whole, [x], False)
        return {task: (float(losses[task].detach()) * len(idx), int((out.argmax(1) == labels[task]).sum()), len(idx))
                for task, out in outs.items()}

    def local_train(self, client: int, round_: int, weights: dict, steps: int | None = None) -> tuple[dict | None, dict]:
        """FedAvg client: train the global weights for ``local_epochs`` on local batches with a fresh optimizer;
        send the result (with the sample count the server weights it by) to the server. ``steps``: the client goes
        offline after this many steps (population.py): they are run and counted, nothing is sent."""
        h, training = self.host, self.training
        me = party_id(CLIENT, client)
        h.ledger.round, h.ledger.step = round_, 0
        self.whole.load_state_dict(h.receive(weights))
        optim = make_optimizer(self.whole.parameters(), training)
        h.seed_torch(round_, client)
        stats, step = TrainStats(), 0
        epochs = training.local_epochs
        for e in range(epochs):
            for idx in batches(h.client_indices[client], training.batch_size, h.seed, round_ * epochs + e, client):
                if step == steps:
                    break
                optim.zero_grad(set_to_none=True)
                stats.add(self._forward_backward(me, idx))
                optim.step()
                step += 1
        if steps is not None:
            return None, stats.as_lists()
        upload = {"samples": len(h.client_indices[client]),
                  "weights": h.ledger.send(me, SERVER, "weights", self.whole_state())}
        return upload, stats.as_lists()

    def train_clients(self, clients: list[int], round_: int, weights: dict, limits: dict[int, int] | None = None):
        """FedAvg clients hosted here, one after another in one call (a streaming generator): yields each
        client's upload as soon as it is done, so the server folds them in while the next trains (an upload
        waits in the object store until the driver, going in client order, passes it on); then the clients'
        train stats, in one list (one object per client, not two: each yield is a Ray object). ``limits``: {client:
        steps} of the clients that go offline in the middle (they yield None)."""
        stats, limits = [], limits or {}
        for k in clients:
            # steps only when limited: a subclass's local_train written without it keeps working
            upload, st = self.local_train(k, round_, weights, limits[k]) if k in limits else \
                self.local_train(k, round_, weights)
            stats.append(st)
            yield upload
        yield stats

    def _batch(self, client: int, epoch_seed: int, step: int) -> np.ndarray:
        key = (client, epoch_seed)
        if key not in self._epoch_batches:
            self._epoch_batches = {k: v for k, v in self._epoch_batches.items() if k[1] == epoch_seed}
            self._epoch_batches[key] = batches(self.host.client_indices[client], self.training.batch_size,
                                               self.host.seed, epoch_seed, client)
        return self._epoch_batches[key][step]

    def local_gradients(self, clients: list[int], clock, epoch_seed: int, step: int, weights: dict):
        """Large-batch SGD clients: each computes the gradient of the whole network on its batch ``step`` of
        the epoch and sends it to the server (with buffers such as BatchNorm statistics, if the model has
        any). Returns one upload per client, then the train stats."""
        h = self.host
        h.ledger.round, h.ledger.step = clock
        weights = h.receive(weights)
        uploads, stats = [], TrainStats()
        for k in clients:
            me = party_id(CLIENT, k)
            idx = self._batch(k, epoch_seed, step)
            self.whole.load_state_dict(weights)           # each client starts from the global weights
            self.whole.zero_grad(set_to_none=True)
            h.seed_torch(*clock, k)
            stats.add(self._forward_backward(me, idx))
            grads = {n: p.grad.detach().clone() for n, p in self.whole.named_parameters() if p.grad is not None}
            upload = {"samples": len(idx), "gradient": h.ledger.send(me, SERVER, "gradient_update", grads)}
            buffers = {n: b.detach().clone() for n, b in self.whole.named_buffers()}
            if buffers:
                upload["buffers"] = h.ledger.send(me, SERVER, "weights", buffers)
            uploads.append(upload)
        return (*uploads, stats.as_lists())


class WholeModelServer(WholeModelProgram):
    def __init__(self, host, modules):
        super().__init__(host, modules)
        self.optim = make_optimizer(self.whole.parameters(), self.training)   # large-batch SGD steps here
        self._uploads, self._upload_samples = WeightedSums(), 0   # what the clients sent this round / step

    def state(self) -> dict:
        return {"whole": self.whole_state(), "optim": self.optim.state_dict()}

    def load_state(self, state: dict) -> None:
        state = self.host.receive(state)
        self.whole.load_state_dict(state["whole"])
        self.optim.load_state_dict(state["optim"])

    def send_global(self, clock, clients: list[int]) -> dict:
        """The global weights go to each listed client (one ledger entry each; one object to read)."""
        self.host.ledger.round, self.host.ledger.step = clock
        return self.host.ledger.send(SERVER, [party_id(CLIENT, k) for k in clients], "weights", self.whole_state())

    def accumulate(self, upload: dict) -> None:
        """Add one client's upload (weights or gradient, plus buffers) to the sample-weighted sum."""
        n, upload = upload["samples"], self.host.receive(upload)
        tensors = {**upload.get("weights", {}), **upload.get("gradient", {}), **upload.get("buffers", {})}
        self._uploads.add("upload", {"whole": tensors}, n)
        self._upload_samples += n

    def _take_average(self) -> dict[str, torch.Tensor]:
        avg = self._uploads.mean("upload", self._upload_samples).get("whole", {})
        self._uploads, self._upload_samples = WeightedSums(), 0
        return avg

    def finish_average(self) -> None:
        """FedAvg: the new global weights are the sample-weighted average of the clients'."""
        self.whole.load_state_dict(self._take_average())

    def finish_step(self) -> None:
        """Large-batch SGD: step on the sample-weighted average gradient (the gradient of the mean loss over
        all clients' batches together); buffers become their sample-weighted average."""
        avg = self._take_average()
        self.optim.zero_grad(set_to_none=True)
        for name, p in self.whole.named_parameters():
            if name in avg:
                p.grad = avg[name].to(p.device, p.dtype)
        self.optim.step()
        with torch.no_grad():
            for name, b in self.whole.named_buffers():
                if name in avg:
                    b.copy_(avg[name])


class WholeModelAlgorithm(Algorithm):
    """The driver FedAvg and large-batch SGD share; each defines ``run_round``. A variant that changes what
    clients or the server do names its own program classes here."""

    splits_model = False              # no activations or cut gradients cross: nothing for cut-layer attacks
    CLIENT_PROGRAM: type = WholeModelClient
    SERVER_PROGRAM: type = WholeModelServer

    @classmethod
    def supports_topology(cls, topology: Topology) -> str | None:
        """None if this algorithm can train ``topology``, else what it needs (checked by ``prepare``): every
        client trains the whole network, so the clients must hold every feature of their samples."""
        if CLIENT not in topology.roles or topology.input_views:
            return (f"trains the whole network at each {CLIENT}: it needs clients that hold every feature of their "
                    f"samples (topology {topology.name} has parties {', '.join(topology.roles)})")
        return None

    def start(self) -> None:
        self.hosts = Hosts.start(self.plan, self.capture, other_roles=[SERVER])
        self.server = self.hosts.roles[SERVER]
        # the seeded initial network: the same start as SplitNN
        programs = {**dict.fromkeys(self.hosts.workers, self.CLIENT_PROGRAM), self.server: self.SERVER_PROGRAM}
        self.hosts.install(WHOLE, programs, segments="all")

    def on(self, host, method: str, *args, num_returns: int = 1):
        """Call a method of the program on ``host`` (no wait)."""
        return self.hosts.call(host, WHOLE, method, *args, returns=num_returns)

    def collect(self, stats_refs: list, server_refs: list, desc: str) -> dict:
        """Merge the clients' train stats as they arrive; wait for (and surface any error of) the server's calls."""
        out = self.hosts.gather_stats(stats_refs, desc, self.progress, unit="call")
        self.hosts.get(server_refs)
        return out

    def state(self) -> dict:
        return {"hosts": self.hosts.states(WHOLE)}

    def restore(self, state: dict, round_: int) -> None:
        self.hosts.load_states(WHOLE, state["hosts"])

    def model(self) -> ComposedNet:
        net = ComposedNet(self.plan.topology, copy.deepcopy(self.plan.modules))
        net.load_state_dict(self.hosts.get(self.on(self.server, "whole_state")))
        return net
