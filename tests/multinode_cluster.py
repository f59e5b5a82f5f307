"""Run experiments on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``) and print, as JSON,
where each party host ran and the metrics. Used by test_cluster.py in a subprocess of its own, so that its
Ray cluster never meets the test session's ``ray.init``.

    python tests/multinode_cluster.py '<json: {"runs": {name: [--set overrides]}}>'

Nodes: a head with no CPUs and three nodes of 1 CPU each, declaring the custom resources ``node_a`` /
``node_b`` / ``node_c`` (one of their own) and ``worker_slot`` (node_b and node_c only).
"""
import json
import sys

import ray
from ray.cluster_utils import Cluster

NODES = {"node_a": {"node_a": 1}, "node_b": {"node_b": 1, "worker_slot": 1}, "node_c": {"node_c": 1, "worker_slot": 1}}


def main(spec: dict) -> dict:
    from conftest import small_config
    import raysplit.hosts
    from raysplit.experiment import run

    placed: dict[str, str] = {}

    def recording(start_hosts):
        def start(*args, **kwargs):
            hosts = start_hosts(*args, **kwargs)
            named = [*((f"worker{i}", h) for i, h in enumerate(hosts.workers)), *hosts.roles.items()]
            placed.update({name: ray.get(h.node_id.remote()) for name, h in named})
            return hosts
        return start

    raysplit.hosts.start_hosts = recording(raysplit.hosts.start_hosts)     # what Hosts.start calls

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = {name: cluster.add_node(num_cpus=1, resources=res).node_id for name, res in NODES.items()}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        out = {"nodes": nodes, "head": cluster.head_node.node_id, "runs": {}}
        for name, sets in spec["runs"].items():
            placed.clear()
            metrics = run(small_config(*sets), progress=False, write=False).metrics
            out["runs"][name] = {"placed": dict(placed), "metrics": metrics.drop(columns=["wall_s", "wall_s_cum"])
                                 .to_dict(orient="list")}
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))
