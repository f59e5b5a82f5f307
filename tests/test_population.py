"""Populations (population.py, timeline.py): who is online when, who is chosen, who finishes — against hand
computations of simulated time on a network where only latency costs (so every message is a round number)."""
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_config
from test_recovery import PLUGINS, ctrl_c, same_results  # noqa: F401 (ctrl_c: a fixture)

from raysplit.errors import ConfigError
from raysplit.experiment import prepare, run
from raysplit.population import Diurnal, Share
from raysplit.schedule import participants

# messages cost only latency: a client's 500 ms plus the server's 0 (bandwidth and compute ~free); a vanilla step
# is 3 messages (activation, labels, gradient) = 1.5 s; a peer hand-off 2 messages (weights, optimizer state) of
# 0.5 + 0.5 s = 2 s
FREE = 1e12
LATENCY_ONLY = [f"network.client.up_mbps={FREE}", f"network.client.down_mbps={FREE}", "network.client.latency_ms=500",
                f"network.client.flops_per_s={FREE * 1e9}", f"network.server.flops_per_s={FREE * 1e9}",
                f"network.server.up_mbps={FREE}", f"network.server.down_mbps={FREE}"]
STEP_S, HANDOFF_S = 1.5, 2.0


def _trace(tmp_path, rows: str):
    path = tmp_path / "trace.csv"
    path.write_text("client,start_s,end_s\n" + rows)
    return str(path)


def _timed(tmp_path, *sets):
    # 3 clients of 32 samples, batches of 16: 2 steps a turn
    trace = _trace(tmp_path, "0,0,10\n1,0,6.6\n1,11,100\n2,0,100\n")
    return small_config("training.clients_per_round=3", "population.availability=trace",
                        f"population.trace_file={trace}", *LATENCY_ONLY, *sets)


def test_a_trace_gives_the_participants_and_dropouts_a_hand_computation_predicts(ray_session, tmp_path):
    result = run(_timed(tmp_path), out_dir=tmp_path / "out", progress=False)
    clients = pd.read_csv(result.out_dir / "clients.csv")
    # round 1 at 0 s, everyone online, order 0, 1, 2: client 0 turns 0-3 s; hand-off to 1 (2 s); client 1 is online
    # until 6.6 s: one 1.5 s step fits (5-6.5), the second would end at 8; the hand-off goes on from client 0 to 2
    # (2 s), whose turn runs 8.5-11.5. Round 2 begins at 11.5 s: client 0 is gone (until 10), 1 and 2 are online;
    # the hand-off from client 2 to client 1 (2 s), 1 turns 13.5-16.5, hand-off (2 s), 2 turns 18.5-21.5
    expected = [(1, 0, "done", 0.0, 3.0, 2), (1, 1, "dropped", 5.0, 6.5, 1), (1, 2, "done", 8.5, 11.5, 2),
                (2, 1, "done", 13.5, 16.5, 2), (2, 2, "done", 18.5, 21.5, 2)]
    got = [(r.round, r.client, r.status, r.start_s, r.end_s, r.steps) for r in clients.itertuples()]
    assert [g[:3] + (g[5],) for g in got] == [e[:3] + (e[5],) for e in expected]
    assert np.allclose([g[3:5] for g in got], [e[3:5] for e in expected], atol=1e-6)
    m = result.metrics
    assert m["participants"].tolist() == [3, 2] and m["clients_dropped"].tolist() == [1, 0]
    assert np.allclose(m["sim_time_s"], [11.5, 10.0], atol=1e-6)   # the run's own ledger, priced, agrees
    # the ledger holds exactly what was done: 5 steps in round 1 (3 messages each), the hand-offs 0->1, 0->2 (the
    # dropped client's work is discarded: its hand-off goes on from client 0), then 2->1 and 1->2 in round 2
    ledger = result.ledger
    steps = ledger[ledger.kind == "activation"].groupby("round")["messages"].sum()
    assert steps.tolist() == [5, 4]
    weights = ledger[ledger.kind == "weights"]
    assert [(r.round, r.src, r.dst) for r in weights.itertuples()] == [
        (1, "client/0", "client/1"), (1, "client/0", "client/2"), (2, "client/1", "client/2"), (2, "client/2", "client/1")]
    # the FLOPs too: client 1 ran one step of its two
    flops = result.flops.groupby(["round", "party"])["flops"].sum()
    assert flops[(1, "client/1")] * 2 == flops[(1, "client/0")] == flops[(2, "client/1")]


