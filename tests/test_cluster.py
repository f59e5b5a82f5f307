"""Placement on a multi-node Ray cluster, and the cluster launcher config.

The multi-node runs happen in a subprocess (tests/multinode_cluster.py) with a ``ray.cluster_utils.Cluster``
of its own — a head and three 1-CPU nodes with custom resources — so the session's ``ray.init`` is left
alone. The same configs, minus the placement, run here on one node: the metrics must be identical.
"""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import shared_run, small_config
from raysplit.errors import ConfigError
from raysplit.experiment import run
from test_splitfed import sampled_sets

ROOT = Path(__file__).resolve().parents[1]
# SplitFed on two workers (three of five clients a round): test_splitfed.py's sampled runs, whose one-node run
# (once for the session, conftest.shared_run) the cluster's metrics are compared with
PLACEMENT = {
    # the server where the config says (node_a), the workers on the nodes declaring worker_slot
    "pinned_v1": (sampled_sets("v1"), ["runtime.server.resources={node_a: 1}", "runtime.worker.resources={worker_slot: 1}"]),
    # three party hosts, three distinct nodes
    "strict_spread_v2": (sampled_sets("v2"), ["runtime.placement=STRICT_SPREAD"]),
}


@pytest.fixture(scope="module")
def cluster_runs():
    spec = {"runs": {name: [*sets, *where] for name, (sets, where) in PLACEMENT.items()}}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_cluster.py"), json.dumps(spec)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT / "tests")
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_parties_placed_where_the_config_says(cluster_runs):
    nodes, placed = cluster_runs["nodes"], cluster_runs["runs"]["pinned_v1"]["placed"]
    assert placed["server"] == nodes["node_a"]
    assert {placed["worker0"], placed["worker1"]} == {nodes["node_b"], nodes["node_c"]}


def test_strict_spread_uses_a_node_per_party_host(cluster_runs):
    """The placement group holds the hosts that train (a bundle each, a node each). SplitFed's fed server
    only averages: it requests no CPU and stays outside the group (on any node, the CPU-less head included)."""
    placed = dict(cluster_runs["runs"]["strict_spread_v2"]["placed"])
    assert placed.pop("fed_server") in {*cluster_runs["nodes"].values(), cluster_runs["head"]}
    assert sorted(placed) == ["server", "worker0", "worker1"]
    assert len(set(placed.values())) == 3 and cluster_runs["head"] not in placed.values()


@pytest.mark.parametrize("name", sorted(PLACEMENT))
def test_same_metrics_as_on_one_node(ray_session, cluster_runs, name):
    sets, _ = PLACEMENT[name]
    on_cluster = pd.DataFrame(cluster_runs["runs"][name]["metrics"])
    one_node = shared_run(*sets, capture_ledger=True)[1].metrics.drop(columns=["wall_s", "wall_s_cum"])
    assert on_cluster["test_acc"].notna().all() and len(on_cluster) == 2
    pd.testing.assert_frame_equal(on_cluster, one_node, check_dtype=False, check_exact=True)


def test_placement_errors_are_one_line(ray_session):
    with pytest.raises(ConfigError, match=r"runtime.server.resources.node_a: 1.0 .*at most 0 of custom resource node_a"):
        run(small_config("runtime.server.resources={node_a: 1}"), progress=False, write=False)
    with pytest.raises(ConfigError, match=r"runtime.placement: 'STRICT_SPREAD' .*3 hosts but 1 nodes"):
        run(small_config("runtime.placement=STRICT_SPREAD", "runtime.workers=2"), progress=False, write=False)
    with pytest.raises(ConfigError, match=r"runtime.worker.resources: .*not CPU, GPU or memory"):
        small_config("runtime.worker.resources={GPU: 1}")


def test_pack_placement_group_on_one_node(ray_session):
    result = run(small_config("runtime.placement=PACK", "training.rounds=1"), progress=False, write=False)
    assert result.metrics["test_acc"].notna().all()
    from ray.util.placement_group import placement_group_table
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values()), "placement group released"


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster-aws.example.yaml"])
def test_cluster_yaml_passes_rays_own_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / path).read_text())
    validate_config(prepare_config(raw))
    setup = " ".join(raw["setup_commands"])
    assert "dataset-fashion-mnist" in setup and '-e "$HOME/raysplit[cluster]"' in setup   # Ray pinned by the extra
    assert {"**/.venv", "**/results"} <= set(raw["rsync_exclude"])
    broken = dict(raw, setup_comands=raw["setup_commands"])   # the validation can fail
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(broken))
