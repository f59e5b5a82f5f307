"""Attacks on what crosses the cut, as plug-ins, reported as metrics and pictures.

``LabelInference`` (Li et al. 2021, "Label leakage and protection in two-party split learning"): a party
without labels that receives the gradients of its output (the U-shaped server, a vertical passive holder)
scores each sample by the gradient's norm, and by its cosine with the gradient of one sample it knows to be
positive; ``label_auc_norm`` and ``label_auc_direction`` in metrics.csv: the AUC of those scores for
``positive_class`` vs the rest (0.5: nothing leaks, 1.0: the labels are read off the gradients), on a probe
batch of training samples, with the gradients as the party receives them (through defences). The scores are
matrix products, so the FLOP meter counts them: metered to the receiving party, phase ``attack``.

``ModelInversion``: the party that receives a data holder's cut activations (the server in vanilla)
trains a decoder from cut activations back to inputs on an auxiliary data set it holds (``aux_samples``
training samples, disjoint from the targets), then reconstructs held-out client samples (``targets``) from
their activations. Every evaluated round: ``inversion_mse`` and ``inversion_ssim`` in metrics.csv, and a
PNG grid (originals above, reconstructions below) in ``<results>/attacks/``. The attack is run by the
simulator on the driver with the round's client segment; the activations it sees are what the server
receives (through the run's defences and codecs). The decoder's training and the reconstructions are
metered to the attacking party (phase ``attack`` in flops.csv: never mixed with training FLOPs, never in the
client's TFLOPs); the client-segment forwards that give the attacker its auxiliary activations are the
simulator's (taken as given: how an attacker obtains them, e.g. by queries, is outside the model).

Both attacks run on the driver, in ``evaluate``, on the party's behalf: ``self.driver.meter`` takes their FLOPs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from raysplit.graph import INPUT, eval_mode
from raysplit.plugins import PLUGINS, Plugin
from raysplit.privacy import probe_rows


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean structural similarity of two batches of images (N, C, H, W), uniform window, the originals' range."""
    c1, c2 = (0.01 * (a.max() - a.min())) ** 2, (0.03 * (a.max() - a.min())) ** 2
    w = min(window, a.shape[-1], a.shape[-2])
    pool = lambda t: nn.functional.avg_pool2d(t, w, stride=1)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a, var_b = pool(a * a) - mu_a ** 2, pool(b * b) - mu_b ** 2
    cov = pool(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def attack_plugins(cfg, seed: int, batch_size: int = 1) -> list[Plugin]:
    """The config's ``attacks:`` section as plug-ins."""
    out: list[Plugin] = []
    if cfg.model_inversion:
        out.append(ModelInversion(cfg.aux_samples, cfg.targets, cfg.decoder_epochs, seed))
    if cfg.label_inference:
        out.append(LabelInference(cfg.probe, cfg.positive_class, seed, batch_size))
    return out


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: the chance that a positive sample scores above a negative one (ties: half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0 or not torch.isfinite(scores).all():   # (a diverged model: no figure, not 0)
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def gradient_receivers(topology) -> list[tuple]:
    """(head, input segment) pairs where a party without the labels receives the gradient of its output from
    the label holder's head: whom label inference applies to."""
    return [(h, topology.segment(i)) for h in topology.heads if topology.label_holders[h.task] == h.owner
            for i in h.inputs if i != INPUT and topology.segment(i).owner != h.owner]


@PLUGINS.register("label_inference")
class LabelInference(Plugin):
    def __init__(self, probe: int = 256, positive_class: int = 0, seed: int = 0, batch_size: int = 1):
        self.probe, self.positive_class, self.seed, self.batch_size = probe, positive_class, seed, batch_size

    def evaluate(self, model, dataset) -> dict[str, float]:
        topo = model.topology
        rows = probe_rows(len(dataset.train_y), self.probe, self.seed, stream=7)
        x, y = torch.from_numpy(dataset.train_x[rows]), torch.from_numpy(dataset.train_y[rows])
        out = {}
        with eval_mode(model):
            vals = {k: v.detach() for k, v in model.values(x).items()}
            for head, seg in gradient_receivers(topo):
                ins = [topo.view(head.owner, x) if i == INPUT else vals[i].clone().requires_grad_(i == seg.name)
                       for i in head.inputs]
                logits = model.segs[head.name](*[t.clone() for t in ins])   # a first in-place layer: not on the leaf
                # each sample's gradient at the scale the party receives it in training (of a batch's mean
                # loss), so that a gradient-noise defence's sigma means here what it means there
                loss = nn.functional.cross_entropy(logits, topo.labels(head.task, y), reduction="sum") / self.batch_size
                (g,) = torch.autograd.grad(loss, [ins[head.inputs.index(seg.name)]])
                g = self.driver.as_received(head.owner, seg.owner, "gradient", g).flatten(1).detach()
                positive = topo.labels(head.task, y) == self.positive_class
                known = int(positive.nonzero()[0]) if positive.any() else 0        # one sample the attacker knows
                scorer, inputs = LabelScores(), [g, g[known:known + 1]]
                norms, cosines = scorer(*inputs)
                self.driver.meter.add(seg.owner, "attack", self.driver.meter.cost("attack:label_scores", scorer,
                                                                                  inputs, False)[0])
                suffix = "" if len(out) == 0 else f"_{seg.owner}"
                out[f"label_auc_norm{suffix}"] = max_auc(norms, positive)
                out[f"label_auc_direction{suffix}"] = auc(cosines, positive)
        return out


class LabelScores(nn.Module):
    """The attacker's scores from the gradients it received, (N, D): each row's norm and its cosine with the
    known positive's gradient (1, D). Written as matrix products so that the FLOP meter counts them."""

    def forward(self, g: torch.Tensor, known: torch.Tensor):
        norms = torch.sqrt((g.unsqueeze(1) @ g.unsqueeze(2)).flatten())
        dots = (g @ known.T).flatten()
        return norms, dots / (norms * torch.sqrt(known @ known.T).flatten()).clamp(min=1e-8)


def max_auc(scores, positive) -> float:
    """The norm attack does not know which class has the larger gradients: it takes the better side."""
    a = auc(scores, positive)
    return max(a, 1 - a)


def save_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.2))
    for row, images in enumerate((originals, reconstructions)):
        for i in range(n):
            img = images[i].detach().cpu()
            img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0).clamp(0, 1)
            axes[row, i].imshow(img.numpy(), cmap="gray")
            axes[row, i].axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@PLUGINS.register("model_inversion")