def test_timed_rounds_do_not_depend_on_the_number_of_worker_hosts_or_on_a_resume(ray_session, tmp_path, ctrl_c):  # noqa: F811
    one = run(_timed(tmp_path, "training.rounds=3"), write=False, progress=False)
    two = run(_timed(tmp_path, "training.rounds=3", "runtime.workers=2"), write=False, progress=False)
    same_results(one, two)
    # interrupted while evaluating round 2, resumed from round 1's checkpoint
    stop = f"plugins=[{{name: '{PLUGINS}SignalDriverAt', at_round: 1, signum: {int(signal.SIGINT)}}}]"
    with pytest.raises(KeyboardInterrupt) as info:
        run(_timed(tmp_path, "training.rounds=3", stop), out_dir=tmp_path / "cut", progress=False)
    resumed = run(_timed(tmp_path, "training.rounds=3", stop.replace("at_round: 1", "at_round: 99")),
                  resume=info.value.partial, progress=False)
    same_results(one, resumed)


def test_the_server_handoff_goes_on_from_the_server_when_a_client_drops(ray_session, tmp_path):
    result = run(_timed(tmp_path, "handoff=server", "training.rounds=1"), write=False, progress=False)
    weights = result.ledger[result.ledger.kind == "weights"]
    # 0 -> server -> 1; client 1 drops; the server (which relayed it) sends it on to 2
    assert [(r.src, r.dst) for r in weights.itertuples()] == [("client/0", "server"), ("server", "client/1"),
                                                                ("server", "client/2")]


def test_a_deadline_drops_the_clients_a_hand_computation_of_their_finishing_times_predicts(ray_session, tmp_path):
    base = ["algorithm=fedavg", "data.num_clients=4", "training.rounds=1", *LATENCY_ONLY]
    # each client's FLOPs in a round, from a run without a deadline (the meter's count)
    ref = run(small_config(*base), write=False, progress=False)
    flops = ref.flops[ref.flops.party.str.startswith("client/")].groupby("party")["flops"].sum()
    speeds = [1e15, 1e15, float(flops["client/2"]) / 4.0, float(flops["client/3"]) / 1.0]     # clients 2, 3: 4 s and 1 s of work
    finish = {k: 0.5 + flops[f"client/{k}"] / speeds[k] + 0.5 for k in range(4)}  # download, train, upload
    deadline = 3.0
    late = sorted(k for k, t in finish.items() if t > deadline)
    assert late == [2]
    result = run(small_config(*base, f"network.per_client.flops_per_s={speeds}", f"population.deadline_s={deadline}"),
                 write=False, progress=False)
    assert result.metrics["clients_late"].tolist() == [1] and result.metrics["clients_done"].tolist() == [3]
    # the late client's upload crossed (counted), the round did not wait for it: it ends at the deadline
    uploads = result.ledger[(result.ledger.kind == "weights") & result.ledger.src.str.startswith("client/")]
    assert sorted(uploads.src) == [f"client/{k}" for k in range(4)]
    assert result.metrics["sim_time_s"].iloc[0] == pytest.approx(deadline)
    # the late client's weights are left out of the average exactly: the model is the one of a round without it
    assert_same_model(result, _without_client_2(tmp_path, *base))


def _without_client_2(tmp_path, *sets):
    """The same run with clients 0, 1 and 3 only taking part (a trace where client 2 is never online)."""
    trace = _trace(tmp_path, "0,0,1e9\n1,0,1e9\n3,0,1e9\n")
    return run(small_config(*sets, "training.clients_per_round=3", "population.availability=trace",
                            f"population.trace_file={trace}"), write=False, progress=False)


