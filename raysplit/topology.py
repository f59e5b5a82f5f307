"""Topologies: which party holds which segment, declared as data (graph.py) and run by one engine.

The registered topologies are builders ``(config, input_shape, num_classes) -> (Topology, segment modules)``;
adding one is a function registered with ``@TOPOLOGIES.register("name")`` (a user's own, in their module).
The vocabulary (``Segment``, ``Topology``, ``ComposedNet``, ``CLIENT``, ``INPUT``) is graph.py's, importable
from here too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from raysplit.config import CHAINS, ExperimentConfig, holder_names
from raysplit.data import FeatureView, coarse_groups
from raysplit.errors import ConfigError
from raysplit.graph import CLIENT, INPUT, ComposedNet, Segment, Topology, check_graph  # noqa: F401 (public here)
from raysplit.models import Combine, Joined, build_model, cut_positions, fit_input, split_model
from raysplit.registry import Registry


# --------------------------------------------------------------------------- the registered topologies

def _cuts(cfg: ExperimentConfig, needed: int, between: Sequence[str]) -> list:
    """The config's cut layers, which must be one per boundary between the parties ``between``."""
    cuts = cfg.model.cut_layers
    if len(cuts) != needed:
        gap = (f"a cut is missing: {between[-1]} would hold no segment" if len(cuts) < needed
               else f"{len(cuts) - needed} too many: a segment would have no party")
        raise ConfigError("model.cut_layers", cuts, f"exactly {needed} cut layer{'s' if needed > 1 else ''} for "
                          f"topology {cfg.topology}, one per boundary between {' -> '.join(between)} ({gap})")
    return cuts


def chain_parties(cfg: ExperimentConfig) -> list[str]:
    """Who holds each segment of a chain topology: the config's ``parties`` or the topology's default."""
    name, n_cuts = cfg.topology, len(cfg.model.cut_layers)
    default = {"vanilla": [CLIENT, "server"], "u_shaped": [CLIENT, "server", CLIENT],
               "extended": [CLIENT, "relay", "server"],
               "multi_hop": [CLIENT, *(f"hop{i}" for i in range(1, max(n_cuts, 2))), "server"]}[name]
    if cfg.parties is None:
        return default
    parties = list(cfg.parties)
    shape = {"vanilla": "2 parties: client, then the party holding the rest and the labels",
             "u_shaped": "3 parties: client, the party holding the middle, client again (it keeps head and labels)",
             "extended": "3 distinct parties: client, an intermediate party, the server",
             "multi_hop": "3 or more distinct parties: client, one or more hops, the server"}[name]
    want = {"vanilla": 2, "u_shaped": 3, "extended": 3}.get(name)
    if parties[0] != CLIENT or (want and len(parties) != want) or len(parties) < 3 and name == "multi_hop":
        raise ConfigError("parties", parties, shape)
    if name == "u_shaped" and parties[-1] != CLIENT:
        raise ConfigError("parties", parties, shape)
    chain = parties[:-1] if name == "u_shaped" else parties     # u_shaped returns to client by design
    repeated = next((p for i, p in enumerate(chain) if p in chain[:i]), None)
    if repeated:
        raise ConfigError("parties", parties, shape + f" ({repeated} appears twice: the chain loops)")
    return parties


def _chain(cfg: ExperimentConfig, input_shape, num_classes) -> tuple[Topology, dict[str, nn.Module]]:
    """A chain of segments s0 -> s1 -> ... -> head held by ``chain_parties``, cut at the config's cut layers;
    the labels are the client's."""
    owners = chain_parties(cfg)
    if cfg.topology == "multi_hop" and cfg.parties is None and len(cfg.model.cut_layers) < 2:
        raise ConfigError("model.cut_layers", cfg.model.cut_layers, "at least 2 cut layers for topology multi_hop "
                          "(client -> hop1 -> server; each further cut adds a hop)")
    cuts = _cuts(cfg, len(owners) - 1, owners)
    model = build_model(cfg.model.name, input_shape, num_classes, seed=cfg.seed)
    parts = split_model(model, cut_positions(model, cuts, model_name=cfg.model.name))
    segments = tuple(
        Segment(f"s{i}", owner, (INPUT,) if i == 0 else (f"s{i - 1}",), "y" if i == len(owners) - 1 else None)
        for i, owner in enumerate(owners))
    return Topology(cfg.topology, segments, {"y": CLIENT}), {f"s{i}": p for i, p in enumerate(parts)}


# vanilla: the client holds the bottom; the server the rest and (sent by the client) the labels.
# u_shaped: the client holds bottom and head and keeps its labels; the server only sees cut activations.
# extended: vanilla with a further segment at an intermediate entity (the relay) between client and server.
# multi_hop: Tor-like, the network cut into several segments held by a chain of entities, the last the server.
vanilla = u_shaped = extended = multi_hop = _chain


