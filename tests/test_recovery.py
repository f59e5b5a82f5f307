"""Runs that survive failure (issue: runs that survive failure): results written as the run goes, the trained
model saved, a party host killed mid-round recovered with bitwise the same results, the driver killed and
resumed, SIGTERM stopping cleanly."""
import gc
import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import shared_run, small_config
from raysplit.errors import PartyLost
from raysplit.experiment import load_model, run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLUGINS = "recovery_plugins:"


def same_results(a, b) -> None:
    """Metrics (all columns but wall time), ledger and final parameters bitwise equal."""
    def metrics(m):
        return m.drop(columns=[c for c in m.columns if c.startswith("wall_s")])
    pd.testing.assert_frame_equal(metrics(a.metrics), metrics(b.metrics), check_exact=True)
    pd.testing.assert_frame_equal(a.ledger, b.ledger, check_exact=True)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# the fault campaign (issue 26): every algorithm and every role, its party host SIGKILLed from outside
LAYOUTS = {
    "splitnn": [],
    "splitfed-v1": ["algorithm=splitfed"],
    "splitfed-v2": ["algorithm=splitfed", "splitfed=v2"],
    "fedavg": ["algorithm=fedavg"],
    "large-batch": ["algorithm=large_batch_sgd"],
    # clients at work across rounds: the worker's state is in the checkpoint
    "async": ["schedule=async", "training.clients_per_round=2"],
    "vertical": ["topology=vertical", "data.num_clients=1", "vertical.holders=[{rows: [0, 4]}, {rows: [4, 8]}]"],
    "multi-hop": ["topology=multi_hop", "model.cut_layers=[pool1, relu2]"],
}
ROLES = {"splitnn": ["worker0", "server"], "splitfed-v1": ["worker0", "server", "fed_server"],
         "splitfed-v2": ["worker0", "server", "fed_server"], "fedavg": ["worker0", "server"],
         "large-batch": ["worker0", "server"], "async": ["worker0", "server", "fed_server"],
         "vertical": ["holder0", "holder1", "server"], "multi-hop": ["worker0", "hop1", "server"]}
CAMPAIGN = [f"{layout}/{role}" for layout, roles in ROLES.items() for role in roles]
# in the default suite: one of each algorithm, the server killed while it serves a worker's link among them
DEFAULT = {"splitnn/server", "splitfed-v1/server", "splitfed-v2/fed_server", "fedavg/worker0", "async/worker0",
           "vertical/holder1"}


@pytest.fixture
def host_pids(monkeypatch):
    """Keep recovery_plugins.PIDS up to date: the process id of every party host, read from each actor as it
    starts (and again when a lost party makes the run restart them)."""
    import ray

    import recovery_plugins
    from raysplit import hosts

    start = hosts.start_hosts

    def recording(*args, **kwargs):
        started = start(*args, **kwargs)
        pids = ray.get([h.__ray_call__.remote(lambda _: os.getpid()) for h in started.named.values()])
        recovery_plugins.PIDS.clear()
        recovery_plugins.PIDS.update(zip(started.named, pids))
        return started
    monkeypatch.setattr(hosts, "start_hosts", recording)


@pytest.mark.parametrize("case", [c if c in DEFAULT else pytest.param(c, marks=pytest.mark.campaign) for c in CAMPAIGN])
def test_a_party_host_killed_from_outside_is_recovered_bitwise(ray_session, tmp_path, case, caplog, host_pids):
    """SIGKILL of a party host's process at a seeded random moment of round 2 of 3 (from the end of round 1's
    evaluation to 1.5 rounds later): the run completes with metrics (but wall time), ledger and final parameters
    bitwise those of the run nobody killed."""
    layout, target = case.split("/")
    base = [*LAYOUTS[layout], "training.rounds=3"]
    # the uninterrupted run, once per config for the session: cases of one config share it (and
    # test_network.py reads FedAvg's results directory)
    reference = shared_run(*base)[1]
    round_s = float(reference.metrics["wall_s"].median())
    delay = random.Random(case).uniform(0, 1.5 * round_s)
    killer = (f"plugins=[{{name: '{PLUGINS}KillFromOutside', target: {target}, delay_s: {delay}, "
              f"marker: '{tmp_path / 'killed'}'}}]")
    with caplog.at_level(logging.WARNING, "raysplit"):
        recovered = run(small_config(*base, killer), progress=False, write=False)
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"party host {target} died")]
    assert len(lost) == 1, f"{target} must have died once, in the run ({delay:.3f}s after round 1's evaluation)"
    same_results(recovered, reference)
    # the failed round's calls that waited on the dead host are dropped refs holding its error: Ray would log
    # each as an "Unhandled error" stack when freed (here, or in whatever runs next); raysplit said it already
    del recovered
    gc.collect()
    assert not [r for r in caplog.records if "Unhandled error" in r.getMessage()]


def test_a_party_host_killed_at_a_chosen_message_is_recovered_bitwise(ray_session, tmp_path):
    """The fault at a moment chosen from inside: the server's process ends itself on its second message of
    round 2, in a step (the seeded moments above may fall between steps)."""
    base = ["training.rounds=3"]
    reference = shared_run(*base)[1]
    killer = f"plugins=[{{name: '{PLUGINS}KillHostAt', target: server, marker: '{tmp_path / 'killed'}'}}]"
    recovered = run(small_config(*base, killer), progress=False, write=False)
    assert (tmp_path / "killed").exists(), "the host must have been killed"
    same_results(recovered, reference)


