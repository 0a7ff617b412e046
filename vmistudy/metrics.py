"""Scores of a categorical code against labels, and the MI bound of a frozen model (thesis eq. 4.8)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .config import MISpec
from .data import ImageData, as_float
from .networks import VAE, QNetwork, inference, mean_image
from .objective import target_entropy

BATCH = 256  # draws per step of a fresh Q, and per held-out batch
EVAL_BATCHES = 40


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """counts[label, cluster]."""
    counts = np.zeros((labels.max() + 1, clusters.max() + 1), dtype=np.int64)
    np.add.at(counts, (labels, clusters), 1)
    return counts


def accuracy_hungarian(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels."""
    counts = contingency(labels, clusters)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def accuracy_majority(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Purity: each cluster votes for its most frequent label (several clusters may pick the same label)."""
    return float(contingency(labels, clusters).max(0).sum() / len(labels))


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalized mutual information, I(L; C) / ((H(L) + H(C)) / 2), as scikit-learn's default."""
    joint = contingency(labels, clusters) / len(labels)
    p_label, p_cluster = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = (joint[nz] * np.log(joint[nz] / np.outer(p_label, p_cluster)[nz])).sum()
    h = [-(p[p > 0] * np.log(p[p > 0])).sum() for p in (p_label, p_cluster)]
    return float(mutual / np.mean(h)) if np.mean(h) > 0 else 1.0


def cluster_scores(labels: torch.Tensor, clusters: torch.Tensor) -> dict[str, float]:
    labels, clusters = labels.cpu().numpy(), clusters.cpu().numpy()
    return {"accuracy_hungarian": accuracy_hungarian(labels, clusters),
            "accuracy_majority": accuracy_majority(labels, clusters),
            "nmi": nmi(labels, clusters)}


# A draw returns one batch (x~, z^, c^) of samples from the joint whose MI is estimated.
Draw = Callable[[], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]


def fit_q(q: QNetwork, draw: Draw, steps: int, lr: float = 1e-3) -> None:
    """Maximize E log Q(c^|x~) over Q's parameters on fresh draws."""
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    q.train()
    for _ in range(steps):
        x, z_hat, c_hat = draw()
        loss = -sum(q.log_prob(x, z_hat, c_hat).values()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def mi_bound(q: QNetwork, draw: Draw, entropies: dict[str, float], batches: int) -> dict[str, float]:
    """The bound E log Q + H on `batches` held-out draws, per part and in total, with its Monte Carlo error.

    Returns log_q_<part>, entropy_<part>, mi_lower_bound_<part>, mi_lower_bound and mi_standard_error (nats).
    """
    with inference(q):
        draws = [q.log_prob(*draw()) for _ in range(batches)]
    out: dict[str, float] = {}
    for part in draws[0]:
        log_q = torch.cat([d[part] for d in draws])
        out[f"log_q_{part}"] = log_q.mean().item()
        out[f"entropy_{part}"] = float(entropies[part])
        out[f"mi_lower_bound_{part}"] = out[f"log_q_{part}"] + out[f"entropy_{part}"]
    total = torch.cat([sum(d.values()) for d in draws])
    out["mi_lower_bound"] = total.mean().item() + sum(float(h) for h in entropies.values())
    out["mi_standard_error"] = (total.std() / len(total) ** 0.5).item()
    return out


def one_hot_sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A hard draw c ~ Cat(probs) as a one-hot vector."""
    index = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)


def encoder_draw(vae: VAE, images: torch.Tensor, targets: list[int], categorical: bool,
                 generator: torch.Generator) -> Draw:
    """Batches (x~, z^, c^) with x from `images` and the code from the encoder."""
    @torch.no_grad()
    def draw():
        index = torch.randint(len(images), (BATCH,), generator=generator, device=images.device)
        posterior = vae.encode(as_float(images[index]))
        z = posterior.gaussian.rsample(generator) if posterior.gaussian else None
        c = one_hot_sample(posterior.categorical.probs, generator) if posterior.categorical else None
        return mean_image(vae.decode(z, c)), z[:, targets] if targets else None, c if categorical else None
    return draw


def prior_draw(vae: VAE, device: torch.device, targets: list[int], categorical: bool,
               generator: torch.Generator) -> Draw:
    """Batches (x~, z^, c^) with the code drawn from the prior p(c) p(z|c)."""
    @torch.no_grad()
    def draw():
        c = (one_hot_sample(torch.full((BATCH, vae.k), 1 / vae.k, device=device), generator)
             if vae.k else None)
        z = vae.sample_prior_z(c, BATCH, generator) if vae.d else None
        return mean_image(vae.decode(z, c)), z[:, targets] if targets else None, c if categorical else None
    return draw


@torch.no_grad()
def upper_reference(vae: VAE, images: torch.Tensor, spec: MISpec) -> dict[str, float]:
    """E_x KL(q(c^|x) || p(c^)) on `images`, per part, nats; and q(c|x) for the aggregate entropy."""
    sums, probs = {"gaussian": 0.0, "categorical": 0.0}, []
    for batch in images.split(1000):
        posterior = vae.encode(as_float(batch))
        if spec.gaussian:
            sums["gaussian"] += posterior.gaussian.kl_standard_normal()[:, spec.gaussian].sum().item()
        if posterior.categorical:
            sums["categorical"] += posterior.categorical.kl_uniform().sum().item()
            probs.append(posterior.categorical.probs)
    parts = (["gaussian"] if spec.gaussian else []) + (["categorical"] if spec.categorical else [])
    out = {f"kl_upper_reference_{p}": sums[p] / len(images) for p in parts}
    return out | ({"aggregate_probs": torch.cat(probs)} if probs else {})


def frozen_mi(vae: VAE, mi: MISpec, images: ImageData, new_q: Callable[[], QNetwork], steps: int,
              eval_batches: int = EVAL_BATCHES, seed: int = 0) -> dict[str, dict[str, float]]:
    """Thesis eq. 4.8: the MI bound of a fresh Q fitted to the frozen VAE, on the encoder and the prior path.

    vae: the model; run in eval mode and left as it was found (weights, BatchNorm statistics, modes).
    mi: the targets (mi.gaussian dims, mi.categorical) and how H(c) is taken on the encoder path.
    images: training images fit Q on the encoder path; test images score it and give the upper reference.
    new_q: makes an untrained Q on the right device (the caller's seed).
    steps: Adam steps of batch BATCH to fit each fresh Q; eval_batches: held-out batches that score it.
    seed: of every draw.
    Returns {"encoder": ..., "prior": ...} (each `mi_bound`'s results) and "upper_reference"
    (E_x KL(q(c^|x) || p(c^)), see vmistudy.evaluate), in nats.
    """
    with inference(vae, grad=True):  # grad: the fresh Q is fitted inside; the VAE's draws take none
        return _frozen_mi(vae, mi, images, new_q, steps, eval_batches, seed)


def _frozen_mi(vae: VAE, mi: MISpec, images: ImageData, new_q: Callable[[], QNetwork], steps: int,
               eval_batches: int, seed: int) -> dict[str, dict[str, float]]:
    device = images.train_images.device
    reference = upper_reference(vae, images.test_images, mi)
    aggregate = reference.pop("aggregate_probs", None)

    # the encoder path's c has the aggregated posterior as its marginal; the prior path's, the uniform prior
    prior_h, encoder_h = ({part: float(h) for part, h in
                           target_entropy(mi.model_copy(update={"entropy": how}), aggregate).items()}
                          for how in ("prior", "aggregate"))

    results = {}
    for path, entropies in (("encoder", encoder_h), ("prior", prior_h)):
        g = torch.Generator(device).manual_seed(seed)
        if path == "encoder":
            fit_on = encoder_draw(vae, images.train_images, mi.gaussian, mi.categorical, g)
            score_on = encoder_draw(vae, images.test_images, mi.gaussian, mi.categorical, g)
        else:
            fit_on = score_on = prior_draw(vae, device, mi.gaussian, mi.categorical, g)
        q = new_q()
        fit_q(q, fit_on, steps)
        results[path] = mi_bound(q, score_on, entropies, eval_batches)
    results["upper_reference"] = reference
    return results
