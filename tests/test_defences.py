"""Privacy measures and defences as plug-ins: distance correlation, the per-round leakage measure, NoPeek
(with the equivalence oracle still holding), Gaussian noise on what crosses the cut."""
import math

import numpy as np
import pytest
import torch

from conftest import max_param_diff, shared_run, small_config, train_with
from raysplit.algorithms import Centralized, SplitNN
from raysplit.errors import ConfigError
from raysplit.experiment import prepare, run
from raysplit.privacy import bias_corrected_dcor2, distance_correlation


def dcor_by_definition(xs, zs) -> float:
    """Székely's sample distance correlation, written out with loops (an independent implementation)."""
    n = len(xs)

    def centered(v):
        d = [[math.dist(v[i], v[j]) for j in range(n)] for i in range(n)]
        row = [sum(r) / n for r in d]
        grand = sum(row) / n
        return [[d[i][j] - row[i] - row[j] + grand for j in range(n)] for i in range(n)]

    a, b = centered(xs), centered(zs)
    mean = lambda f: sum(f(i, j) for i in range(n) for j in range(n)) / n ** 2  # noqa: E731
    dcov2, va, vb = mean(lambda i, j: a[i][j] * b[i][j]), mean(lambda i, j: a[i][j] ** 2), mean(lambda i, j: b[i][j] ** 2)
    return math.sqrt(dcov2 / math.sqrt(va * vb))


def test_distance_correlation_by_hand_and_its_properties():
    xs, zs = [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [4.0, 1.0]], [[1.0], [0.0], [3.0], [2.0]]
    got = float(distance_correlation(torch.tensor(xs, dtype=torch.float64), torch.tensor(zs, dtype=torch.float64)))
    assert got == pytest.approx(dcor_by_definition(xs, zs), abs=1e-6)   # 1e-12 under the root keeps gradients finite
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, 4, 4, generator=g)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=g)).Q
    assert float(distance_correlation(x, 3 * x.flatten(1) @ rotation + 1)) == pytest.approx(1.0, abs=1e-5)
    assert float(distance_correlation(x, -2 * x + 5)) == pytest.approx(1.0, abs=1e-5)
    u, v = torch.randn(512, 2, generator=g), torch.randn(512, 2, generator=g)   # low-dimensional: little bias
    independent = float(distance_correlation(u, v))
    assert independent < 0.15 and float(distance_correlation(u, u ** 2)) > 2 * independent


def bcdcor2_by_definition(xs, zs) -> float:
    """Székely & Rizzo (2014), written out with loops over the pairs: U-centred distances, their inner product."""
    def u_centred(d):
        n = len(d)
        u = np.zeros_like(d)
        for i in range(n):
            for j in range(n):
                if i != j:
                    u[i, j] = d[i, j] - d[i].sum() / (n - 2) - d[:, j].sum() / (n - 2) + d.sum() / ((n - 1) * (n - 2))
        return u

    def dist(v):
        return np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1))

    a, b = u_centred(dist(xs.reshape(len(xs), -1))), u_centred(dist(zs.reshape(len(zs), -1)))
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_the_bias_corrected_distance_correlation_is_0_for_independent_data_where_the_sample_one_is_not():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(40, 1, 6, 6, generator=g, dtype=torch.float64), torch.randn(40, 12, generator=g, dtype=torch.float64)
    assert bias_corrected_dcor2(x, z) == pytest.approx(bcdcor2_by_definition(x.numpy(), z.numpy()), abs=1e-9)
    # independent batches of a cut's size: the sample estimator stays far from 0, the bias-corrected one does not
    x, z = torch.randn(512, 1, 28, 28, generator=g), torch.randn(512, 32, 13, 13, generator=g)
    assert float(distance_correlation(x, z)) > 0.2 and abs(bias_corrected_dcor2(x, z)) < 0.02
    assert bias_corrected_dcor2(x, 3 * x.flatten(1) + 1) == pytest.approx(1.0)        # a similarity: 1, as the sample one


