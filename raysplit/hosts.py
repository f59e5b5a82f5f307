"""The party hosts of one run, and every call a driver makes to them.

A driver (algorithms/) says *what* a round does; ``Hosts`` is *where* it runs (as Flower's ``RayBackend``
hides Ray from its strategies): it starts the hosts (one actor per worker, hosting virtual clients, and one per
other role), installs an algorithm's programs on them, each with the segments its roles own, submits calls
and streams, gathers train statistics, drains ledgers and meters, saves and loads program state, finds lost
hosts, and stops them. A call returns a *handle* (a Ray ObjectRef) that the driver passes on, unopened, to
other calls: tensors go from host to host, never through the driver.
"""
from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tqdm import tqdm

from raysplit.accounting import merge_stats
from raysplit.config import ExperimentConfig, Resources
from raysplit.errors import ConfigError
from raysplit.graph import CLIENT, INPUT, Topology
from raysplit.host import ClientIndices, RemotePartyHost
from raysplit.plugins import merge_metrics
from raysplit.runtime import check_capacity, connect, reserve, threads_for

log = logging.getLogger("raysplit")

HOST_START_TIMEOUT_S = 300
PING_TIMEOUT_S = 30


class StreamEnded(RuntimeError):
    """A host's stream of results ended before its last item: the host, or a party it was working with, is gone."""


# what a call raises when a party host it needed is gone (the experiment restarts the hosts and replays)
LOST_PARTY = (ray.exceptions.RayError, StreamEnded)


