"""Analytic cost model: per-client FLOPs and bytes of SplitNN, FedAvg and large-batch synchronous SGD.

FLOPs come from ONE real forward/backward of each segment under ``count_flops`` (FlopCounterMode: a
FLOP is 2 x a multiply-accumulate; convolutions and matmuls only, batch norm and ReLU count 0) at the
given batch size; those counts are linear in the batch size, so n samples cost n/b of one batch. Bytes
come from tensor shapes. The conventions are those of the runtime's ledger and meter:

- SplitNN (vanilla, sequential), per client per epoch: the client runs the first segment forward and
  backward WITHOUT an input gradient (its input is raw data); the server runs the rest WITH one (it
  sends the gradient at the cut back). The client sends activations (cut numel x bytes per element) and
  labels (int64) per sample and receives the gradient at the cut. Once per epoch (its turn) it receives
  the client-side state from the previous holder and passes it on: the segment's state_dict (parameters
  and buffers, each at its own size) plus the optimizer state. ``peer``: straight to the next client;
  ``server``: through the server (so the server carries it too). A lone client hands nothing on.
- FedAvg, per round per participating client: local_epochs x n samples of the whole model forward and
  backward (no input gradient); weights down and up = 2 x the state_dict's floating-point tensors.
- Large-batch synchronous SGD, per step (ceil(n/b) steps per epoch): the whole model forward and
  backward on the local batch; the gradient goes up (parameters x bytes per element) and the new
  weights come down (state_dict floating-point tensors).

``first_input_grad=True`` (all three methods) also counts the gradient w.r.t. the raw input, which no
method needs: it is a counting convention the paper tables try, not what the runtime does.

Time on a network (closed forms over these bytes and FLOPs): analysis/time_model.py.

Command line: ``raysplit costs`` (analysis/costs.py).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from raysplit.accounting import count_flops
from raysplit.errors import ConfigError
from raysplit.models import MODELS, build_model, cut_positions, split_model

LABEL_BYTES = 8          # labels travel as int64 class indices
ADAM_STEP_BYTES = 4      # torch keeps Adam's step count as a float32 scalar tensor per parameter
OPTIMIZERS = ("sgd", "sgd_momentum", "adam")
HANDOFF_MODES = ("peer", "server")
ANALYSIS_DIR = Path(__file__).resolve().parent      # default home of the tables and figures


# ---------------------------------------------------------------------------------------------------
# What one model (cut into segments) costs, measured once


@dataclass(frozen=True)
class StateSize:
    """Sizes of a module's state. Floating tensors are kept in elements so any precision can be priced."""

    param_numels: tuple[int, ...]   # trainable parameters, one entry per tensor
    float_state_numel: int          # floating-point tensors of the state_dict (parameters + running stats)
    other_state_bytes: int          # non-float state_dict tensors at their own size (num_batches_tracked)

    @property
    def num_parameters(self) -> int:
        return sum(self.param_numels)

    def float_state_bytes(self, bytes_per_element: int = 4) -> int:
        return self.float_state_numel * bytes_per_element

    def state_bytes(self, bytes_per_element: int = 4) -> int:
        """Every state_dict tensor, as a hand-off sends it."""
        return self.float_state_bytes(bytes_per_element) + self.other_state_bytes

    def optimizer_bytes(self, optimizer: str, bytes_per_element: int = 4) -> int:
        """Tensors in the optimizer's state_dict after its first step."""
        params = self.num_parameters * bytes_per_element
        if optimizer == "sgd":
            return 0
        if optimizer == "sgd_momentum":
            return params                                   # one momentum buffer per parameter
        if optimizer == "adam":
            return 2 * params + ADAM_STEP_BYTES * len(self.param_numels)  # exp_avg, exp_avg_sq, step
        raise ConfigError("optimizer", optimizer, "one of " + ", ".join(OPTIMIZERS))


def state_size(module: torch.nn.Module) -> StateSize:
    state = module.state_dict()
    floats = [t for t in state.values() if t.is_floating_point()]
    others = [t for t in state.values() if not t.is_floating_point()]
    return StateSize(
        param_numels=tuple(p.numel() for p in module.parameters() if p.requires_grad),
        float_state_numel=sum(t.numel() for t in floats),
        other_state_bytes=sum(t.numel() * t.element_size() for t in others),
    )


