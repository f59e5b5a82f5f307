"""The time model (raysplit/network.py) on hand-made ledger and FLOP tables, against closed forms; and one tiny
real run: metrics.csv's sim_* columns are what simulate() recomputes from its results directory."""
import copy

import pandas as pd
import pytest

from raysplit import config
from raysplit.errors import ConfigError
from raysplit.network import Network, network_for, round_times
from raysplit.results import simulate

MB = 1e6
# clients 8 Mbit/s up, 16 down, 10 ms; server 80 Mbit/s both ways, 0 ms; every party 1 GFLOP/s
NET = {"client": {"up_mbps": 8, "down_mbps": 16, "latency_ms": 10, "flops_per_s": 1e9},
       "server": {"up_mbps": 80, "down_mbps": 80, "latency_ms": 0, "flops_per_s": 1e9},
       "others": {"flops_per_s": 1e9}}


def cfg_with(*sets, network=NET):
    return config.from_dict({"network": copy.deepcopy(network), "data": {"dataset": "synthetic", "num_clients": 3}}, list(sets))


def tables(ledger_rows, flop_rows):
    ledger = pd.DataFrame(ledger_rows, columns=["round", "src", "dst", "kind", "messages", "bytes"])
    flops = pd.DataFrame(flop_rows, columns=["round", "party", "phase", "flops"])
    return ledger, flops


def times(cfg, ledger, flops, parallel):
    return round_times(ledger, flops, network_for(cfg), parallel).iloc[0]


def test_one_sequential_step():
    # client/0: 1 MB of activations up (+ labels), 1 MB of gradient down; 2e9 FLOPs client, 4e9 server
    ledger, flops = tables([(1, "client/0", "server", "activation", 1, 1 * MB), (1, "client/0", "server", "labels", 1, 0),
                            (1, "server", "client/0", "gradient", 1, 1 * MB)],
                           [(1, "client/0", "forward", 1e9), (1, "client/0", "backward", 1e9), (1, "server", "forward", 4e9)])
    t = times(cfg_with(), ledger, flops, parallel=False)
    up = 2 * 0.010 + 8 * MB / 8e6              # two messages' latency; 1 MB at the client's 8 Mbit/s uplink
    down = 0.010 + 8 * MB / 16e6               # the server's 80 Mbit/s is not the bottleneck: the client's 16 is
    assert t.sim_comm_s == pytest.approx(up + down)
    assert t.sim_compute_s == pytest.approx(2 + 4)
    assert t.sim_time_s == pytest.approx(up + down + 6)


def test_parallel_round_waits_for_the_slow_client():
    # three clients upload 1 MB each in 4 messages; client 2 computes at a tenth of the speed
    cfg = cfg_with("network.per_client.flops_per_s=[1000000000, 1000000000, 100000000]")
    rows = [(1, f"client/{k}", "server", "activation", 4, 1 * MB) for k in range(3)]
    ledger, flops = tables(rows, [(1, f"client/{k}", "forward", 1e9) for k in range(3)] + [(1, "server", "forward", 3e9)])
    t = times(cfg, ledger, flops, parallel=True)
    assert t.sim_compute_s == pytest.approx(1e9 / 1e8 + 3)   # the slowest client, then the server's work for all
    # each client's own 8 Mbit/s uplink (1 s) is slower than the server's 80 Mbit/s downlink shared (3 MB: 0.3 s)
    assert t.sim_comm_s == pytest.approx(4 * 0.010 + 1.0)
    sequential = times(cfg, ledger, flops, parallel=False)
    assert sequential.sim_compute_s == pytest.approx(1 + 1 + 10 + 3)
    assert sequential.sim_comm_s == pytest.approx(3 * (4 * 0.010 + 1.0))


def test_fedavg_round_shares_the_server_downlink():
    # 3 clients; broadcast 2 MB to each (one message), local training, upload 2 MB each; server 10 Mbit/s down, 40 up
    net = {**NET, "server": {"up_mbps": 40, "down_mbps": 10, "latency_ms": 5, "flops_per_s": 1e9}}
    cfg = cfg_with(network=net)
    w = 2 * MB
    ledger, flops = tables([(1, "server", f"client/{k}", "weights", 1, w) for k in range(3)]
                           + [(1, f"client/{k}", "server", "weights", 1, w) for k in range(3)],
                           [(1, f"client/{k}", "forward", 2e9) for k in range(3)])
    t = times(cfg, ledger, flops, parallel=True)
    lat = 0.010 + 0.005
    download = lat + max(8 * w / 16e6, 3 * 8 * w / 40e6)    # the broadcast shares the server's uplink: 1.2 s
    upload = lat + max(8 * w / 8e6, 3 * 8 * w / 10e6)       # the uploads share its downlink: 4.8 s (not 2 s each)
    assert download == pytest.approx(0.015 + 1.2) and upload == pytest.approx(0.015 + 4.8)
    assert t.sim_comm_s == pytest.approx(download + upload)
    assert t.sim_compute_s == pytest.approx(2.0)
    assert t.sim_time_s == pytest.approx(download + upload + 2.0)


