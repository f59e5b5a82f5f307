"""Where things run: connect to Ray (local or a cluster) and place the party hosts.

The same code path serves a laptop and a cluster; only ``runtime.address`` and the per-role resources
differ (invariant 5, docs/architecture.md). Per role (``runtime.worker``, ``runtime.server``): CPUs, GPUs (fractions
allowed; a host with ``num_gpus > 0`` runs its segments on its GPU) and custom resources that pin it to the
nodes declaring them; ``runtime.placement`` puts all hosts in one placement group (PACK, SPREAD, ...).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raysplit import console, registry
from raysplit.config import ExperimentConfig, Resources
from raysplit.errors import ConfigError
from raysplit.host import RemotePartyHost
from raysplit.link import LinkBroken
from raysplit.topology import CLIENT, INPUT, Topology

log = logging.getLogger("raysplit")


@contextmanager
def keep_signal_handlers():
    """ray.init installs its own SIGTERM handler (it prints a stack line and exits); keep the process's own,
    so that SIGTERM stops a run as cleanly as Ctrl-C does (cli.py)."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:
                signal.signal(s, handler)


def connect(address: str | None) -> None:
    """Start a local Ray, or attach to a running cluster. A no-op when Ray is already up (tests)."""
    quiet_lost_party_errors()
    if ray.is_initialized():
        return
    with keep_signal_handlers():
        _init(address)
    log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})


def quiet_lost_party_errors() -> None:
    """Ray logs an error for each dropped ObjectRef that holds one, whenever the garbage collector frees it.
    After a party host dies, the failed round's calls that waited on it are such refs: raysplit has named the
    lost party itself (the recovery warning, or PartyLost's one line), so these would only be a stack of noise,
    possibly in a later run. Every other unhandled error is still logged. (A call whose argument a dead host
    owed is a RayActorError too; a host whose link's other end died fails with LinkBroken.)"""
    import ray._private.worker as worker     # the hook Ray calls; its tests replace it the same way

    report = worker._unhandled_error_handler
    if getattr(report, "keeps_lost_parties_quiet", False):
        return

    def handler(error: Exception) -> None:
        lost = (ray.exceptions.RayActorError, LinkBroken)
        if not (isinstance(error, lost) or isinstance(getattr(error, "cause", None), lost)):
            report(error)
    handler.keeps_lost_parties_quiet = True           # type: ignore[attr-defined]
    worker._unhandled_error_handler = handler