@dataclass(frozen=True)
class SegmentCosts:
    """A model cut at ``positions``: FLOPs of one batch per segment, cut sizes and state sizes.

    Segment 0 is counted with or without an input gradient (``first_input_grad``); every later segment
    with one, because the gradient at its input is what goes back over the cut.
    """

    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    positions: tuple[int, ...]
    batch_size: int
    first_input_grad: bool
    batch_flops: tuple[tuple[int, int], ...]   # (forward, backward) of one batch, per segment
    cut_numels: tuple[int, ...]                # activation elements per sample at each cut
    states: tuple[StateSize, ...]              # per segment

    def flops(self, samples: int, segments: slice | int = slice(None)) -> tuple[int, int]:
        """(forward, backward) FLOPs of ``samples`` samples through the chosen segment(s)."""
        chosen = self.batch_flops[segments] if isinstance(segments, slice) else [self.batch_flops[segments]]
        fwd = sum(f for f, _ in chosen)
        bwd = sum(b for _, b in chosen)
        return _scale(fwd, samples, self.batch_size), _scale(bwd, samples, self.batch_size)

    def training_flops(self, samples: int, segments: slice | int = slice(None)) -> int:
        return sum(self.flops(samples, segments))


def _scale(batch_count: int, samples: int, batch_size: int) -> int:
    """FLOPs of ``samples`` samples from the count of one batch (exact when the count is linear in b)."""
    return (batch_count * samples + batch_size // 2) // batch_size


@functools.lru_cache(maxsize=None)
def _built(model: str, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Sequential:
    """A private instance per (model, shape): only read here, never handed out (count_flops copies it)."""
    with torch.random.fork_rng(devices=[]):     # building initialises weights: leave the caller's RNG alone
        return build_model(model, input_shape, num_classes).eval()


@functools.lru_cache(maxsize=None)
def _measure(model: str, input_shape: tuple[int, ...], num_classes: int, positions: tuple[int, ...],
             batch_size: int, first_input_grad: bool) -> SegmentCosts:
    segments = split_model(_built(model, input_shape, num_classes), positions)
    x = torch.zeros(batch_size, *input_shape)
    batch_flops, cut_numels = [], []
    for i, seg in enumerate(segments):
        seg = copy.deepcopy(seg).train()        # training-mode FLOPs; the copy keeps the cached model clean
        try:
            batch_flops.append(count_flops(seg, [x], input_grad=first_input_grad if i == 0 else True))
            with torch.no_grad():
                x = seg.eval()(x)               # only the shape matters here; eval mode takes any batch
        except RuntimeError as err:
            raise ConfigError("input_shape", list(input_shape),
                              f"a shape {model} accepts ({str(err).splitlines()[0][:120]})") from None
        if i < len(segments) - 1:
            cut_numels.append(x[0].numel())
    return SegmentCosts(model, input_shape, num_classes, positions, batch_size, first_input_grad,
                        tuple(batch_flops), tuple(cut_numels), tuple(state_size(s) for s in segments))


def segment_costs(model: str, input_shape: Sequence[int], num_classes: int, cuts: Sequence[str | int] = (),
                  batch_size: int = 64, first_input_grad: bool = False) -> SegmentCosts:
    """Measure ``model`` cut at ``cuts`` (layer names or positions; none = the whole model). Cached."""
    if model not in MODELS:
        raise ConfigError("model", model, "one of " + ", ".join(sorted(MODELS)))
    shape = _shape(input_shape)
    _positive("num_classes", num_classes)
    _positive("batch_size", batch_size)
    cuts = [cuts] if isinstance(cuts, (str, int)) else list(cuts)
    positions = tuple(cut_positions(_built(model, shape, num_classes), cuts, field="cut", model_name=model))
    return _measure(model, shape, num_classes, positions, batch_size, first_input_grad)


def _shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError("input_shape", input_shape, "positive integers, e.g. 3,32,32")
    return shape


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "an integer >= 1")


# ---------------------------------------------------------------------------------------------------
# Per-client costs of each method


@dataclass(frozen=True)
class MethodCosts:
    """What one client costs over the whole run; bytes broken down by ledger kind.

    ``server_*`` is the server's share due to this client (multiply by ``num_clients`` for totals).
    """

    method: str
    num_clients: int
    client_flops: int
    server_flops: int
    client_sent: dict[str, int] = field(default_factory=dict)
    client_received: dict[str, int] = field(default_factory=dict)
    server_sent: dict[str, int] = field(default_factory=dict)
    server_received: dict[str, int] = field(default_factory=dict)

    @property
    def client_bytes_sent(self) -> int:
        return sum(self.client_sent.values())

    @property
    def client_bytes_received(self) -> int:
        return sum(self.client_received.values())

    @property
    def client_bytes(self) -> int:
        """The paper's "bandwidth per client": bytes sent plus bytes received."""
        return self.client_bytes_sent + self.client_bytes_received


def splitnn_costs(model: str, input_shape: Sequence[int], num_classes: int, cuts: Sequence[str | int],
                  samples_per_client: int, num_clients: int, epochs: int, batch_size: int, *,
                  bytes_per_element: int = 4, optimizer: str = "sgd_momentum", handoff: str = "peer",
                  first_input_grad: bool = False) -> MethodCosts:
    """Vanilla sequential SplitNN; the client holds segment 0, the server the rest."""
    _check_run(samples_per_client, num_clients, epochs, bytes_per_element)
    if handoff not in HANDOFF_MODES:
        raise ConfigError("handoff", handoff, "one of " + ", ".join(HANDOFF_MODES))
    if not cuts:
        raise ConfigError("cut", list(cuts), "at least one cut layer")
    seg = segment_costs(model, input_shape, num_classes, cuts, batch_size, first_input_grad)
    n, bpe = samples_per_client, bytes_per_element
    smashed = epochs * n * seg.cut_numels[0] * bpe        # activations up, gradients down: same size
    turns = epochs if num_clients > 1 else 0              # one hand-off per client turn (epoch)
    weights = turns * seg.states[0].state_bytes(bpe)
    opt_state = turns * seg.states[0].optimizer_bytes(optimizer, bpe)
    handed = {"weights": weights, "optimizer_state": opt_state}
    via_server = handed if handoff == "server" else {}
    return MethodCosts(
        method="splitnn", num_clients=num_clients,
        client_flops=epochs * seg.training_flops(n, 0),
        server_flops=epochs * seg.training_flops(n, slice(1, None)),
        client_sent={"activation": smashed, "labels": epochs * n * LABEL_BYTES, **handed},
        client_received={"gradient": smashed, **handed},
        server_sent={"gradient": smashed, **via_server},
        server_received={"activation": smashed, "labels": epochs * n * LABEL_BYTES, **via_server},
    )


def fedavg_costs(model: str, input_shape: Sequence[int], num_classes: int, samples_per_client: int,
                 num_clients: int, rounds: int, batch_size: int, *, local_epochs: int = 1,
                 bytes_per_element: int = 4, first_input_grad: bool = False) -> MethodCosts:
    """Federated averaging with every client taking part in every round."""
    _check_run(samples_per_client, num_clients, rounds, bytes_per_element)
    _positive("local_epochs", local_epochs)
    whole = segment_costs(model, input_shape, num_classes, (), batch_size, first_input_grad)
    weights = rounds * whole.states[0].float_state_bytes(bytes_per_element)
    return MethodCosts(
        method="fedavg", num_clients=num_clients,
        client_flops=rounds * local_epochs * whole.training_flops(samples_per_client),
        server_flops=0,                                    # averaging: elementwise, not counted
        client_sent={"weights": weights}, client_received={"weights": weights},
        server_sent={"weights": weights}, server_received={"weights": weights},
    )


def large_batch_sgd_costs(model: str, input_shape: Sequence[int], num_classes: int, samples_per_client: int,
                          num_clients: int, epochs: int, batch_size: int, *,
                          bytes_per_element: int = 4, first_input_grad: bool = False) -> MethodCosts:
    """Synchronous data-parallel SGD: every step, gradients up and new weights down."""
    _check_run(samples_per_client, num_clients, epochs, bytes_per_element)
    whole = segment_costs(model, input_shape, num_classes, (), batch_size, first_input_grad)
    steps = epochs * math.ceil(samples_per_client / batch_size)
    grads = steps * whole.states[0].num_parameters * bytes_per_element
    weights = steps * whole.states[0].float_state_bytes(bytes_per_element)
    return MethodCosts(
        method="large_batch_sgd", num_clients=num_clients,
        client_flops=epochs * whole.training_flops(samples_per_client),
        server_flops=0,
        client_sent={"gradient_update": grads}, client_received={"weights": weights},
        server_sent={"weights": weights}, server_received={"gradient_update": grads},
    )


def _check_run(samples_per_client: int, num_clients: int, epochs: int, bytes_per_element: int) -> None:
    _positive("samples_per_client", samples_per_client)
    _positive("num_clients", num_clients)
    _positive("epochs", epochs)
    if bytes_per_element not in (1, 2, 4, 8):
        raise ConfigError("bytes_per_element", bytes_per_element, "1, 2, 4 or 8")
