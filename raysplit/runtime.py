"""Where things run: connect to Ray (local or a cluster), check its capacity, reserve placement groups.

The same code path serves a laptop and a cluster; only ``runtime.address`` and the per-role resources
differ (invariant 5, docs/architecture.md). Per role (``runtime.worker``, ``runtime.server``): CPUs, GPUs (fractions
allowed; a host with ``num_gpus > 0`` runs its segments on its GPU) and custom resources that pin it to the
nodes declaring them; ``runtime.placement`` puts all hosts in one placement group (PACK, SPREAD, ...).
The party hosts of a run, and every call a driver makes to them, are hosts.py's.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import ray._private.worker as worker     # its unhandled-error hook: Ray's own tests replace it the same way
from ray._private.utils import get_num_cpus   # what a local Ray counts (the Ray version is pinned)
from ray.util.placement_group import placement_group, remove_placement_group

from raysplit import console, registry
from raysplit.config import Resources
from raysplit.errors import ConfigError
from raysplit.link import LinkBroken

log = logging.getLogger("raysplit")
PACKAGE = Path(__file__).parent      # raysplit/, shipped to a cluster's workers


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


def connect(address: str | None, requests: list[tuple[str, Resources]] = ()) -> None:
    """Start a local Ray, or attach to a running cluster. A no-op when Ray is already up (tests).
    ``requests``: the party hosts the run will start; a local Ray too small for them is refused before it
    starts (its size is this machine's), so the refusal is the only line."""
    quiet_lost_party_errors()
    if ray.is_initialized():
        return
    if not address:
        check_capacity(requests, {"CPU": local_cpus()})
    # the first line a run shows: Ray takes seconds to start, and the terminal should say what it waits for
    if address:
        log.info("connecting to the Ray cluster at %s ...", address)
    else:
        log.info("starting a local Ray ...")
    t0 = time.perf_counter()
    with keep_signal_handlers():
        _init(address)
    have = ray.cluster_resources()
    log.info("Ray up in %.1f s: %g CPUs, %g GPUs, %.1f GB memory", time.perf_counter() - t0, have.get("CPU", 0),
             have.get("GPU", 0), have.get("memory", 0) / 1e9)


def local_cpus() -> float:
    """The CPUs a local Ray will have: Ray's own count (cgroup limits included)."""
    return float(get_num_cpus())


def quiet_lost_party_errors() -> None:
    """Ray logs an error for each dropped ObjectRef that holds one, whenever the garbage collector frees it.
    After a party host dies, the failed round's calls that waited on it are such refs: raysplit has named the
    lost party itself (the recovery warning, or PartyLost's one line), so these would only be a stack of noise,
    possibly in a later run. Every other unhandled error is still logged. (A call whose argument a dead host
    owed is a RayActorError too; a host whose link's other end died fails with LinkBroken.)"""
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
        # ship this package (and the user's own modules named in the config) to the cluster's workers
        kwargs["runtime_env"] = {"py_modules": [str(PACKAGE), *registry.user_packages()]}
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


def check_capacity(requests: list[tuple[str, Resources]], have: dict[str, float] | None = None) -> None:
    """Refuse, with a clear line, a set of actors the cluster can never schedule (Ray would wait forever).
    ``have``: what to check against, only its keys (default: everything the connected cluster has)."""
    known = have is not None
    have = have if known else ray.cluster_resources()
    for kind, key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        if known and key not in have:
            continue
        want = sum(getattr(r, kind) for _, r in requests)
        if want > have.get(key, 0) + 1e-9:
            fields = sorted({f"{f}.{kind}" for f, r in requests if getattr(r, kind) > 0})
            raise ConfigError(fields[0] if len(fields) == 1 else "runtime", want,
                              f"at most {have.get(key, 0):g} {key}s in total (what the Ray cluster has); "
                              f"lower {', '.join(fields)} or runtime.workers")
    for key in sorted({k for _, r in requests for k in r.resources if not known or k in have}):
        want = sum(r.resources.get(key, 0) for _, r in requests)
        if want > have.get(key, 0) + 1e-9:
            fields = sorted({f"{f}.resources.{key}" for f, r in requests if r.resources.get(key, 0) > 0})
            raise ConfigError(fields[0], want, f"at most {have.get(key, 0):g} of custom resource {key} in total "
                              f"(what the Ray cluster's nodes declare); lower {', '.join(fields)} or runtime.workers")


PLACEMENT_TIMEOUT_S = 120


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
