"""Privacy: how much the cut activations reveal of the raw inputs, and defences, all as plug-ins.

- ``distance_correlation(X, Z)``: Székely's distance correlation of two batches (0 for independent,
  1 for a linear map), vectorised in torch; pairwise distances through a matrix product so that the FLOP
  meter counts them when a defence trains on it.
- ``Leakage`` (measure): every evaluated round, the distance correlation between raw inputs and each data
  holder's cut activation on a fixed probe set of training samples (``dcor_<segment>`` in metrics.csv), as
  the receiving party gets it (after noise and codecs: what leaks is what crosses). That sample estimator is
  biased upwards (it does not fall to 0 for independent data at a probe's size); ``dcor2_bc_<segment>`` beside
  it is the bias-corrected squared distance correlation, 0 in expectation for independent data.
  The simulator measures it on the driver: it sends nothing and adds no bytes to the ledger.
- ``NoPeek`` (defence, Vepakomma et al.): the data holder adds alpha · DCOR(X, Z) to its loss.
- ``GaussianNoise`` (defence): noise of std sigma on the cut activations and/or gradients as they are sent,
  each sample's row first clipped to an L2 norm if asked.
- ``LabelDP`` (defence): labels a data holder sends (vanilla) pass through randomized response: each is
  kept with probability e^eps / (e^eps + K - 1), else replaced by one of the K - 1 others uniformly
  (eps-label differential privacy).

Random defences are seeded by (seed, round, step, sender, receiver, kind), so they do not depend on which
actor hosts whom.

The config's ``privacy:`` section builds them (``privacy_plugins``); they are also registered by name.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from raysplit.graph import INPUT, eval_mode
from raysplit.plugins import PLUGINS, Plugin


EPS = 1e-12      # under every square root: finite gradients at 0


def _distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of x, exactly 0 on the diagonal, differentiable everywhere."""
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=0)
    return torch.sqrt(d2 + EPS) - EPS ** 0.5


def _centered(d: torch.Tensor) -> torch.Tensor:
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()




