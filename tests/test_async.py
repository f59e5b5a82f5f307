"""Asynchronous split learning (``schedule: async``: async_timeline.py plans, algorithms/async_split.py runs) against
the same events carried out by hand in one process, and its timeline against hand computations of simulated time."""
import copy
import signal

import numpy as np
import pytest
import torch
from conftest import max_param_diff, small_config
from test_equivalence import TOL
from test_population import LATENCY_ONLY
from test_recovery import PLUGINS, ctrl_c, same_results  # noqa: F401 (ctrl_c: a fixture)
from test_splitfed import local_batches, loss_on

from raysplit.algorithms import AsyncSplit
from raysplit.async_timeline import AsyncTimeline
from raysplit.config import ExperimentConfig
from raysplit.engine import make_optimizer
from raysplit.errors import ConfigError
from raysplit.experiment import prepare, run
from raysplit.population import availability
from raysplit.schedule import clients_per_round
from raysplit.topology import CLIENT, ComposedNet

FREE_HUB = ["network.others.latency_ms=0", "network.others.up_mbps=1e12", "network.others.down_mbps=1e12"]


def planned(plan) -> list[list]:
    """Every round's events, as the run plans them (the driver's own timeline, without hosts)."""
    timeline = AsyncSplit(plan, progress=False)._timeline()
    return [timeline.next_round(r, clients_per_round(plan.cfg))[0] for r in range(plan.cfg.training.rounds)]


def async_by_hand(plan) -> ComposedNet:
    """The planned events in one process: each starting client copies the global client-side segments (a fresh
    optimizer), one server-side model with one optimizer takes the steps in their order, a finished client's weights
    are mixed in with torch.lerp (or not, when stale)."""
    cfg, topo = plan.cfg, plan.topology
    glob = ComposedNet(topo, copy.deepcopy(plan.modules))
    client_names = [s.name for s in topo.segments if s.owner == CLIENT]
    server_opt = make_optimizer([p for n, m in glob.segs.items() if n not in client_names for p in m.parameters()],
                                cfg.training)
    nets, opts, steps = {}, {}, {}
    for r, events in enumerate(planned(plan)):
        for e in events:
            k = e.client
            if e.kind == "start":
                segs = {n: (copy.deepcopy(m) if n in client_names else m) for n, m in glob.segs.items()}
                nets[k] = ComposedNet(topo, segs)
                opts[k] = make_optimizer([p for n in client_names for p in segs[n].parameters()], cfg.training)
                steps[k] = local_batches(plan, k, r)
            elif e.kind == "step":
                loss = loss_on(nets[k], plan, steps[k][e.step])
                opts[k].zero_grad()
                server_opt.zero_grad()
                loss.backward()
                opts[k].step()
                server_opt.step()
            elif e.kind == "finish" and e.mix is not None:
                for n in client_names:
                    w = nets[k].segs[n].state_dict()
                    glob.segs[n].load_state_dict({key: torch.lerp(g, w[key], e.mix) if g.is_floating_point() else w[key]
                                                  for key, g in glob.segs[n].state_dict().items()})
    return glob