@dataclass
class Hosts:
    """The party hosts of one run. Drivers reach them only through these methods."""
    workers: list[Any]                                   # actors hosting virtual clients
    roles: dict[str, Any] = field(default_factory=dict)  # non-client role -> actor
    client_host: dict[int, Any] = field(default_factory=dict)
    topology: Topology | None = None
    modules: dict = field(default_factory=dict)          # the initial segment modules (the driver's copies)
    host_roles: dict[int, tuple[str, ...]] = field(default_factory=dict)   # id(actor) -> the roles it hosts
    placement_group: Any = None

    @classmethod
    def start(cls, plan, capture_ledger: bool = False, **options) -> "Hosts":
        """Connect to Ray (local or the config's cluster) and start the hosts of a prepared plan (``start_hosts``'
        options: ``other_roles``, ``role_options``, ``extra_roles``)."""
        connect(plan.cfg.runtime.address, host_requests(plan.cfg, plan.topology, len(plan.client_indices),
                                                        options.get("other_roles")))
        return start_hosts(plan.cfg, plan.topology, plan.modules, *shared_training_set(plan.dataset), plan.client_indices,
                           capture_ledger, plan.holder_ids, plugins=plan.plugins, **options)

    @property
    def all(self) -> list[Any]:
        return [*self.workers, *self.roles.values()]

    @property
    def named(self) -> dict[str, Any]:
        """Every host by its party-host name: worker0, worker1, ..., then the roles (server, relay, ...)."""
        return {**{f"worker{i}": h for i, h in enumerate(self.workers)}, **self.roles}

    def clients_by_host(self, clients: list[int]) -> dict[int, list[int]]:
        """{id(worker host): its clients among ``clients``, in their order}: what one streaming call per host gets."""
        mine: dict[int, list[int]] = {}
        for k in clients:
            mine.setdefault(id(self.client_host[k]), []).append(k)
        return mine

    # ------------------------------------------------------------------ programs
    def install(self, key: str, programs: dict, *args, segments: str | None = "own") -> None:
        """Install a program on hosts and wait: ``programs`` maps a host to its program class, built on the host
        as ``program(host, segment modules, *args)``. ``segments``: ``"own"``, the segments its roles own (a host
        holds no one else's part of the model); ``"all"``, the whole network (the whole-model baselines); None,
        no modules argument."""
        shared: dict = {}

        def modules_of(h) -> tuple:
            if segments is None:
                return ()
            roles = self.host_roles[id(h)]
            key_ = "all" if segments == "all" else roles
            if key_ not in shared:
                shared[key_] = ray.put(self.modules if segments == "all" else
                                       {n: m for n, m in self.modules.items() if self.topology.segment(n).owner in roles})
            return (shared[key_],)
        ray.get([h.install.remote(key, program, *modules_of(h), *args) for h, program in programs.items()])

    def call(self, host, key: str, method: str, *args, returns: int = 1):
        """Call a method of the program ``key`` on ``host``: a handle (or ``returns`` handles), not waited for."""
        return host.call.options(num_returns=returns).remote(key, method, *args)

    def stream(self, host, key: str, method: str, *args, window: int | None = None):
        """Call a program method that yields: an iterator of handles, one per item as soon as it is yielded.
        ``window``: at most that many items unread before the host waits (backpressure)."""
        options: dict = {"num_returns": "streaming"}
        if window is not None:
            options["_generator_backpressure_num_objects"] = window
        return host.stream.options(**options).remote(key, method, *args)

    @staticmethod
    def next_item(stream) -> Any:
        """The next item of a stream; a stream cut short (its host died) raises the host's error."""
        ref = next(stream, None)
        if ref is None:
            ray.get(stream.completed())
            raise StreamEnded("a host's stream of results ended early")
        return ref

    # ------------------------------------------------------------------ handles
    @staticmethod
    def get(handles):
        """The values behind handles (surfacing any error of the calls)."""
        return ray.get(handles)

    @staticmethod
    def wait(handles: list) -> None:
        """Wait until every call has finished, without fetching its values here."""
        ray.wait(list(handles), num_returns=len(handles), fetch_local=False)

    @staticmethod
    def put(value):
        return ray.put(value)

    def gather_stats(self, handles: list, desc: str, progress: bool, unit: str = "client") -> dict:
        """Merge train stats as the calls finish, with a progress bar; errors in the calls surface here.
        ``handles``: handles, or (handle, units it stands for) where one call covers several clients."""
        out: dict = {}
        counts = dict(h if isinstance(h, tuple) else (h, 1) for h in handles)
        pending = list(counts)
        with tqdm(total=sum(counts.values()), desc=desc, unit=unit, leave=False, disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                merge_stats(out, ray.get(done[0]))
                bar.update(counts[done[0]])
        return out

    # ------------------------------------------------------------------ round boundaries
    def drain(self) -> tuple[list, dict, dict]:
        """The round's ledger entries, FLOP totals and plug-in metrics from every party host."""
        entries, flops, metrics = [], defaultdict(int), []
        for e, f, m in ray.get([h.drain.remote() for h in self.all]):
            entries += e
            for k, v in f.items():
                flops[k] += v
            metrics.append(m)
        return entries, dict(flops), merge_metrics(metrics)

    def states(self, key: str) -> dict[str, dict]:
        """{host name: the state of its program ``key``}, at a round boundary: what a checkpoint holds."""
        named = self.named
        return dict(zip(named, ray.get([h.call.remote(key, "state") for h in named.values()])))

    def load_states(self, key: str, states: dict[str, dict]) -> None:
        ray.get([self.named[name].call.remote(key, "load_state", s) for name, s in states.items()])

    def dead(self) -> list[str]:
        """The names of the party hosts whose process is gone (a host that does not answer in time counts too)."""
        pings = {name: h.ping.remote() for name, h in self.named.items()}
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=PING_TIMEOUT_S)
        dead = []
        for name, ref in pings.items():
            try:
                if ref not in ready:
                    raise TimeoutError
                ray.get(ref)
            except (ray.exceptions.RayActorError, TimeoutError):
                dead.append(name)
        return dead

    def stop(self) -> None:
        stop_hosts(self)