def assert_same_model(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_splitfed_v1_leaves_a_late_and_a_gone_client_out_exactly(ray_session, tmp_path):
    # 4 clients of 24 samples: 2 steps of 1.5 s, between a download and an upload of 0.5 s: 4 s. Client 2 sits
    # behind 5 s of latency (36 s) and misses the 8 s deadline; the round is the one without it, bitwise (v1's
    # clients never meet: each trains against its own copy of the server's segments)
    base = ["algorithm=splitfed", "splitfed=v1", "data.num_clients=4", "training.rounds=2", *LATENCY_ONLY]
    late = run(small_config(*base, "network.per_client.latency_ms=[500, 500, 5000, 500]", "population.deadline_s=8"),
               write=False, progress=False)
    assert late.metrics["clients_late"].tolist() == [1, 1]
    assert_same_model(late, _without_client_2(tmp_path, *base))
    # client 2 online only 2.5 s of every 1000: it runs its first step (0.5 s download, then 1.5 s) and is gone
    trace = _trace(tmp_path, "0,0,1e9\n1,0,1e9\n2,0,2.5\n2,1000,1002.5\n3,0,1e9\n")
    gone = run(small_config(*base, "training.rounds=1", "training.clients_per_round=4", "population.availability=trace",
                            f"population.trace_file={trace}"), write=False, progress=False)
    assert gone.metrics["clients_dropped"].tolist() == [1]
    steps = gone.ledger[gone.ledger.kind == "activation"].groupby("src")["messages"].sum()
    assert steps.to_dict() == {"client/0": 2, "client/1": 2, "client/2": 1, "client/3": 2}
    assert "client/2" not in set(gone.ledger[gone.ledger.kind == "weights"].src)
    assert_same_model(gone, _without_client_2(tmp_path, *base, "training.rounds=1"))


def test_availability_models_are_seeded_and_answer_when_clients_leave():
    share = Share(1000, 0.3, 60.0, seed=1)
    assert abs(len(share.online(0.0)) - 300) < 60 and np.array_equal(share.online(10.0), Share(1000, 0.3, 60.0, 1).online(59.0))
    k = int(share.online(0.0)[0])
    assert share.offline_at(k, 0.0) % 60.0 == 0 and share.offline_at(k, 0.0) >= 60.0
    day = Diurnal(500, 100.0, 25.0, seed=2)
    on = day.online(0.0)
    assert abs(len(on) - 125) < 40
    k = int(on[0])
    left = day.offline_at(k, 0.0)
    assert 0 < left <= 25.0 and k in day.online(left - 1e-6) and k not in day.online(left + 1e-6)


def test_sampled_sequential_turns_take_clients_per_round(ray_session):
    cfg = small_config("data.num_clients=6", "training.clients_per_round=2", "training.rounds=2")
    result = run(cfg, write=False, progress=False)
    turns = result.ledger[result.ledger.kind == "activation"].groupby("round")["src"].nunique()
    assert turns.tolist() == [2, 2]
    assert participants(cfg, 0) != participants(cfg, 1) or participants(cfg, 0) == [0, 1]


@pytest.mark.parametrize("rows, field, says", [
    ("0,5,10\n0,8,12\n", "population.trace_file", "overlap"),
    ("0,-1,10\n", "population.trace_file line 2", "0 <= start_s < end_s"),
    ("7,0,10\n", "population.trace_file line 2", "client id in 0..2"),
    ("0,0,10\n1,0,10\n", "training.clients_per_round", "at most the clients online at once"),
])
def test_bad_traces_are_one_line(tmp_path, rows, field, says):
    trace = _trace(tmp_path, rows)
    with pytest.raises(ConfigError, match=rf"^{field}: .*{says}"):
        prepare(small_config("training.clients_per_round=3", "population.availability=trace",
                             f"population.trace_file={trace}"))


def test_a_deadline_is_positive_and_over_selection_only_for_parallel_rounds():
    with pytest.raises(ConfigError, match=r"^population.deadline_s: 0"):
        small_config("algorithm=fedavg", "population.deadline_s=0")
    with pytest.raises(ConfigError, match=r"^population.over_select: 2.0 .*expected 1 for splitnn .*planned for by splitfed, fedavg"):
        prepare(small_config("population.over_select=2"))


def test_a_round_with_nobody_online_waits_for_the_first_client_and_the_wait_is_simulated_time(ray_session, tmp_path):
    trace = _trace(tmp_path, "0,5,100\n1,5,100\n2,5,100\n")
    result = run(small_config("training.clients_per_round=3", "training.rounds=1", "population.availability=trace",
                              f"population.trace_file={trace}", *LATENCY_ONLY), out_dir=tmp_path / "out", progress=False)
    clients = pd.read_csv(result.out_dir / "clients.csv")
    assert clients["start_s"].iloc[0] == pytest.approx(5.0)
    # 5 s waiting, three turns of 2 steps (1.5 s each) and two hand-offs (2 s each)
    assert result.metrics["sim_wait_s"].iloc[0] == pytest.approx(5.0)
    assert result.metrics["sim_time_s"].iloc[0] == pytest.approx(5.0 + 3 * 2 * STEP_S + 2 * HANDOFF_S)


def test_large_batch_sgd_takes_a_client_in_the_steps_it_finishes_before_it_goes(ray_session, tmp_path):
    # each lock-step step: weights down (0.5 s), the gradient up (0.5 s): 1 s; client 2 is online until 1.5 s, so it
    # takes part in step 1 of 2 only (and a round later, at 2 s, it is not online: the round has clients 0 and 1)
    trace = _trace(tmp_path, "0,0,1e9\n1,0,1e9\n2,0,1.5\n")
    result = run(small_config("algorithm=large_batch_sgd", "training.clients_per_round=3", "training.rounds=2",
                              "population.availability=trace", f"population.trace_file={trace}", *LATENCY_ONLY),
                 out_dir=tmp_path / "out", progress=False)
    clients = pd.read_csv(result.out_dir / "clients.csv")
    assert [(r.round, r.client, r.status, r.steps) for r in clients.itertuples()] == [
        (1, 0, "done", 2), (1, 1, "done", 2), (1, 2, "dropped", 1), (2, 0, "done", 2), (2, 1, "done", 2)]
    grads = result.ledger[result.ledger.kind == "gradient_update"].groupby(["round", "src"])["messages"].sum()
    assert grads.to_dict() == {(1, "client/0"): 2, (1, "client/1"): 2, (1, "client/2"): 1, (2, "client/0"): 2,
                               (2, "client/1"): 2}


def test_a_sequential_round_ends_at_its_deadline(ray_session, tmp_path):
    # as in the trace test: client 2's turn would begin at 8.5 s; at a 9 s deadline its first step (1.5 s) does not fit
    result = run(_timed(tmp_path, "training.rounds=1", "population.deadline_s=9"), out_dir=tmp_path / "out",
                 progress=False)
    clients = pd.read_csv(result.out_dir / "clients.csv")
    assert [(r.client, r.status, r.steps) for r in clients.itertuples()] == [(0, "done", 2), (1, "dropped", 1),
                                                                              (2, "late", 0)]
    assert result.metrics["sim_time_s"].iloc[0] == pytest.approx(3.0 + HANDOFF_S + STEP_S + HANDOFF_S)


def test_a_timed_round_in_which_nobody_leaves_trains_as_the_untimed_one(ray_session):
    # a deadline nobody reaches puts the run on the clock (prices, fates, the last hand-off kept for the next
    # round's first client) without changing what it computes
    base = ["data.num_clients=6", "training.clients_per_round=3", "training.rounds=3", "training.client_order=shuffled"]
    plain = run(small_config(*base), write=False, progress=False)
    timed = run(small_config(*base, "population.deadline_s=1e9"), write=False, progress=False)
    assert plain.metrics["test_acc"].tolist() == timed.metrics["test_acc"].tolist()
    assert plain.ledger["bytes"].sum() == timed.ledger["bytes"].sum()
    assert_same_model(plain, timed)