def test_async_rounds_equal_their_events_carried_out_by_hand(ray_session):
    """Three clients at work at once among six of unequal sizes on two workers, Adam (the server's optimizer state
    goes on, each client's starts afresh), staleness-weighted mixing with a bound, clients that go offline in the
    middle, and clients still at work when a round ends (they go on in the next)."""
    plan = prepare(small_config("schedule=async", "data.num_clients=6", "data.partition=dirichlet", "data.alpha=0.5",
                                "training.clients_per_round=3", "training.rounds=3", "runtime.workers=2",
                                "training.optimizer=adam", "training.lr=0.01", "asynchrony.max_staleness=1",
                                "population.availability=share", "population.online_share=0.8",
                                "population.slot_s=3", *LATENCY_ONLY))
    events = [e for round_ in planned(plan) for e in round_]
    kinds = {kind: [e for e in events if e.kind == kind] for kind in ("start", "step", "finish", "drop")}
    assert kinds["drop"], "a client goes offline in the middle"
    assert any(e.mix is None for e in kinds["finish"]) and any(e.mix for e in kinds["finish"]), "stale and fresh"
    assert len(kinds["start"]) > len(kinds["finish"]) + len(kinds["drop"]), "clients at work across rounds"
    result = run(plan.cfg, progress=False, write=False, plan=plan)
    reference = async_by_hand(plan)
    assert max_param_diff(reference, ComposedNet(plan.topology, copy.deepcopy(plan.modules))) > 1e-3
    assert max_param_diff(result.model, reference) <= TOL
    m = result.metrics
    assert m["clients_done"].sum() + m["clients_stale"].sum() == 9 and m["clients_stale"].sum() >= 1
    assert m["clients_dropped"].sum() + m["clients_offline"].sum() == len(kinds["drop"])
    # the ledger: a download per start, an upload per finish (stale ones cross too), an activation per step
    ledger = result.ledger
    weights = ledger[ledger.kind == "weights"]
    assert weights[weights.src == "fed_server"]["messages"].sum() == len(kinds["start"])
    assert weights[weights.dst == "fed_server"]["messages"].sum() == len(kinds["finish"])
    assert ledger[ledger.kind == "activation"]["messages"].sum() == len(kinds["step"])


def test_one_client_at_a_time_with_mix_one_is_centralized_training_in_the_order_it_drew(ray_session):
    """The s = 0 oracle: one client at work, its weights replacing the global ones, is sequential SplitNN (hand-offs
    through the fed server), so centralized training on its batches in the drawn order (plain SGD: a fresh client
    optimizer has nothing to forget). Each round is one client's download (0.5 s), two 1.5 s steps and upload."""
    plan = prepare(small_config("schedule=async", "training.clients_per_round=1", "training.rounds=4",
                                "asynchrony.mix=1", "training.momentum=0", *LATENCY_ONLY, *FREE_HUB))
    net = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    opt = make_optimizer(net.parameters(), plan.cfg.training)
    order, steps = [], {}
    for r, events in enumerate(planned(plan)):
        for e in events:
            if e.kind == "start":           # (the last round's last start has no steps in the run)
                steps[e.client] = local_batches(plan, e.client, r)
            elif e.kind == "step":
                order.append(e.client)
                loss = loss_on(net, plan, steps[e.client][e.step])
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert len(order) == 8 and len(set(order)) > 1
    result = run(plan.cfg, progress=False, write=False, plan=plan)
    assert max_param_diff(result.model, net) <= TOL
    assert np.allclose(result.metrics["sim_time_s"], 4.0, atol=1e-6)
    assert np.allclose(result.metrics["sim_span_s"], 4.0, atol=1e-6)


def test_with_one_client_it_is_sequential_splitnn_bitwise(ray_session):
    """One client, its weights replacing the global ones (mix 1, staleness 0): each round it takes the weights it left,
    trains on the round's batches and sends them back, as SplitNN's one client keeps them (plain SGD: SplitNN hands
    its optimizer state on, an asynchronous client starts afresh; with no momentum there is none)."""
    sets = ("data.num_clients=1", "training.rounds=3", "training.momentum=0")
    sync = run(small_config(*sets), write=False, progress=False)
    asyn = run(small_config(*sets, "schedule=async", "asynchrony.mix=1"), write=False, progress=False)
    a, b = sync.model.state_dict(), asyn.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cols = ["test_acc", "test_loss", "train_loss", "train_acc", "client_flops", "server_flops"]
    assert sync.metrics[cols].equals(asyn.metrics[cols])