def test_rounds_accumulate_and_spread_is_seeded():
    ledger, flops = tables([(r, "client/0", "server", "activation", 1, MB) for r in (1, 2)], [])
    df = round_times(ledger, flops, network_for(cfg_with()), parallel=False)
    assert list(df["sim_time_s_cum"]) == pytest.approx([0.01 + 1, 2 * (0.01 + 1)])
    a, b = (Network(cfg_with("network.spread=0.5").network, 3, seed=s) for s in (1, 1))
    c = Network(cfg_with("network.spread=0.5").network, 3, seed=2)
    assert a.clients == b.clients and a.clients != c.clients
    assert len({x.up_bps for x in a.clients}) == 3 and {x.latency_s for x in a.clients} == {0.010}


@pytest.mark.parametrize("sets,pattern", [
    (["network.client.up_mbps=-5"], r"^network\.client\.up_mbps: -5\.0 .*a number > 0"),
    (["network.server.down_mbps=0"], r"^network\.server\.down_mbps: 0\.0 .*a number > 0"),
    (["network.client.latency_ms=-1"], r"^network\.client\.latency_ms: -1\.0 .*a number >= 0"),
    (["network.hospital={up_mbps: 3}"], r"^network\.hospital: .*a known key of network: client, server, others"),
    (["network.per_client.up_mbps=[5, 6]"], r"^network\.per_client\.up_mbps: \[5\.0, 6\.0\] .*data\.num_clients \(3\)"),
    (["network.per_client.latency_ms=[1, -2, 3]"], r"^network\.per_client\.latency_ms\[1\]: -2\.0 .*>= 0"),
    (["network.client.flops_per_s=fast"], r"^network\.client\.flops_per_s: 'fast' .*a number > 0"),
])
def test_bad_network_settings_name_the_field(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cfg_with(*sets)


def test_real_run_sim_columns_are_recomputed_from_its_results_directory(ray_session):
    """One tiny FedAvg run: metrics.csv's sim_* columns == simulate(results_dir) == the analytic closed form
    (analysis/time_model.py); re-priced on a faster network, less transfer time and the same compute. (The
    run is test_recovery.py's uninterrupted FedAvg run, once for the session: this test only reads it.)"""
    from analysis.time_model import fedavg_time
    from conftest import shared_run

    result = shared_run("algorithm=fedavg", "training.rounds=3")[1]
    written = config.load(result.out_dir / "config.yaml").network
    assert written.client.flops_per_s and written.server.flops_per_s      # the measured speed, kept
    m = pd.read_csv(result.out_dir / "metrics.csv")
    again = simulate(result.out_dir)
    for col in ("sim_time_s", "sim_comm_s", "sim_compute_s", "sim_time_s_cum"):
        assert list(again[col]) == pytest.approx(list(m[col]), rel=1e-12)
    model = fedavg_time("fmnist_cnn", [1, 8, 8], 4, samples_per_client=32, num_clients=3, rounds=3, batch_size=16,
                        network=written)
    assert m["sim_comm_s"].sum() == pytest.approx(model.comm_s, rel=1e-9)
    assert m["sim_compute_s"].sum() == pytest.approx(model.compute_s, rel=1e-9)
    # re-priced on a 10x faster client uplink and server: less transfer time, the same compute
    fast = simulate(result.out_dir, network={"client": {"up_mbps": 200}, "server": {"up_mbps": 1e4, "down_mbps": 1e4}})
    assert (fast["sim_comm_s"] < m["sim_comm_s"]).all()
    assert list(fast["sim_compute_s"]) == pytest.approx(list(m["sim_compute_s"]))


def test_costs_query_prices_each_method_on_a_network(tmp_path, capsys):
    import yaml

    from analysis import costs as cost_model
    from analysis.time_model import fedavg_time

    good, bad = tmp_path / "net.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump({"network": NET}))
    bad.write_text(yaml.safe_dump({"network": {"client": {"up_mbps": -1}}}))
    args = ["query", "--model", "fmnist_cnn", "--input-shape", "1,8,8", "--classes", "4", "--cut", "pool1",
            "--samples-per-client", "32", "--clients", "3", "--batch-size", "16"]
    assert cost_model.main(args + ["--network", str(good)]) == 0
    out = capsys.readouterr().out
    t = fedavg_time("fmnist_cnn", [1, 8, 8], 4, 32, 3, 1, 16, cfg_with().network)
    assert f"| fedavg | {t.comm_s:.4g} | {t.compute_s:.4g} | {t.total_s:.4g} |" in out
    assert cost_model.main(args + ["--network", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == (
        "raysplit: error: network.client.up_mbps: -1.0 is not allowed; expected a number > 0")
