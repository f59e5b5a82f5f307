"""The vertical and multi-task topologies on the one engine: equivalence with the unsplit network trained in
one process on the same batches (invariant 3, docs/architecture.md), the ledger privacy check (invariant 1), what data each
party is given, and the one-line errors of invalid topologies."""
import copy
import re

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from conftest import shared_run, small_config
from raysplit import cli
from raysplit.accounting import KINDS, role_of, row_fingerprints
from raysplit.data import load_dataset
from raysplit.errors import ConfigError
from raysplit.experiment import prepare
from raysplit.hosts import start_hosts, stop_hosts
from raysplit.topology import ComposedNet
from conftest import max_param_diff
from test_equivalence import TOL, centralized_replay, train_split

HALVES = "vertical.holders=[{rows: [0, 4]}, {rows: [4, 8]}]"
TABULAR = ["data.synthetic_shape=[12]", "model.name=mlp", "model.cut_layers=[relu1]",
           "vertical.holders=[{name: lab, columns: [0, 4]}, {name: clinic, columns: [4, 9]}, {columns: [9, 12]}]"]


VERTICAL = ("topology=vertical", "data.num_clients=1", "training.rounds=1", "runtime.server.num_cpus=0.5")


def vertical(*sets):
    return small_config(*VERTICAL, *sets)


def vertical_run(*sets):
    """(plan, result) of a vertical run with every ledger entry kept, one per config for the session: the
    equivalence and the ledger tests below read the same runs."""
    return shared_run(*VERTICAL, *sets, capture_ledger=True)


def ids_file(tmp_path, name, ids):
    path = tmp_path / name
    path.write_text("# sample ids\n" + "\n".join(str(i) for i in ids) + "\n")
    return str(path)


# --------------------------------------------------------------------------- equivalence

VERTICAL_CASES = {
    # image regions, concatenated along channels; labels at the server (the active party)
    "image-concat": [HALVES, "model.cut_layers=[pool1]"],
    # summed after the first dense layer; labels at the first holder, sent to the server
    "image-sum-holder-labels": [HALVES, "model.cut_layers=[relu3]", "vertical.combine=sum", "vertical.label_holder=holder0"],
    # three holders of column groups, averaged; labels at a holder other than the first listed; Adam
    "tabular-mean-adam": [*TABULAR, "vertical.combine=mean", "vertical.label_holder=clinic", "training.optimizer=adam",
                          "training.lr=0.01"],
}


@pytest.mark.parametrize("case", list(VERTICAL_CASES))
def test_vertical_equals_unsplit_network(ray_session, case):
    plan, result = vertical_run(*VERTICAL_CASES[case])
    assert [s.owner for s in plan.topology.segments][-1] == "server"
    assert len(plan.topology.input_views) >= 2
    initial = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    split, reference = result.model, centralized_replay(plan)
    assert max_param_diff(reference, initial) > 1e-3, "training must move the parameters"
    assert max_param_diff(split, reference) <= TOL


def test_vertical_trains_on_the_samples_the_holders_share(ray_session, tmp_path):
    ids = np.random.default_rng(0).permutation(96)[:40]       # 96 training samples; the holders share 40
    a, b = ids_file(tmp_path, "a.txt", ids), ids_file(tmp_path, "b.txt", ids[::-1])   # order does not matter
    plan = prepare(vertical(*TABULAR[:3], "vertical.label_holder=holder1",
                            f"vertical.holders=[{{columns: [0, 6], sample_ids: {a}}}, {{columns: [6, 12], sample_ids: {b}}}]"))
    assert np.array_equal(plan.client_indices[0], np.sort(ids))
    assert max_param_diff(train_split(plan), centralized_replay(plan)) <= TOL


def test_vertical_holders_with_different_sample_ids_are_refused(tmp_path):
    a, b = ids_file(tmp_path, "a.txt", range(40)), ids_file(tmp_path, "b.txt", range(1, 41))
    with pytest.raises(ConfigError, match=r"vertical.holders\[1\].sample_ids: .* the same sample ids as the first "
                                          r"holder \(40 ids; this holder has 40: 1 of the first holder's missing, 1 others\)"):
        prepare(vertical(*TABULAR[:3], f"vertical.holders=[{{columns: [0, 6], sample_ids: {a}}}, {{columns: [6, 12], sample_ids: {b}}}]"))