def test_lost_parties_beyond_max_failures_stop_with_one_line(ray_session):
    killer = f"plugins=[{{name: '{PLUGINS}KillHostAt', target: worker0, at_round: 0, after: 1}}]"  # every time
    with pytest.raises(PartyLost, match=r"party host worker0 died in round 1; lost so far: worker0 \(2x\); more than "
                                        r"runtime.max_failures=1"):
        run(small_config(killer, "runtime.max_failures=1"), progress=False, write=False)


@pytest.fixture
def ctrl_c():
    """Ctrl-C raises KeyboardInterrupt in this process, whatever it inherited (a job started in the background
    by a non-interactive shell has SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_results_are_written_each_round_and_the_model_is_saved(ray_session, tmp_path, ctrl_c):
    # a run stopped in round 2 (while evaluating it): round 1's tables are there and readable
    out = tmp_path / "failing"
    bad = f"plugins=[{{name: '{PLUGINS}SignalDriverAt', at_round: 1, signum: {int(signal.SIGINT)}}}]"
    with pytest.raises(KeyboardInterrupt) as info:
        run(small_config(bad, "training.rounds=3"), out_dir=out, progress=False)
    partial = info.value.partial
    assert partial.name == ".failing.partial" and not out.exists()
    m = pd.read_csv(partial / "metrics.csv")
    assert m["round"].tolist() == [1] and m["test_acc"].notna().all()
    assert pd.read_csv(partial / "ledger.csv")["round"].unique().tolist() == [1]
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == ["round-1"]
    # a finished run: the trained network, loadable with torch, equals the one evaluated (the tiny config's run for
    # the session, written under its own directory: test_plots.py and test_defences.py read it too)
    result = shared_run()[1]
    net = load_model(result.out_dir)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), result.model.state_dict().values()))
    seg = torch.load(result.out_dir / "model" / "s0.pt", weights_only=True)
    assert torch.equal(seg["conv1.weight"], result.model.segs["s0"].conv1.weight)
    # re-running into the interrupted run's directory refuses and points at --resume
    from raysplit.errors import ConfigError
    with pytest.raises(ConfigError, match=r"raysplit run --resume .*\.failing\.partial"):
        run(small_config(), out_dir=out, progress=False)


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "raysplit.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (the run's driver and the Ray it started)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


SMALL = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=96", "--set", "data.num_clients=3",
         "--set", "data.synthetic_shape=[1,8,8]", "--set", "model.cut_layers=[pool1]", "--set", "training.rounds=3",
         "--set", "training.batch_size=16", "--set", "runtime.worker.num_cpus=0.5", "--set", "runtime.server.num_cpus=0.5",
         "--quiet"]


def test_driver_killed_then_resumed_equals_an_uninterrupted_run(ray_session, tmp_path, monkeypatch, raysplit_here):
    # the driver killed: a process of its own (with the Ray it started); the resume, `raysplit run --resume`, and
    # the uninterrupted run: in this process, on the session's Ray (what resuming reads is the partial directory)
    marker = tmp_path / "killed"
    plugin = ["--set", f"plugins=[{{name: '{PLUGINS}SignalDriverAt', at_round: 1, signum: 9, marker: '{marker}'}}]"]
    killed = _cli("run", "experiments/vanilla_fmnist.yaml", *SMALL, *plugin, "--out", str(tmp_path / "a"))
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL and marker.exists()
    for pid in _session_processes(killed.pid):          # the Ray the killed driver started
        os.kill(pid, signal.SIGKILL)
    partial = tmp_path / ".a.partial"
    assert (partial / "checkpoints" / "round-1").is_dir()
    resumed = raysplit_here("run", "--resume", str(partial), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    from raysplit.cli import main                 # the uninterrupted run
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(HERE))
    assert main(["run", "experiments/vanilla_fmnist.yaml", *SMALL, *plugin, "--out", str(tmp_path / "b")]) == 0
    a, b = pd.read_csv(tmp_path / "a" / "metrics.csv"), pd.read_csv(tmp_path / "b" / "metrics.csv")
    assert a["round"].tolist() == [1, 2, 3]
    walls = [c for c in a.columns if c.startswith("wall_s")]
    pd.testing.assert_frame_equal(a.drop(columns=walls), b.drop(columns=walls), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "ledger.csv"), pd.read_csv(tmp_path / "b" / "ledger.csv"))
    na, nb = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(na.state_dict().values(), nb.state_dict().values()))
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["rounds"] == 3


def test_sigterm_stops_cleanly_with_the_resume_command(tmp_path):
    plugin = ["--set", f"plugins=[{{name: '{PLUGINS}SignalDriverAt', at_round: 0, signum: {int(signal.SIGTERM)}}}]"]
    p = _cli("run", "experiments/vanilla_fmnist.yaml", *SMALL, *plugin, "--out", str(tmp_path / "a"))
    _, err = p.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("raysplit:")]
    assert p.returncode == 143, err
    assert lines == [f"raysplit: interrupted (SIGTERM); continue with: raysplit run --resume {tmp_path / '.a.partial'}"]
    assert "Traceback" not in err
    assert _session_processes(p.pid) == [], "no process of the run (driver or Ray) is left behind"


def test_an_unreachable_address_is_one_line_at_once(tmp_path):
    p = _cli("run", "experiments/vanilla_fmnist.yaml", *SMALL, "--address", "127.0.0.1:9", "--out", str(tmp_path / "a"))
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("raysplit:")]
    assert p.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("raysplit: error: runtime.address: '127.0.0.1:9' is not allowed; expected the address "
                               "of a running Ray cluster, reachable from here (no answer from 127.0.0.1:9")
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.partial").exists()