# arrays the driver swapped for views of their object-store copy: id(view) -> (the view, weakly; its ref; the node)
_IN_STORE: dict[int, tuple[weakref.ref, ray.ObjectRef, str]] = {}


def shared_training_set(dataset) -> tuple[np.ndarray, np.ndarray]:
    """The training set put in Ray's object store once, its arrays on ``dataset`` swapped for zero-copy views of
    the store's copy: the driver (which evaluates on the test set) keeps no second copy of what the party hosts
    read, and ``start_hosts`` hands them the same object again (a restart, the next algorithm of a comparison)."""
    for name in ("train_x", "train_y"):
        array = getattr(dataset, name)
        if _stored(array) is None:
            ref = ray.put(array)
            view = ray.get(ref)
            _IN_STORE[id(view)] = (weakref.ref(view), ref, ray.get_runtime_context().get_node_id())
            setattr(dataset, name, view)
    return dataset.train_x, dataset.train_y


def _stored(array: np.ndarray) -> ray.ObjectRef | None:
    for key in [k for k, (view, _, _) in _IN_STORE.items() if view() is None]:
        del _IN_STORE[key]
    entry = _IN_STORE.get(id(array))
    # a view of this Ray's store (not of one shut down since)
    if entry and entry[0]() is array and entry[2] == ray.get_runtime_context().get_node_id():
        return entry[1]
    return None


def put_once(array: np.ndarray) -> ray.ObjectRef:
    """``ray.put(array)``, unless it is a view ``shared_training_set`` made: then its object, not a new copy."""
    return _stored(array) or ray.put(array)


def host_requests(cfg: ExperimentConfig, topology: Topology, n_clients: int,
                  other_roles: list[str] | None = None) -> list[tuple[str, Resources]]:
    """(config field, resources) of each party host ``start_hosts`` starts, in its order: one per worker, then
    one per other role (by default the topology's)."""
    if other_roles is None:
        other_roles = [r for r in topology.roles if r != CLIENT]
    n_workers = min(cfg.runtime.workers, n_clients) if CLIENT in topology.roles else 0
    return [("runtime.worker", cfg.runtime.worker)] * n_workers + [("runtime.server", cfg.runtime.server)] * len(other_roles)