def multi_task_run(group_owner: str, *sets):
    """(plan, result) of a multi-task run with every ledger entry kept, one per config for the session."""
    return shared_run("topology=multi_task", "multi_task.groups=[0, 1, 1, 0]", f"multi_task.group_owner={group_owner}",
                      "training.rounds=1", "runtime.server.num_cpus=0.5", "runtime.worker.num_cpus=0.5", *sets,
                      capture_ledger=True)


# the group head at the server, two clients handing on peer to peer; at a party of its own (the tagger), three
# clients handing on through the server: the run whose ledger test_multi_task_ledger_labels_go_to_each_head_only reads
MULTI_TASK_CASES = {"server": ["data.num_clients=2"], "tagger": ["handoff=server"]}


@pytest.mark.parametrize("group_owner", sorted(MULTI_TASK_CASES))
def test_multi_task_equals_unsplit_network(ray_session, group_owner):
    plan, result = multi_task_run(group_owner, *MULTI_TASK_CASES[group_owner])
    assert plan.topology.tasks == ["y", "group"]
    y = torch.arange(4)
    assert plan.topology.labels("group", y).tolist() == [0, 1, 1, 0]
    initial = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    split, reference = result.model, centralized_replay(plan)
    for head in ("head", "group_head", "bottom"):
        moved = max(float((a - b).abs().max()) for a, b in zip(reference.segs[head].state_dict().values(),
                                                                initial.segs[head].state_dict().values()))
        assert moved > 1e-3, f"{head} must train"
    assert max_param_diff(split, reference) <= TOL


# --------------------------------------------------------------------------- privacy: the ledger and the hosts

def _raw_rows(cfg, plan) -> set:
    """Fingerprints of every raw input row, whole and as each holder's block of features."""
    ds = load_dataset(cfg.data, cfg.seed)
    x = torch.from_numpy(np.concatenate([ds.train_x, ds.test_x]))
    rows = row_fingerprints(x)
    for view in plan.topology.input_views.values():
        rows |= row_fingerprints(view(x))
    return rows


@pytest.mark.parametrize("case,label_holder", [("image-concat", "server"), ("image-sum-holder-labels", "holder0")],
                         ids=["server", "holder0"])
def test_vertical_ledger_no_raw_rows_labels_only_where_declared(ray_session, case, label_holder):
    # the runs of the equivalence cases with these label holders (one run each for the session)
    plan, result = vertical_run(*VERTICAL_CASES[case])
    cfg = plan.cfg
    assert cfg.vertical.label_holder == label_holder
    raw = _raw_rows(cfg, plan)
    kinds = {e.kind for e in result.entries}
    assert {"activation", "gradient", "sample_ids"} <= kinds <= set(KINDS)
    for e in result.entries:
        assert not (e.fingerprints & raw), f"raw input rows in a {e.kind} message {e.src}->{e.dst}"
        assert "client" not in (role_of(e.src), role_of(e.dst)), "vertical has no virtual clients"
    links = {(e.src, e.dst, e.kind) for e in result.entries}
    assert ("holder0", "server", "activation") in links and ("holder1", "server", "activation") in links
    assert ("server", "holder1", "gradient") in links
    labels = {(e.src, e.dst) for e in result.entries if e.kind == "labels"}
    ids_to = {e.dst for e in result.entries if e.kind == "sample_ids"}
    if label_holder == "server":
        assert labels == set() and ids_to == {"holder1", "server"}
    else:
        assert labels == {("holder0", "server")} and ids_to == {"holder1"}
    assert set(result.metrics.columns) >= {"holder0_flops", "holder1_flops", "server_flops", "test_acc"}
    assert result.metrics["holder1_flops"].iloc[0] > 0


