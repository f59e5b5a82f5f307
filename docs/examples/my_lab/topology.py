"""A topology: (config, input shape, classes) -> (Topology, segment modules). Here: vanilla split learning
with a learned bottleneck at the cut, a 1x1 convolution on the client that shrinks the channels it sends
by ``FACTOR`` and one on the server that restores them (fewer bytes per step than vanilla)."""
from collections import OrderedDict

import torch
from torch import nn

from raysplit.errors import ConfigError
from raysplit.models import build_model, cut_positions, split_model
from raysplit.topology import CLIENT, INPUT, TOPOLOGIES, Segment, Topology

FACTOR = 4


@TOPOLOGIES.register("bottleneck")
def bottleneck(cfg, input_shape, num_classes):
    if len(cfg.model.cut_layers) != 1:
        raise ConfigError("model.cut_layers", cfg.model.cut_layers, "exactly 1 cut layer for topology bottleneck")
    model = build_model(cfg.model.name, input_shape, num_classes, seed=cfg.seed)
    bottom, top = split_model(model, cut_positions(model, cfg.model.cut_layers, model_name=cfg.model.name))
    with torch.no_grad():
        cut = bottom(torch.zeros(1, *input_shape))
    if cut.dim() != 4 or cut.shape[1] < FACTOR:
        raise ConfigError("model.cut_layers", cfg.model.cut_layers,
                          f"a cut after a convolution with at least {FACTOR} channels (got {list(cut.shape[1:])})")
    narrow = cut.shape[1] // FACTOR
    client = nn.Sequential(OrderedDict([*bottom.named_children(), ("squeeze", nn.Conv2d(cut.shape[1], narrow, 1))]))
    server = nn.Sequential(OrderedDict([("expand", nn.Conv2d(narrow, cut.shape[1], 1)), *top.named_children()]))
    segments = (Segment("s0", CLIENT, (INPUT,)), Segment("s1", "server", ("s0",), task="y"))
    return Topology("bottleneck", segments, label_holders={"y": CLIENT}), {"s0": client, "s1": server}