def test_nopeek_keeps_the_equivalence_oracle(ray_session):
    """The unsplit reference gets the same NoPeek term: one client, the same batches, parameters within 1e-5."""
    plan = prepare(small_config("data.num_clients=1", "privacy.nopeek=0.5"))
    split = train_with(SplitNN, plan)
    assert max_param_diff(split, train_with(Centralized, plan)) <= 1e-5
    plain = shared_run("data.num_clients=1")[1].model    # without NoPeek (test_equivalence.py reads it too)
    assert max_param_diff(split, plain) > 1e-4, "NoPeek must change training"


PROBE = "privacy.leakage_probe=64"


def test_nopeek_lowers_the_measured_leakage_and_sends_nothing_more(ray_session):
    m0 = shared_run(PROBE)[1]                   # no defence, leakage measured (the noise test's baseline too)
    m1 = run(small_config(PROBE, "privacy.nopeek=3"), progress=False, write=False)
    assert 0 < m1.metrics["dcor_s0"].iloc[-1] < m0.metrics["dcor_s0"].iloc[-1]
    assert m0.ledger["bytes"].sum() == m1.ledger["bytes"].sum()       # measuring adds no bytes
    assert m1.metrics["client_flops"].sum() > m0.metrics["client_flops"].sum()   # the defence's compute is metered


def test_gaussian_noise_is_seeded_by_the_message_not_the_hosting(ray_session):
    noisy = "privacy.activation_noise=0.5"
    a = run(small_config(noisy, "privacy.gradient_noise=0.01", "privacy.clip=20", PROBE), progress=False, write=False)
    b = run(small_config(noisy, "privacy.gradient_noise=0.01", "privacy.clip=20", "runtime.workers=2"),
            progress=False, write=False)
    plain = shared_run(PROBE)[1]                # the same run as the NoPeek test's baseline (probe of 64 samples)
    cols = ["test_acc", "test_loss", "train_loss"]
    assert a.metrics[cols].equals(b.metrics[cols])
    # the leakage is measured on what the server receives: the noise lowers it
    assert a.metrics["dcor_s0"].iloc[-1] < plain.metrics["dcor_s0"].iloc[-1]
    assert not a.metrics[cols].equals(plain.metrics[cols])
    assert a.ledger["bytes"].sum() == plain.ledger["bytes"].sum()


@pytest.mark.parametrize("setting", ["privacy.nopeek=-0.1", "privacy.activation_noise=-1", "privacy.clip=0",
                                     "privacy.leakage_probe=-5", "privacy.label_epsilon=0"])
def test_bad_privacy_settings_are_one_line_errors(setting):
    field = setting.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        small_config(setting)


def test_label_dp_flips_labels_at_the_rate_its_epsilon_gives():
    import math
    from raysplit.privacy import LabelDP

    class Host:
        class ledger:
            round, step = 0, 0
    dp = LabelDP(epsilon=1.0, num_classes=10)
    dp.setup(Host())
    y = torch.arange(10).repeat(2000)
    sent = dp.on_send("client/0", "server", "labels", y)
    kept = float((sent == y).float().mean())
    assert kept == pytest.approx(math.e / (math.e + 9), abs=0.02)
    assert sent.dtype == y.dtype and int(sent.min()) >= 0 and int(sent.max()) <= 9
    assert torch.equal(sent, dp.on_send("client/0", "server", "labels", y))         # seeded by the message
    assert dp.on_send("client/0", "server", "activation", y.float()).equal(y.float())  # only labels


def test_label_dp_where_no_labels_cross_is_refused():
    with pytest.raises(ConfigError, match=r"^privacy.label_epsilon: 1.0 .*null for topology u_shaped: its labels never"):
        prepare(small_config("topology=u_shaped", "model.cut_layers=[pool1,relu3]", "privacy.label_epsilon=1"))


def test_label_dp_in_a_run(ray_session):
    plain = shared_run()[1]          # the tiny config's run for the session (test_recovery.py, test_plots.py read it)
    dp = run(small_config("privacy.label_epsilon=0.5"), progress=False, write=False)
    assert not plain.metrics["train_loss"].equals(dp.metrics["train_loss"])
    assert plain.ledger.equals(dp.ledger)                                   # the same bytes cross


