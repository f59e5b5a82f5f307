"""Plug-in points and cut-layer compression: codecs, the ledger's encoded bytes, plug-in FLOPs metered to
the party that ran them, and the equivalence oracle with an extra client loss."""
import copy
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import max_param_diff, shared_run, small_config, train_with
from raysplit import config
from raysplit.accounting import Ledger, payload_nbytes, receive
from raysplit.algorithms import SplitNN
from raysplit.compression import CODECS, Compression
from raysplit.data import batches
from raysplit.engine import make_optimizer
from raysplit.errors import ConfigError
from raysplit.experiment import prepare, run
from raysplit.plugins import PLUGINS, Plugin, Plugins
from raysplit.schedule import client_order
from raysplit.topology import ComposedNet

TOL = 1e-5


# --------------------------------------------------------------------------- codecs

def test_codecs_round_trip_and_sizes():
    t = torch.randn(16, 8, 4, 4)
    n = t.numel()
    f16 = CODECS.get("float16")().encode(t)
    assert payload_nbytes(f16) == 2 * n
    assert torch.allclose(CODECS.get("float16")().decode(f16), t, atol=1e-2)
    q = CODECS.get("int8")().encode(t)
    assert payload_nbytes(q) == n + 4 and q.parts["values"].dtype == torch.int8
    scale = t.abs().max() / 127
    assert (CODECS.get("int8")().decode(q) - t).abs().max() <= scale / 2 + 1e-7
    topk = CODECS.get("topk")(topk_ratio=0.1)
    e = topk.encode(t)
    k = math.ceil(0.1 * n)
    assert payload_nbytes(e) == 8 * k
    back = topk.decode(e)
    kept = back != 0
    assert int(kept.sum()) == k and torch.equal(back[kept], t[kept])
    assert t[~kept].abs().max() <= t[kept].abs().min()          # the largest magnitudes are the ones kept
    assert CODECS.get("identity")().encode(t) is t


def test_compression_plugin_on_the_send_path():
    """The ledger counts the encoded bytes (raw beside them); the receiving side decodes."""
    comp = Compression(activation="int8", gradient="topk", topk_ratio=0.25)
    sender, receiver = Plugins([comp]), Plugins([copy.deepcopy(comp)])
    led = Ledger(transform=sender.on_send)
    a, g, w = torch.randn(4, 10), torch.randn(4, 10), {"w": torch.randn(3)}
    parcels = [led.send("client/0", "server", "activation", a), led.send("server", "client/0", "gradient", g),
               led.send("client/0", "server", "weights", w)]
    assert [(e.nbytes, e.raw_nbytes) for e in led.drain()] == [(40 + 4, 160), (8 * 10, 160), (12, 12)]
    got = [receive(p, "cpu", receiver.open) for p in parcels]
    assert (got[0] - a).abs().max() <= a.abs().max() / 254 + 1e-7
    assert int((got[1] != 0).sum()) == 10 and torch.equal(got[2]["w"], w["w"])


def test_unknown_codec_is_a_config_error():
    with pytest.raises(ConfigError, match=r"compression.activation: 'zip' .*one of identity, float16, int8, topk"):
        small_config("compression.activation=zip")


def test_identity_codec_gives_bitwise_the_same_parameters(ray_session):
    plain = shared_run("training.rounds=1")[1].model          # the uncompressed run (test_accounting reads it too)
    ident = run(small_config("training.rounds=1", "compression.activation=identity", "compression.gradient=identity"),
                progress=False, write=False).model
    assert max_param_diff(plain, ident) == 0.0


# `raysplit codecs` on the tiny config, three rounds (test_codecs_command_compares_the_codec_settings): five runs,
# one per codec setting, written once for this module; the tests of what compression does in a run read them
CODEC_SETS = ["seed=7", "data.dataset=synthetic", "data.synthetic_samples=96", "data.num_clients=3",
          "data.synthetic_shape=[1,8,8]", "data.synthetic_classes=4", "model.cut_layers=[pool1]", "training.rounds=3",
          "training.batch_size=16", "training.lr=0.05", "training.momentum=0.9", "runtime.workers=1",
          "runtime.worker.num_cpus=0.5", "runtime.server.num_cpus=0.5", "compression.topk_ratio=0.05"]


@pytest.fixture(scope="module")
def codec_runs(ray_session, tmp_path_factory):
    from analysis import codecs
    from test_cli import ROOT

    out = tmp_path_factory.mktemp("codecs") / "codecs"
    said = Said()
    with pytest.MonkeyPatch.context() as m, said:
        m.chdir(ROOT)
        assert codecs.main(["experiments/compression_fmnist.yaml", *[a for s in CODEC_SETS for a in ("--set", s)],
                            "--out", str(out), "--quiet"]) == 0
    return out, pd.read_csv(out / "codecs.csv"), said.lines