def vertical(cfg: ExperimentConfig, input_shape, num_classes) -> tuple[Topology, dict[str, nn.Module]]:
    """Vertically partitioned data: each holder runs its own bottom on its features of the same samples
    (an image region, a group of columns); the server joins their cut outputs and trains the rest."""
    v, names = cfg.vertical, holder_names(cfg)
    (cut,) = _cuts(cfg, 1, ["holders", "server"])
    views = {}
    for i, (h, name) in enumerate(zip(v.holders, names)):
        views[name] = FeatureView(tuple(h.rows) if h.rows else None, tuple(h.columns) if h.columns else None)
        views[name].check(tuple(input_shape), f"vertical.holders[{i}]")
    torch.manual_seed(cfg.seed)
    probe = torch.zeros(2, *input_shape)
    bottoms, outs = {}, []
    for i, name in enumerate(names):
        # the model's own layers up to the cut, on this holder's block of features
        x = views[name](probe)
        block = {"rows": v.holders[i].rows, "columns": v.holders[i].columns}
        model = build_model(cfg.model.name, x.shape[1:], num_classes)
        bottom = split_model(model, cut_positions(model, [cut], model_name=cfg.model.name))[0]
        bottoms[name] = fit_input(bottom, x, f"vertical.holders[{i}]", block,
                                  f"a block big enough for {cfg.model.name} up to {cut}")
        with torch.no_grad():
            outs.append(bottoms[name].eval()(x))
        bottoms[name].train()
        same = (lambda o: o.shape[2:]) if v.combine == "concat" else (lambda o: o.shape[1:])
        if same(outs[-1]) != same(outs[0]):
            verb = {"concat": "concatenated", "sum": "summed", "mean": "averaged"}[v.combine]
            raise ConfigError(f"vertical.holders[{i}]", block,
                              f"a block whose cut output ({list(outs[-1].shape[1:])}) can be {verb} with the first "
                              f"holder's ({list(outs[0].shape[1:])}); choose equal blocks or a later cut")
    full = build_model(cfg.model.name, input_shape, num_classes)
    rest = split_model(full, cut_positions(full, [cut], model_name=cfg.model.name))[1]
    combine = Combine(v.combine)
    top = Joined(combine, fit_input(rest, combine(*outs), "model.cut_layers", cfg.model.cut_layers,
                                    f"a cut whose joined ({v.combine}) outputs the rest of {cfg.model.name} can take"))
    # the label holder drives each step, so its segment comes first (the server, if it holds them, never does)
    order = sorted(names, key=lambda n: n != v.label_holder)
    segments = (*(Segment(f"{n}_bottom", n, (INPUT,)) for n in order),
                Segment("top", "server", tuple(f"{n}_bottom" for n in names), "y"))
    modules = {f"{n}_bottom": bottoms[n] for n in names} | {"top": top}
    return Topology("vertical", segments, {"y": v.label_holder}, input_views=views), modules


@dataclass(frozen=True)
class GroupLabels:
    """The coarse task's labels: each class label mapped to its group."""
    groups: tuple[int, ...]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.groups, dtype=y.dtype)[y]


def multi_task(cfg: ExperimentConfig, input_shape, num_classes) -> tuple[Topology, dict[str, nn.Module]]:
    """One client bottom feeding two heads: the class (at the server) and a coarse group of it (at
    ``multi_task.group_owner``), each with its loss; the client's bottom learns from the sum."""
    groups = coarse_groups(cfg.data.dataset, num_classes, cfg.multi_task.groups, "multi_task.groups")
    owner = cfg.multi_task.group_owner
    (cut,) = _cuts(cfg, 1, [CLIENT, "the heads"])
    model = build_model(cfg.model.name, input_shape, num_classes, seed=cfg.seed)
    positions = cut_positions(model, [cut], model_name=cfg.model.name)
    bottom, head = split_model(model, positions)
    group_head = split_model(build_model(cfg.model.name, input_shape, max(groups) + 1), positions)[1]
    segments = (Segment("bottom", CLIENT, (INPUT,)), Segment("head", "server", ("bottom",), "y"),
                Segment("group_head", owner, ("bottom",), "group"))
    topo = Topology("multi_task", segments, {"y": CLIENT, "group": CLIENT}, task_labels={"group": GroupLabels(tuple(groups))})
    return topo, {"bottom": bottom, "head": head, "group_head": group_head}


TOPOLOGIES = Registry("topology", "topology")
for _name, _build in {"vanilla": vanilla, "u_shaped": u_shaped, "vertical": vertical, "extended": extended,
                      "multi_task": multi_task, "multi_hop": multi_hop}.items():
    TOPOLOGIES.register(_name, _build)
assert all(c in TOPOLOGIES for c in CHAINS)


def build_topology(cfg: ExperimentConfig, input_shape, num_classes) -> tuple[Topology, dict[str, nn.Module]]:
    return TOPOLOGIES.get(cfg.topology, "topology")(cfg, input_shape, num_classes)