def test_vertical_holders_are_given_only_their_features_and_no_labels(ray_session):
    cfg = vertical(HALVES, "vertical.label_holder=holder1")
    plan = prepare(cfg)
    hosts = start_hosts(cfg, plan.topology, plan.modules, plan.dataset.train_x, plan.dataset.train_y,
                        plan.client_indices, holder_ids=plan.holder_ids)
    try:
        held = {role: ray.get(h.__ray_call__.remote(
                    lambda self: {k: None if v is None else v.shape for k, v in self.data.items()}))
                for role, h in hosts.roles.items()}
    finally:
        stop_hosts(hosts)
    n = len(plan.dataset.train_y)
    assert held == {"holder0": {"x": (n, 1, 4, 8), "y": None}, "holder1": {"x": (n, 1, 4, 8), "y": (n,)},
                    "server": {"x": None, "y": None}}


def test_multi_task_ledger_labels_go_to_each_head_only(ray_session):
    # three clients, hand-offs through the server: the run test_multi_task_equals_unsplit_network[tagger] checks
    plan, result = multi_task_run("tagger", *MULTI_TASK_CASES["tagger"])
    cfg = plan.cfg
    raw = _raw_rows(cfg, plan)
    assert not any(e.fingerprints & raw for e in result.entries)
    labels = {(role_of(e.src), e.dst) for e in result.entries if e.kind == "labels"}
    assert labels == {("client", "server"), ("client", "tagger")}
    # each head got its own task's labels: the tagger's are the coarse groups (values 0..1 only)
    assert {"test_acc", "test_acc_group", "train_acc_group", "tagger_flops"} <= set(result.metrics.columns)
    assert 0 <= result.metrics["test_acc_group"].iloc[-1] <= 1
    assert not any(e.kind == "sample_ids" for e in result.entries)


# --------------------------------------------------------------------------- invalid topologies

def test_chain_parties_are_configurable_and_checked():
    from raysplit.topology import chain_parties
    assert chain_parties(small_config("topology=multi_hop", "model.cut_layers=[pool1,pool2,relu3]")) == \
        ["client", "hop1", "hop2", "server"]
    cfg = small_config("topology=extended", "model.cut_layers=[pool1,pool2]", "parties=[client, hospital, cloud]")
    assert [s.owner for s in prepare(cfg).topology.segments] == ["client", "hospital", "cloud"]
    for parties in ("[client, hop1, hop2, hop1, server]", "[client, hop1, client, server]"):
        with pytest.raises(ConfigError, match="the chain loops"):
            chain_parties(small_config("topology=multi_hop", f"parties={parties}"))
    with pytest.raises(ConfigError, match="client, the party holding the middle, client again"):
        chain_parties(small_config("topology=u_shaped", "parties=[client, server, server]"))
    with pytest.raises(ConfigError, match="parties: .* null for topology vertical"):
        small_config("topology=vertical", "data.num_clients=1", HALVES, "parties=[holder0, server]")


# --------------------------------------------------------------------------- from the command line
# (cli.main in this process, on the session's Ray: the command as a process of its own is tested in test_cli.py)

from test_cli import ROOT  # noqa: E402

SYNTH = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=64", "--set", "data.synthetic_shape=[1,8,8]",
         "--set", "data.train_samples=null", "--set", "runtime.address=null"]
VERT = ["--set", "vertical.holders=[{rows: [0, 4]}, {rows: [4, 8]}]", "--set", "model.cut_layers=[pool1]"]