def start_hosts(cfg: ExperimentConfig, topology: Topology, modules: dict, train_x, train_y,
                client_indices: list, capture_ledger: bool = False, holder_ids: dict[str, np.ndarray] | None = None,
                role_options: dict | None = None, other_roles: list[str] | None = None, plugins: list = (),
                extra_roles: dict[str, Resources] | None = None) -> Hosts:
    """One actor per worker (hosting clients k with k % workers == i) and one per other role (by default the
    topology's; the whole-model baselines ask for just the server).

    Each party gets only the data it holds: its own features (``topology.view``) if it reads raw inputs, the
    labels if it holds them; a role in ``holder_ids`` only the rows of those training-sample ids. Without
    virtual clients (vertical), the first segment's owner drives the steps over ``client_indices``.
    ``role_options``: extra Ray actor options for the non-client hosts (e.g. max_concurrency). ``plugins``: each
    host gets its own copy. The hosts hold no model yet: ``Hosts.install`` gives each the segments it runs.
    ``extra_roles``: {role: resources} of hosts for parties that own no segment and hold no data (SplitFed's
    fed server, which only averages): started after the others, outside the placement group (a tiny request
    needs no bundle of its own, and a spread placement counts only the hosts that train).
    """
    rt, holder_ids = cfg.runtime, holder_ids or {}
    if other_roles is None:
        other_roles = [r for r in topology.roles if r != CLIENT]
    requests = host_requests(cfg, topology, len(client_indices), other_roles)
    n_workers = len(requests) - len(other_roles)
    check_capacity(requests)
    names = [*(f"worker{w}" for w in range(n_workers)), *other_roles, *(extra_roles or {})]
    log.info("starting %d party hosts: %s ...", len(names), ", ".join(names))
    t0 = time.perf_counter()
    pg = reserve(rt.placement, requests)
    common = dict(training=cfg.training, seed=cfg.seed, deterministic=rt.deterministic, capture_ledger=capture_ledger,
                  plugins=list(plugins))

    def data_of(role: str) -> dict:
        ids = holder_ids.get(role)
        rows = slice(None) if ids is None else ids
        out = {"sample_ids": ids}
        if any(s.owner == role and INPUT in s.inputs for s in topology.segments):
            x = train_x if role not in topology.input_views and ids is None else \
                topology.view(role, torch.tensor(train_x[rows])).numpy()
            out["data_x"] = put_once(x)
        if role in topology.label_holders.values():
            out["data_y"] = put_once(train_y if ids is None else train_y[rows])
        return out

    def host(name, roles, res: Resources, options: dict | None = None, in_group: bool = True, **kw):
        opts: dict[str, Any] = dict(num_cpus=res.num_cpus, num_gpus=res.num_gpus, name=None, **(options or {}))
        if res.resources:
            opts["resources"] = dict(res.resources)
        if not in_group:     # in no placement group: neither ours nor one that captures child actors (a Tune trial's)
            opts["scheduling_strategy"] = "DEFAULT"
        elif pg is not None:   # bundles are in the order the hosts are created
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=len(hosts.all))
        return RemotePartyHost.options(**opts).remote(
            name, topology, roles, threads=threads_for(res), use_gpu=res.num_gpus > 0, **common, **kw)

    hosts = Hosts(workers=[], topology=topology, modules=modules, placement_group=pg)
    try:
        client_data = data_of(CLIENT) if n_workers else {}
        for w in range(n_workers):
            # packed (host.ClientIndices): one array per host, not one per client
            ids = range(w, len(client_indices), n_workers)
            mine = ClientIndices(ids, client_indices[w::n_workers])
            hosts.workers.append(host(f"worker{w}", [CLIENT], rt.worker, client_indices=mine, **client_data))
            hosts.host_roles[id(hosts.workers[-1])] = (CLIENT,)
            hosts.client_host.update(dict.fromkeys(ids, hosts.workers[-1]))
        initiator = topology.segments[0].owner
        for role in other_roles:
            steps = dict(client_indices=ClientIndices(range(len(client_indices)), client_indices)) \
                if role == initiator else {}
            hosts.roles[role] = host(role, [role], rt.server, role_options, **data_of(role), **steps)
            hosts.host_roles[id(hosts.roles[role])] = (role,)
            if steps:
                hosts.client_host.update({k: hosts.roles[role] for k in range(len(client_indices))})
        for role, res in (extra_roles or {}).items():
            hosts.roles[role] = host(role, [role], res, role_options, in_group=False)
            hosts.host_roles[id(hosts.roles[role])] = (role,)
        peers = dict(hosts.roles)
        pings = {name: h.ping.remote() for name, h in hosts.named.items()}
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=HOST_START_TIMEOUT_S)
        late = [name for name, ref in pings.items() if ref not in ready]
        if late:
            raise ConfigError("runtime", f"{', '.join(late)} not started", f"party hosts that start within "
                              f"{HOST_START_TIMEOUT_S}s (check the cluster's nodes and runtime.worker / runtime.server)")
        for line in ray.get(list(pings.values())):
            log.info("party host ready: %s", line)
        log.info("party hosts ready in %.1f s", time.perf_counter() - t0)
        ray.get([h.set_peers.remote(peers) for h in hosts.all])
    except BaseException:      # an actor that cannot start: release what was reserved
        stop_hosts(hosts)
        raise
    return hosts


def stop_hosts(hosts: Hosts | None) -> None:
    for h in hosts.all if hosts else []:
        ray.kill(h)
    if hosts and hosts.placement_group is not None:
        remove_placement_group(hosts.placement_group)