def test_async_results_do_not_depend_on_the_number_of_worker_hosts_or_on_a_resume(ray_session, tmp_path, ctrl_c):  # noqa: F811
    sets = ("schedule=async", "data.num_clients=5", "training.clients_per_round=2", "training.rounds=3", *LATENCY_ONLY)
    one = run(small_config(*sets), write=False, progress=False)
    two = run(small_config(*sets, "runtime.workers=2"), write=False, progress=False)
    same_results(one, two)
    # interrupted while evaluating round 2, resumed from round 1's checkpoint: the clients at work then go on
    stop = f"plugins=[{{name: '{PLUGINS}SignalDriverAt', at_round: 1, signum: {int(signal.SIGINT)}}}]"
    with pytest.raises(KeyboardInterrupt) as info:
        run(small_config(*sets, "runtime.workers=2", stop), out_dir=tmp_path / "cut", progress=False)
    resumed = run(small_config(*sets, "runtime.workers=2", stop.replace("at_round: 1", "at_round: 99")),
                  resume=info.value.partial, progress=False)
    same_results(one, resumed)


class FlatPrices:
    """Every step: 1 s of the client's own, then 1 s at the server; weights take 0.5 s each way."""

    def client_weights_bytes(self):
        return 1

    def step_parts_s(self, client, sizes):
        return np.ones(len(sizes)), np.ones(len(sizes))

    def download_s(self, client, src, nbytes):
        return 0.5

    upload_s = download_s


def timeline(*sets) -> AsyncTimeline:
    cfg: ExperimentConfig = small_config("schedule=async", "training.clients_per_round=2", *sets)
    return AsyncTimeline(cfg, FlatPrices(), availability(cfg), [32] * cfg.data.num_clients, "fed_server", 2)


def test_the_server_takes_steps_first_come_first_served_and_staleness_weighs_the_mix():
    """Two clients of two steps start at 0 s: both reach the server at 1.5 s, the first drawn is served 1.5-2.5 s, the
    other 2.5-3.5 s; the first's next step reaches it at 3.5 s (3.5-4.5 s), the other's at 4.5 s (4.5-5.5 s). The first
    uploads by 5 s (staleness 0: mix 0.5) and a client not at work starts then; the second's weights arrive at 6 s, one
    version late: 0.5 / sqrt(2)."""
    events, fates, span = timeline().next_round(0, 2)
    a, b = [e.client for e in events[:2]]
    steps = [(e.client, e.step, e.ticket, e.t) for e in events if e.kind == "step"]
    assert steps == [(a, 0, 0, 1.5), (b, 0, 1, 1.5), (a, 1, 2, 3.5), (b, 1, 3, 4.5)]
    finishes = [(e.client, e.t, e.staleness, e.mix) for e in events if e.kind == "finish"]
    assert finishes == [(a, 5.0, 0, 0.5), (b, 6.0, 1, pytest.approx(0.5 / np.sqrt(2)))]
    third = [e for e in events if e.kind == "start"][2]
    assert third.t == 5.0 and third.version == 1 and third.client != b
    assert span == 6.0 and [(f.client, f.start_s, f.end_s, f.status) for f in fates] == [(a, 0, 5, "done"), (b, 0, 6, "done")]
    # bounded staleness: the second update is one version late, more than 0 allows
    events, fates, _ = timeline("asynchrony.max_staleness=0").next_round(0, 2)
    assert [f.status for f in fates] == ["done", "stale"] and [e.mix for e in events if e.kind == "finish"] == [0.5, None]


def test_a_timeline_goes_on_from_its_state():
    """A round planned after a checkpoint's state is the round planned without one (the state is plain values)."""
    whole = timeline("data.num_clients=5")
    rounds = [whole.next_round(r, 2) for r in range(3)]
    cut = timeline("data.num_clients=5")
    cut.next_round(0, 2)
    resumed = timeline("data.num_clients=5")
    resumed.load(copy.deepcopy(cut.state()))
    assert [resumed.next_round(r, 2) for r in (1, 2)] == rounds[1:]


@pytest.mark.parametrize("sets, field", [
    (["population.deadline_s=10"], "population.deadline_s"),
    (["population.over_select=2"], "population.over_select"),
    (["training.averaging_point=server"], "training.averaging_point"),
])
def test_what_async_rounds_do_not_plan_for_is_refused_in_one_line(sets, field):
    with pytest.raises(ConfigError) as info:
        prepare(small_config("schedule=async", *sets))
    assert info.value.field == field