BAD = [  # (config, extra --set values, expected one-line error)
    ("u_shaped_fmnist", ["model.cut_layers=[pool1]"],
     r"model.cut_layers: \['pool1'\] .*exactly 2 cut layers for topology u_shaped, one per boundary between "
     r"client -> server -> client \(a cut is missing: client would hold no segment\)"),
    ("extended_fmnist", ["model.cut_layers=[pool1]", "parties=[client, hospital, cloud]"],
     r"model.cut_layers: .*a cut is missing: cloud would hold no segment"),
    ("vertical_fmnist", ["vertical.holders=[{rows: [0, 4]}, {name: lab}]"],
     r"vertical.holders\[1\]: \{'name': 'lab'\} .*rows and/or columns: .*\(a party with no segment\)"),
    ("vertical_fmnist", ["vertical.holders=[{rows: [0, 4]}, {rows: [4, 4]}]"],
     r"vertical.holders\[1\].rows: \[4, 4\] .*0 <= start < stop"),
    ("multi_hop_fmnist", ["model.cut_layers=[pool1, pool1, relu3]"],
     r"model.cut_layers: \['pool1', 'pool1', 'relu3'\] .*each at a different layer"),
    ("multi_hop_fmnist", ["model.cut_layers=[pool2, pool1, relu3]"], r"model.cut_layers: .*increasing order of depth"),
    ("multi_hop_fmnist", ["parties=[client, hop1, hop2, hop1, server]", "model.cut_layers=[conv1, pool1, pool2, relu3]"],
     r"parties: \['client', 'hop1', 'hop2', 'hop1', 'server'\] .*\(hop1 appears twice: the chain loops\)"),
    ("multi_hop_fmnist", ["parties=null", "model.cut_layers=[pool1]"],
     r"model.cut_layers: \['pool1'\] .*at least 2 cut layers for topology multi_hop"),
    ("vertical_fmnist", ["data.num_clients=3"], r"data.num_clients: 3 .*1 for topology vertical"),
    ("vertical_fmnist", ["vertical.label_holder=bank"], r"vertical.label_holder: 'bank' .*server or a holder's name: holder0, holder1"),
    ("vertical_fmnist", ["vertical.holders=[{rows: [0, 4]}, {rows: [4, 9]}]"], r"vertical.holders\[1\].rows: \[4, 9\] .*stop <= 8"),
    ("multi_task_fmnist", ["multi_task.groups=[0, 1]"], r"multi_task.groups: \[0, 1\] .*for each of the 4 classes"),
]


@pytest.mark.parametrize("name,sets,pattern", BAD, ids=[f"{b[0]}:{b[1][-1]}" for b in BAD])
def test_invalid_topologies_one_line_exit_2(tmp_path, raysplit_here, name, sets, pattern):
    out = tmp_path / "res"
    extra = [a for s in sets for a in ("--set", s)]
    base = VERT if name.startswith("vertical") and not any(s.startswith("vertical.holders") for s in sets) else []
    p = raysplit_here("run", f"experiments/{name}.yaml", *SYNTH, *base, *extra, "--out", str(out), "--quiet")
    err = [line for line in p.stderr.splitlines() if line.startswith("raysplit: error")]
    assert p.returncode == 2, p.stderr
    assert len(err) == 1 and re.search(pattern, err[0]), p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


def test_vertical_holders_with_different_sample_ids_one_line_exit_2(tmp_path, raysplit_here):
    a, b = ids_file(tmp_path, "a.txt", range(30)), ids_file(tmp_path, "b.txt", range(31))
    holders = f"vertical.holders=[{{rows: [0, 4], sample_ids: {a}}}, {{rows: [4, 8], sample_ids: {b}}}]"
    p = raysplit_here("run", "experiments/vertical_fmnist.yaml", *SYNTH, "--set", holders, "--set", "model.cut_layers=[pool1]",
                      "--out", str(tmp_path / "res"), "--quiet")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"^raysplit: error: vertical.holders\[1\].sample_ids: '.*b.txt' .*the same sample ids as the first "
                     r"holder \(30 ids; this holder has 31: 0 of the first holder's missing, 1 others\)$", p.stderr.strip())


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_validate(path, capsys):
    assert cli.main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {path} (")


def test_vertical_breast_cancer_runs_from_the_cli(tmp_path, raysplit_here):
    out = tmp_path / "res"
    p = raysplit_here("run", "experiments/vertical_breast_cancer.yaml", "--set", "training.rounds=2",
                      "--set", "runtime.address=null", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["round"]) == [1, 2] and m["test_acc"].iloc[-1] > 0.6
    assert (m[["clinic_a_flops", "clinic_b_flops", "server_flops"]] > 0).all().all()
    led = pd.read_csv(out / "ledger.csv")
    assert set(led["kind"]) == {"activation", "gradient", "labels", "sample_ids"}
    assert set(led.loc[led["kind"] == "labels", "src"]) == {"clinic_a"}