class Said(logging.Handler):
    """The lines raysplit logs while it is entered (at INFO, whatever the process's logging setup)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.logger = logging.getLogger("raysplit")
        self.level = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def codec_run(codec_runs, variant: str, *sets: str) -> Path:
    """The results directory of the codecs command's ``variant``, checked to be ``small_config(*sets)``'s run
    (the same config but for its name and the machine's measured speeds)."""
    table = codec_runs[1].set_index("variant")
    run_dir = Path(table.loc[variant, "run"])

    def comparable(cfg):
        return {k: v for k, v in config.to_dict(cfg).items() if k not in ("name", "network")}
    assert comparable(config.load(run_dir / "config.yaml")) == comparable(small_config(*sets))
    return run_dir


def test_compressed_run_ledger_bytes_equal_encoded_sizes_by_hand(ray_session, codec_runs):
    sets = ("training.rounds=3", "compression.activation=int8", "compression.gradient=topk", "compression.topk_ratio=0.05")
    run_dir = codec_run(codec_runs, "int8 + top-k gradients", *sets)
    plan = prepare(small_config(*sets))
    cfg = plan.cfg
    ledger = pd.read_csv(run_dir / "ledger.csv")
    per_sample = plan.modules["s0"](torch.zeros(1, 1, 8, 8)).numel()      # activation values per sample at the cut
    sizes = [len(b) for idx in plan.client_indices for b in batches(idx, cfg.training.batch_size, cfg.seed, 0, 0)]
    led = ledger[ledger["round"] == 1].groupby("kind")[["bytes", "raw_bytes", "messages"]].sum()   # round 1's
    assert led.loc["activation", "messages"] == len(sizes)
    assert led.loc["activation", "bytes"] == sum(b * per_sample + 4 for b in sizes)          # int8 + scale
    assert led.loc["gradient", "bytes"] == sum(8 * math.ceil(0.05 * b * per_sample) for b in sizes)  # values + int32 indices
    assert led.loc["activation", "raw_bytes"] == led.loc["gradient", "raw_bytes"] == sum(sizes) * per_sample * 4
    assert led.loc["weights", "bytes"] == led.loc["weights", "raw_bytes"]                  # hand-offs not compressed


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_compressed_training_learns(ray_session, codec_runs, codec):
    # (the top-k ratio: the codecs command's setting for its top-k variants, which these codecs do not read)
    run_dir = codec_run(codec_runs, codec, "training.rounds=3", f"compression.activation={codec}",
                        f"compression.gradient={codec}", "compression.topk_ratio=0.05")
    m = pd.read_csv(run_dir / "metrics.csv")
    assert list(m["round"]) == [1, 2, 3]
    assert m["train_loss"].iloc[-1] < 0.5 * m["train_loss"].iloc[0]
    assert m["test_acc"].iloc[-1] > 0.6                # 4 classes: chance is 0.25


# --------------------------------------------------------------------------- plug-in points

class ProjectionPenalty(Plugin):
    """An extra client loss of known cost: alpha * mean((z W)^2) with a fixed W of shape (cut values, 3)."""

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha
        self.w = None

    def client_loss(self, x, z):
        if self.w is None:
            self.w = torch.linspace(-1, 1, z[0].numel() * 3).reshape(-1, 3) / z[0].numel() ** 0.5
        return self.alpha * (z.flatten(1) @ self.w).pow(2).mean()


PLUGINS.register("test_projection_penalty", ProjectionPenalty)


def test_plugin_flops_are_metered_to_the_party_that_ran_them(ray_session):
    plan, plain = shared_run("training.rounds=1")             # the run without the plug-in (shared, as above)
    base = plan.cfg
    with_plugin = small_config("training.rounds=1", "plugins=[{name: test_projection_penalty, alpha: 0.1}]")
    extra = run(with_plugin, progress=False, write=False)
    q = plan.modules["s0"](torch.zeros(1, 1, 8, 8)).numel()
    sizes = [len(b) for idx in plan.client_indices for b in batches(idx, base.training.batch_size, base.seed, 0, 0)]
    # (b x q) @ (q x 3): 2bq3 FLOPs forward; backward: the gradient w.r.t. z only (W is a constant), 2bq3 more
    by_hand = sum(2 * b * q * 3 for b in sizes)
    f0 = plain.flops.groupby(["role", "phase"])["flops"].sum()
    f1 = extra.flops.groupby(["role", "phase"])["flops"].sum()
    assert f1["client", "forward"] - f0["client", "forward"] == by_hand
    assert f1["client", "backward"] - f0["client", "backward"] == by_hand
    assert f1["server", "forward"] == f0["server", "forward"] and f1["server", "backward"] == f0["server", "backward"]


def replay_with_penalty(plan, penalty: ProjectionPenalty | None) -> ComposedNet:
    """The unsplit network trained in this process on the task loss (+ ``penalty`` on (input, cut activation)),
    on the batches the clients see, in the same order."""
    cfg = plan.cfg
    net = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    opt = make_optimizer(net.parameters(), cfg.training)
    for r in range(cfg.training.rounds):
        for k in client_order(cfg, r):
            for idx in batches(plan.client_indices[k], cfg.training.batch_size, cfg.seed, r, k):
                x, y = torch.from_numpy(plan.dataset.train_x[idx]), torch.from_numpy(plan.dataset.train_y[idx])
                z = net.segs["s0"](x)
                loss = nn.functional.cross_entropy(net.segs["s1"](z), y)
                if penalty is not None:
                    loss = loss + penalty.client_loss(x, z)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return net


def test_extra_client_loss_keeps_the_equivalence_oracle(ray_session):
    """Split training with a client-side extra loss equals the unsplit network trained on task loss + the same
    extra loss on (input, cut activation), on the same batches in the same order; and differs from the same
    replay without the extra loss (what split training without the plug-in equals: the oracle above and
    test_equivalence.py), so the extra loss changes training."""
    plan = prepare(small_config("plugins=[{name: test_projection_penalty, alpha: 0.5}]", "runtime.workers=2",
                                "training.client_order=shuffled"))
    initial = ComposedNet(plan.topology, copy.deepcopy(plan.modules))
    net, without = replay_with_penalty(plan, ProjectionPenalty(alpha=0.5)), replay_with_penalty(plan, None)
    split = train_with(SplitNN, plan)
    assert max_param_diff(split, without) > 1e-4, "the extra loss must change training"
    assert max_param_diff(net, initial) > 1e-3
    assert max_param_diff(split, net) <= TOL


class ActivationCounter(Plugin):
    """Counts the activation messages a party receives; checks its payload arrives decoded."""

    def __init__(self):
        self.count = 0

    def observe(self, parcel, payload):
        if parcel.kind == "activation":
            assert isinstance(payload, torch.Tensor) and payload.dtype == torch.float32
            self.count += 1

    def metrics(self):
        out, self.count = ({"received_activations": (self.count, 1)} if self.count else {}), 0
        return out

    def evaluate(self, model, dataset):
        return {"test_samples_seen": float(len(dataset.test_y))}


PLUGINS.register("test_activation_counter", ActivationCounter)


def test_observers_and_metrics_become_columns(ray_session):
    cfg = small_config("plugins=[{name: test_activation_counter}]", "compression.activation=int8")
    result = run(cfg, progress=False, write=False)
    acts = result.ledger[result.ledger["kind"] == "activation"].groupby("round")["messages"].sum()
    assert result.metrics["received_activations"].tolist() == acts.tolist()
    assert (result.metrics["test_samples_seen"] == len(prepare(cfg).dataset.test_y)).all()


def test_bad_plugin_options_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^plugins\[0\]: \{'beta': 1\} .*options test_projection_penalty takes"):
        small_config("plugins=[{name: test_projection_penalty, beta: 1}]")
    with pytest.raises(ConfigError, match=r"^plugins\[0\]\.name: 'nopeek2' .*one of .*compression"):
        small_config("plugins=[{name: nopeek2}]")


def test_codecs_command_compares_the_codec_settings(codec_runs):
    out, table, said = codec_runs
    assert table["variant"].tolist() == ["none", "float16", "int8", "int8 + top-k gradients", "top-k"]
    # it says which setting is training, before each
    assert [line.split(":")[1].strip() for line in said if line.startswith("codecs: ")] == \
        [f"{v} ({i}/5)" for i, v in enumerate(table["variant"], 1)]
    gb = dict(zip(table["variant"], table["client_gb_per_client"]))
    assert gb["top-k"] < gb["int8"] < gb["float16"] < gb["none"]
    assert (out / "accuracy_vs_client_gb.png").stat().st_size > 10_000
    for run_dir in table["run"]:
        led = pd.read_csv(f"{run_dir}/ledger.csv")
        assert (led["bytes"] <= led["raw_bytes"]).all()
