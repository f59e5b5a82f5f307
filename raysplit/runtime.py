"""Where things run: connect to Ray (local or a cluster) and place the party hosts.

The same code path serves a laptop and a cluster; only ``runtime.address`` and the per-role resources
differ (DESIGN invariant 5).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray

from raysplit.config import ExperimentConfig, Resources
from raysplit.errors import ConfigError
from raysplit.parties import RemotePartyHost
from raysplit.topology import CLIENT, Topology

log = logging.getLogger("raysplit")


def connect(address: str | None) -> None:
    """Start a local Ray, or attach to a running cluster. A no-op when Ray is already up (tests)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=True)
    if address:
        import raysplit

        # ship this package to the cluster's workers unless they have it installed (cluster.yaml does)
        kwargs["runtime_env"] = {"py_modules": [os.path.dirname(raysplit.__file__)]}
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError("runtime.address", address, f"the address of a running Ray cluster ({e})") from None
    else:
        ray.init(**kwargs)
    log.info("Ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})


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


@dataclass
class Hosts:
    workers: list[Any]                                   # actors hosting virtual clients
    roles: dict[str, Any] = field(default_factory=dict)  # non-client role -> actor
    client_host: dict[int, Any] = field(default_factory=dict)

    @property
    def all(self) -> list[Any]:
        return [*self.workers, *self.roles.values()]


def start_hosts(cfg: ExperimentConfig, topology: Topology, modules: dict, train_x, train_y,
                client_indices: list, capture_ledger: bool = False, other_roles: list[str] | None = None) -> Hosts:
    """One actor per worker (hosting clients k with k % workers == i) and one per other role (by default the
    topology's; the whole-model baselines ask for just the server)."""
    rt = cfg.runtime
    if other_roles is None:
        other_roles = [r for r in topology.roles if r != CLIENT]
    n_workers = min(rt.workers, len(client_indices)) if CLIENT in topology.roles else 0
    check_capacity([("runtime.worker", rt.worker)] * n_workers + [("runtime.server", rt.server)] * len(other_roles))
    modules_ref, x_ref, y_ref = ray.put(modules), ray.put(train_x), ray.put(train_y)
    common = dict(training=cfg.training, seed=cfg.seed, deterministic=rt.deterministic, capture_ledger=capture_ledger)

    def host(name, roles, res: Resources, **kw):
        return RemotePartyHost.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, name=None).remote(
            name, topology, roles, modules_ref, threads=threads_for(res), use_gpu=res.num_gpus > 0, **common, **kw)

    hosts = Hosts(workers=[])
    for w in range(n_workers):
        mine = {k: idx for k, idx in enumerate(client_indices) if k % n_workers == w}
        hosts.workers.append(host(f"worker{w}", [CLIENT], rt.worker, data_x=x_ref, data_y=y_ref, client_indices=mine))
        hosts.client_host.update({k: hosts.workers[-1] for k in mine})
    for role in other_roles:
        holds_data = topology.label_holders and role in topology.label_holders.values() or any(
            s.owner == role and "input" in s.inputs for s in topology.segments)
        data = dict(data_x=x_ref, data_y=y_ref) if holds_data else {}
        hosts.roles[role] = host(role, [role], rt.server, **data)
    peers = dict(hosts.roles)
    ray.get([h.set_peers.remote(peers) for h in hosts.all])
    for line in ray.get([h.ping.remote() for h in hosts.all]):
        log.info("party host ready: %s", line)
    return hosts


def stop_hosts(hosts: Hosts | None) -> None:
    for h in hosts.all if hosts else []:
        ray.kill(h)