def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation of two batches (rows are samples; any trailing shape is flattened).
    Computed in float64 with EPS under each square root, so that it stays finite and differentiable when a
    defence collapses the representation (distance variances near 0; NoPeek with a large alpha)."""
    a, b = _centered(_distances(x.flatten(1).double())), _centered(_distances(z.flatten(1).double()))
    dcov2, va, vb = (a * b).mean(), (a * a).mean(), (b * b).mean()
    dcor2 = dcov2.clamp(min=0) / torch.sqrt(va * vb + EPS ** 2)
    return torch.sqrt(dcor2 + EPS).to(z.dtype)      # (at least 1e-6: a finite gradient at 0)


def bias_corrected_dcor2(x: torch.Tensor, z: torch.Tensor) -> float:
    """The bias-corrected squared distance correlation (Székely & Rizzo 2014, U-centred distance matrices): 0 in
    expectation for independent data at any n, where the sample distance correlation above is not (0.27-0.38 for
    independent batches of 512 of a cut's shapes), and may be slightly negative then. A measure, not a loss."""
    def u_centred(d: torch.Tensor) -> torch.Tensor:
        n = d.shape[0]
        u = d - d.sum(0, keepdim=True) / (n - 2) - d.sum(1, keepdim=True) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
        return u.fill_diagonal_(0)

    a, b = u_centred(_distances(x.flatten(1).double())), u_centred(_distances(z.flatten(1).double()))
    ab, aa, bb = (a * b).sum(), (a * a).sum(), (b * b).sum()       # each over n (n - 3): the factor cancels
    return float(ab / torch.sqrt(aa * bb)) if aa > 0 and bb > 0 else 0.0


@PLUGINS.register("nopeek")
class NoPeek(Plugin):
    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha

    def client_loss(self, x, z):
        return self.alpha * distance_correlation(x, z) if self.alpha else None


@PLUGINS.register("leakage")
class Leakage(Plugin):
    def __init__(self, probe: int = 512, seed: int = 0):
        self.probe, self.seed = probe, seed

    def evaluate(self, model, dataset) -> dict[str, float]:
        x = torch.from_numpy(dataset.train_x[probe_rows(len(dataset.train_y), self.probe, self.seed, stream=5)])
        topo, out = model.topology, {}
        with torch.no_grad(), eval_mode(model):
            for seg in topo.segments:
                if INPUT in seg.inputs and not seg.task:      # a data holder's cut
                    view = topo.view(seg.owner, x)
                    z = self.driver.as_received(seg.owner, topo.consumers(seg.name)[0].owner, "activation",
                                                model.segs[seg.name](view))
                    out[f"dcor_{seg.name}"] = float(distance_correlation(view, z))
                    out[f"dcor2_bc_{seg.name}"] = bias_corrected_dcor2(view, z)
        return out


def probe_rows(n: int, size: int, seed: int, stream: int) -> np.ndarray:
    """A fixed probe set of training rows for a measure or an attack (its own random stream of the seed)."""
    return np.sort(np.random.default_rng([seed, stream]).choice(n, size=min(size, n), replace=False))


@PLUGINS.register("gaussian_noise")
class GaussianNoise(Plugin):
    def __init__(self, activation_sigma: float = 0.0, gradient_sigma: float = 0.0, clip: float | None = None,
                 seed: int = 0):
        self.sigma = {"activation": activation_sigma, "gradient": gradient_sigma}
        self.clip, self.seed = clip, seed

    def on_send(self, src, dst, kind, payload):
        if kind not in self.sigma or not isinstance(payload, torch.Tensor):
            return payload                       # only what crosses a cut: activations, gradients
        sigma = self.sigma[kind]
        if self.clip:
            norms = payload.flatten(1).norm(dim=1).clamp(min=1e-12)
            payload = payload * (self.clip / norms).clamp(max=1.0).reshape(-1, *[1] * (payload.dim() - 1))
        if sigma:
            noise = torch.randn(payload.shape, generator=message_generator(self, src, dst, kind), dtype=payload.dtype)
            payload = payload + sigma * noise.to(payload.device)
        return payload


def message_generator(plugin: Plugin, src: str, dst, kind: str) -> torch.Generator:
    """A random stream of its own for one message: the same whatever actor sends it. (On the driver, for an
    attack's view of a message: one per evaluated round.)"""
    clock = (plugin.host.ledger.round, plugin.host.ledger.step) if plugin.host else (plugin.driver.round, "eval")
    key = f"{plugin.seed}/{clock[0]}/{clock[1]}/{src}/{dst}/{kind}".encode()
    return torch.Generator(device="cpu").manual_seed(zlib.crc32(key))


@PLUGINS.register("label_dp")
class LabelDP(Plugin):
    def __init__(self, epsilon: float, num_classes: int, seed: int = 0):
        self.epsilon, self.num_classes, self.seed = epsilon, num_classes, seed

    def keep_probability(self) -> float:
        e = math.exp(self.epsilon)
        return e / (e + self.num_classes - 1)

    def on_send(self, src, dst, kind, payload):
        if kind != "labels" or not isinstance(payload, torch.Tensor):
            return payload
        gen = message_generator(self, src, dst, kind)
        keep = torch.rand(payload.shape, generator=gen) < self.keep_probability()
        # another label, uniformly: shift by 1..K-1
        shift = torch.randint(1, self.num_classes, payload.shape, generator=gen)
        flipped = (payload.cpu() + shift) % self.num_classes
        return torch.where(keep, payload.cpu(), flipped).to(payload.device, payload.dtype)


def privacy_plugins(cfg, seed: int, num_classes: int | None = None) -> list[Plugin]:
    """The config's ``privacy:`` section as plug-ins (none when everything is off). Label DP needs the number
    of classes: until the data set is loaded (config checks) it is left out."""
    out: list[Plugin] = []
    if cfg.nopeek:
        out.append(NoPeek(cfg.nopeek))
    if cfg.activation_noise or cfg.gradient_noise or cfg.clip:
        out.append(GaussianNoise(cfg.activation_noise, cfg.gradient_noise, cfg.clip, seed))
    if cfg.label_epsilon is not None and num_classes is not None:
        out.append(LabelDP(cfg.label_epsilon, num_classes, seed))
    if cfg.leakage_probe:
        out.append(Leakage(cfg.leakage_probe, seed))
    return out