def _init(address: str | None) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    console.quiet_ray()          # the command line keeps Ray's start-up lines for run.log, off the terminal
    kwargs: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=True)
    if address:
        _check_reachable(address)
        import raysplit

        # ship this package (and the user's own modules named in the config) to the cluster's workers
        kwargs["runtime_env"] = {"py_modules": [os.path.dirname(raysplit.__file__), *registry.user_packages()]}
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError("runtime.address", address,
                              f"the address of a running Ray cluster ({e}){_why_refused(address)}") from None
    else:
        # Ray starts its workers at nice 15; party hosts are the workload, and at nice 15 they all but stop
        # whenever anything else runs on the machine (measured by the FedAvg benchmark: rounds 1.2-1.6x a plain
        # loop's time on a busy 2-core machine). Equal footing with the driver: nice 0.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # the local workers inherit this environment: let them import the user's modules as the driver did
        os.environ["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys([*registry.SEARCH_PATHS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
        # "local": a new Ray of our own, never a cluster another process left running (ray start)
        ray.init(address="local", **kwargs)


CONNECT_TIMEOUT_S = 10


def _check_reachable(address: str) -> None:
    """An address of the form host:port (or ray://host:port) must answer within seconds; Ray would wait minutes."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        raise ConfigError("runtime.address", address, f"the address of a running Ray cluster, reachable from here "
                          f"(no answer from {host}:{port} within {CONNECT_TIMEOUT_S}s: {e})") from None


def _listening(address: str) -> bool:
    """Whether something accepts TCP connections at HOST:PORT (False for other address forms)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return True
    except OSError:
        return False


def _why_refused(address: str) -> str:
    """Ray only says "Failed to connect"; when a cluster does listen there, say what to set. Ray >= 2.5x starts
    clusters with token authentication (``ray start --head`` and every local run use ~/.ray/auth_token), but a
    driver attaching to a running cluster sends no token unless RAY_AUTH_MODE=token: it is refused with
    InvalidAuthToken warnings."""
    if not _listening(address):
        return ""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    local = os.path.expanduser("~/.ray/auth_token")
    source = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else "RAY_AUTH_TOKEN_PATH" \
        if os.environ.get("RAY_AUTH_TOKEN_PATH") else local if os.path.exists(local) else None
    head = "the cluster's token (`ray get-auth-token` on the head node prints it)"
    if mode == "token":
        return (f"; a Ray cluster listens there but refused this driver's token (from {source or 'nowhere'}): set "
                f"RAY_AUTH_TOKEN to {head}, or RAY_AUTH_TOKEN_PATH to a file holding it")
    if mode == "disabled":
        return (f"; a Ray cluster listens there but refused this driver: with RAY_AUTH_MODE=disabled no token is "
                f"sent; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to {head}")
    where = "" if source == local else f" and RAY_AUTH_TOKEN to {head}" if source is None else \
        f" ({source} must hold {head})"
    return (f"; a Ray cluster listens there but refused this driver (Ray's InvalidAuthToken warnings: the "
            f"cluster uses token authentication and a driver attaching to it sends no token by default): set "
            f"RAY_AUTH_MODE=token{where}"
            + (f" (the token is read from {local}; it must be the cluster's: `ray get-auth-token` on the head "
               f"node prints it)" if source == local else ""))


def threads_for(res: Resources) -> int:
    return res.torch_threads or max(1, int(res.num_cpus))


def check_capacity(requests: list[tuple[str, Resources]]) -> None:
    """Refuse, with a clear line, a set of actors the cluster can never schedule (Ray would wait forever)."""
    have = ray.cluster_resources()
    for kind, key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        want = sum(getattr(r, kind) for _, r in requests)
        if want > have.get(key, 0) + 1e-9:
            fields = sorted({f"{f}.{kind}" for f, r in requests if getattr(r, kind) > 0})
            raise ConfigError(fields[0] if len(fields) == 1 else "runtime", want,
                              f"at most {have.get(key, 0):g} {key}s in total (what the Ray cluster has); "
                              f"lower {', '.join(fields)} or runtime.workers")
    for key in sorted({k for _, r in requests for k in r.resources}):
        want = sum(r.resources.get(key, 0) for _, r in requests)
        if want > have.get(key, 0) + 1e-9:
            fields = sorted({f"{f}.resources.{key}" for f, r in requests if r.resources.get(key, 0) > 0})
            raise ConfigError(fields[0], want, f"at most {have.get(key, 0):g} of custom resource {key} in total "
                              f"(what the Ray cluster's nodes declare); lower {', '.join(fields)} or runtime.workers")


PLACEMENT_TIMEOUT_S = 120
HOST_START_TIMEOUT_S = 300


def bundle(res: Resources) -> dict[str, float]:
    """A host's resource request as a placement-group bundle (Ray refuses zero entries)."""
    return {k: v for k, v in {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}.items() if v > 0}


def reserve(strategy: str | None, requests: list[tuple[str, Resources]]):
    """One placement group with a bundle per host (in ``requests`` order), or None without a strategy."""
    if strategy is None:
        return None
    for f, r in requests:
        if not bundle(r):
            raise ConfigError(f"{f}.num_cpus", r.num_cpus, f"> 0 (or a GPU or custom resource) with runtime.placement "
                              f"{strategy}: a placement-group bundle cannot be empty")
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if strategy == "STRICT_SPREAD" and len(requests) > nodes:
        raise ConfigError("runtime.placement", strategy, f"at most one party host per node: {len(requests)} hosts "
                          f"but {nodes} nodes; use SPREAD or fewer runtime.workers")
    pg = placement_group([bundle(r) for _, r in requests], strategy=strategy)
    if not pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
        remove_placement_group(pg)
        raise ConfigError("runtime.placement", strategy, f"a placement the cluster can satisfy; "
                          f"{[bundle(r) for _, r in requests]} could not be placed within {PLACEMENT_TIMEOUT_S}s")
    return pg


@dataclass
class Hosts:
    workers: list[Any]                                   # actors hosting virtual clients
    roles: dict[str, Any] = field(default_factory=dict)  # non-client role -> actor
    client_host: dict[int, Any] = field(default_factory=dict)
    placement_group: Any = None
    modules: Any = None                                  # ObjectRef of the initial segment modules

    @property
    def all(self) -> list[Any]:
        return [*self.workers, *self.roles.values()]

    @property
    def named(self) -> dict[str, Any]:
        """Every host by its party-host name: worker0, worker1, ..., then the roles (server, relay, ...)."""
        return {**{f"worker{i}": h for i, h in enumerate(self.workers)}, **self.roles}


PING_TIMEOUT_S = 30


def dead_hosts(hosts: Hosts) -> list[str]:
    """The names of the party hosts whose process is gone (a host that does not answer in time counts too)."""
    named = hosts.named
    pings = {name: h.ping.remote() for name, h in named.items()}
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
    host gets its own copy. The hosts hold no model yet: algorithms install their programs with ``modules``.
    ``extra_roles``: {role: resources} of hosts for parties that own no segment and hold no data (SplitFed's
    fed server, which only averages): started after the others, outside the placement group (a tiny request
    needs no bundle of its own, and a spread placement counts only the hosts that train).
    """
    rt, holder_ids = cfg.runtime, holder_ids or {}
    if other_roles is None:
        other_roles = [r for r in topology.roles if r != CLIENT]
    n_workers = min(rt.workers, len(client_indices)) if CLIENT in topology.roles else 0
    requests = [("runtime.worker", rt.worker)] * n_workers + [("runtime.server", rt.server)] * len(other_roles)
    check_capacity(requests)
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

    hosts = Hosts(workers=[], placement_group=pg, modules=ray.put(modules))
    try:
        client_data = data_of(CLIENT) if n_workers else {}
        for w in range(n_workers):
            mine = {k: idx for k, idx in enumerate(client_indices) if k % n_workers == w}
            hosts.workers.append(host(f"worker{w}", [CLIENT], rt.worker, client_indices=mine, **client_data))
            hosts.client_host.update({k: hosts.workers[-1] for k in mine})
        initiator = topology.segments[0].owner
        for role in other_roles:
            steps = dict(client_indices=dict(enumerate(client_indices))) if role == initiator else {}
            hosts.roles[role] = host(role, [role], rt.server, role_options, **data_of(role), **steps)
            if steps:
                hosts.client_host.update({k: hosts.roles[role] for k in range(len(client_indices))})
        for role, res in (extra_roles or {}).items():
            hosts.roles[role] = host(role, [role], res, role_options, in_group=False)
        peers = dict(hosts.roles)
        pings = {name: h.ping.remote() for name, h in hosts.named.items()}
        ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=HOST_START_TIMEOUT_S)
        late = [name for name, ref in pings.items() if ref not in ready]
        if late:
            raise ConfigError("runtime", f"{', '.join(late)} not started", f"party hosts that start within "
                              f"{HOST_START_TIMEOUT_S}s (check the cluster's nodes and runtime.worker / runtime.server)")
        for line in ray.get(list(pings.values())):
            log.info("party host ready: %s", line)
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