class ModelInversion(Plugin):
    def __init__(self, aux_samples: int = 1024, targets: int = 8, epochs: int = 10, seed: int = 0):
        self.aux_samples, self.targets, self.epochs, self.seed = aux_samples, targets, epochs, seed

    def _decoder(self, z_numel: int, shape) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(z_numel, 256), nn.ReLU(), nn.Linear(256, int(np.prod(shape))),
                             nn.Unflatten(1, tuple(shape)))

    def evaluate(self, model, dataset) -> dict[str, float]:
        topo = model.topology
        seg = next(s for s in topo.segments if INPUT in s.inputs and not s.task)   # the first data holder's cut
        order = np.random.default_rng([self.seed, 6]).permutation(len(dataset.train_y))
        targets, aux = order[: self.targets], order[self.targets: self.targets + self.aux_samples]
        x_aux = topo.view(seg.owner, torch.from_numpy(dataset.train_x[aux]))
        x_t = topo.view(seg.owner, torch.from_numpy(dataset.train_x[targets]))
        client = model.segs[seg.name]
        with torch.no_grad(), eval_mode(client):
            # what the attacker observes: the activations as the consumer of the cut receives them
            dst = topo.consumers(seg.name)[0].owner
            z_aux, z_t = (self.driver.as_received(seg.owner, dst, "activation", client(x)) for x in (x_aux, x_t))
        meter, flops = self.driver.meter, 0
        with torch.random.fork_rng():                # the attack must not disturb training's randomness
            torch.manual_seed(self.seed)
            decoder = self._decoder(z_aux[0].numel(), x_aux.shape[1:])
            opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
            for _ in range(self.epochs):
                for i in torch.randperm(len(aux)).split(128):
                    opt.zero_grad()
                    nn.functional.mse_loss(decoder(z_aux[i]), x_aux[i]).backward()
                    opt.step()
                    flops += sum(meter.cost("attack:decoder", decoder, [z_aux[i]], False))
            with torch.no_grad():
                rec = decoder(z_t)
            flops += meter.cost("attack:decoder", decoder, [z_t], False)[0]
        meter.add(dst, "attack", flops)              # the party that receives the cut: the one attacking it
        out = {"inversion_mse": float(nn.functional.mse_loss(rec, x_t))}
        if x_t.dim() == 4:
            out["inversion_ssim"] = ssim(x_t, rec)
            if self.driver.results_dir is not None:
                save_grid(x_t, rec, self.driver.results_dir / "attacks" / f"model_inversion_round-{self.driver.round}.png",
                          f"model inversion after round {self.driver.round}: originals (top), reconstructions "
                          f"(SSIM {out['inversion_ssim']:.2f})")
        return out