def test_ssim_and_model_inversion(ray_session, tmp_path):
    from raysplit.attacks import ssim

    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=g)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6) and ssim(x, torch.rand(4, 1, 8, 8, generator=g)) < 0.3
    cfg = small_config("attacks.model_inversion=true", "attacks.aux_samples=64", "attacks.decoder_epochs=30",
                       "attacks.targets=4", "data.synthetic_samples=192")
    result = run(cfg, out_dir=tmp_path / "inv", progress=False)
    m = result.metrics
    assert (m["inversion_mse"] > 0).all() and m["inversion_ssim"].between(-1, 1).all()
    # the attack's compute is the server's, phase "attack": a decoder z -> 256 -> input, by hand (a multiply-add
    # is 2 FLOPs; backward: both weight gradients and the hidden layer's input gradient), 30 epochs of the
    # 64 auxiliary samples in one batch, then 4 reconstructions
    plan = prepare(cfg)
    z = plan.modules["s0"](torch.zeros(1, 1, 8, 8)).numel()
    fwd = 2 * (z * 256 + 256 * 64)
    bwd = 2 * z * 256 + 2 * 2 * 256 * 64
    attack = result.flops[result.flops["phase"] == "attack"]
    assert set(attack["party"]) == {"server"} and list(attack["round"]) == [1, 2]
    assert (attack["flops"] == 30 * 64 * (fwd + bwd) + 4 * fwd).all()
    assert (m["server_flops_attack"] == attack["flops"].values).all()
    training = result.flops[result.flops["phase"] != "attack"].groupby(["round", "role"])["flops"].sum()
    assert (m["server_flops"].values == training[:, "server"].values).all()   # not mixed with training FLOPs
    assert (tmp_path / "inv" / "attacks" / "model_inversion_round-2.png").stat().st_size > 5_000
    noisy = run(small_config(*[s for s in ["attacks.model_inversion=true", "attacks.aux_samples=64",
                                           "attacks.decoder_epochs=30", "attacks.targets=4", "data.synthetic_samples=192",
                                           "privacy.activation_noise=5"]]), progress=False, write=False).metrics
    assert noisy["inversion_ssim"].iloc[-1] < m["inversion_ssim"].iloc[-1]   # noise on activations hides the inputs
    with pytest.raises(ConfigError, match=r"^attacks.model_inversion: True .*false for algorithm fedavg"):
        prepare(small_config("attacks.model_inversion=true", "algorithm=fedavg"))


def plan_cut_numel(sets) -> int:
    """Values per sample of the gradient the U-shaped server receives (its segment's output)."""
    plan = prepare(small_config(*sets))
    x = torch.zeros(1, 1, 8, 8)
    return plan.modules["s1"](plan.modules["s0"](x)).numel()


def test_label_inference_from_gradients_and_noise_against_it(ray_session):
    from raysplit.attacks import auc

    assert auc(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([True, True, False, False])) == 1.0
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5
    assert math.isnan(auc(torch.tensor([float("nan"), 1.0]), torch.tensor([True, False])))
    u = ["topology=u_shaped", "model.cut_layers=[pool1,relu3]", "data.synthetic_classes=2", "attacks.label_inference=true",
         "attacks.probe=64"]
    result = run(small_config(*u), progress=False, write=False)
    plain = result.metrics
    noisy = run(small_config(*u, "privacy.gradient_noise=0.01"), progress=False, write=False).metrics
    # the scores are the server's compute (phase "attack"): 64 norms and 64 dot products of D-vectors, the known
    # sample's norm (2 FLOPs a multiply-add), and no client FLOPs
    attack = result.flops[result.flops["phase"] == "attack"]
    d = int(plan_cut_numel(u))
    assert set(attack["party"]) == {"server"} and (attack["flops"] == 2 * d * (64 + 64 + 1)).all()
    assert "client_flops_attack" not in plain
    assert plain["label_auc_direction"].iloc[-1] > 0.9          # the labels can be read off the gradients
    assert 0 < noisy["label_auc_direction"].iloc[-1] < plain["label_auc_direction"].iloc[-1]   # finite: trained on
    with pytest.raises(ConfigError, match=r"^attacks.label_inference: True .*topology vanilla"):
        prepare(small_config("attacks.label_inference=true"))
