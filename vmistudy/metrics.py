"""Scores of a categorical code against labels, and the MI bound of a frozen model (thesis eq. 4.8)."""
from __future__ import annotations

import itertools
import math
import statistics
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .config import MISpec
from .data import ImageData, as_float
from .latents import DiagonalGaussian
from .networks import VAE, Posterior, QNetwork, inference, mean_image
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


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(A; B) in nats between two labellings of the same items, from their joint frequencies."""
    joint = contingency(a, b) / len(a)
    outer = np.outer(joint.sum(1), joint.sum(0))
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())


def _entropy(values: np.ndarray) -> float:
    p = np.bincount(values) / len(values)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalized mutual information, I(L; C) / ((H(L) + H(C)) / 2), as scikit-learn's default."""
    h = (_entropy(labels) + _entropy(clusters)) / 2
    return mutual_information(labels, clusters) / h if h > 0 else 1.0


def seed_agreement(codes: list[np.ndarray]) -> list[float]:
    """Each code's mean MI (nats) with the others: for one configuration's seeds, the argmax q(c|x) of each on the
    same images, how far they agree on what the categories are, with no labels read. Clustering stability as a
    model-selection rule (Ben-Hur et al. 2002, Lange et al. 2004): seeds that find the classes agree, while a
    split by style falls differently per seed. In nats, not normalized: a code that uses few categories agrees
    little (a collapsed one, 0), as in IIC's I(c; c'). log K at most; the mean over codes is the mean over pairs."""
    pairs = {pair: mutual_information(codes[pair[0]], codes[pair[1]])
             for pair in itertools.combinations(range(len(codes)), 2)}
    return [statistics.fmean(v for pair, v in pairs.items() if k in pair) for k in range(len(codes))]


def matched(code: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`code` relabelled by the one-to-one matching of its categories to the reference's that agrees most."""
    counts = contingency(code, reference)
    n = max(counts.shape)  # square, so that a category either code lacks is matched too, to a name no other takes
    _, names = linear_sum_assignment(np.pad(counts, ((0, n - counts.shape[0]), (0, n - counts.shape[1]))),
                                     maximize=True)
    return names[code]


def consensus(codes: list[np.ndarray], rounds: int = 10) -> np.ndarray:
    """One code from several seeds' codes of the same images, no labels read: each seed's categories matched to a
    reference's, then a vote per image, the vote the next reference, until it stops changing (voting-based cluster
    ensembles, Dudoit and Fridlyand 2003). Each seed votes with its agreement with the others (seed_agreement), and
    the first reference is the seed that agrees most: a seed that split the digits by style counts for least, and
    the result does not depend on the names the seeds gave their categories."""
    weights = seed_agreement(codes)
    reference = codes[int(np.argmax(weights))]
    images, categories = np.arange(len(reference)), max(c.max() for c in codes) + 1
    for _ in range(rounds):
        votes = np.zeros((len(images), categories))
        for code, weight in zip(codes, weights):
            np.add.at(votes, (images, matched(code, reference)), weight)
        vote = votes.argmax(1)
        if np.array_equal(vote, reference):
            break
        reference = vote
    return reference


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, restarts: int = 10, iterations: int = 100
           ) -> torch.Tensor:
    """Centres [k, d] of the best (least summed squared distance) of `restarts` runs of Lloyd's algorithm from
    k-means++ starts drawn on `generator` (CPU tensors): the same points and generator give the same centres."""
    best, least = points[:k], math.inf
    for _ in range(restarts):
        centres = _kmeans_plus_plus(points, k, generator)
        for _ in range(iterations):
            nearest = torch.cdist(points, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, nearest, points)
            counts = torch.bincount(nearest, minlength=k).unsqueeze(1)
            moved = torch.where(counts > 0, sums / counts.clamp(min=1), centres)  # an empty cluster keeps its centre
            if torch.equal(moved, centres):
                break
            centres = moved
        inertia = torch.cdist(points, centres).min(1).values.square().sum().item()
        if inertia < least:
            best, least = centres, inertia
    return best


def cluster_log_var(z: DiagonalGaussian, clusters: torch.Tensor, k: int) -> torch.Tensor:
    """Log-variance per dim [k, d] of each cluster's Gaussians taken as one (the variance of their means plus
    their mean variance: a Gaussian mixture's M-step under hard assignments); 0 for a cluster of under two."""
    log_var = torch.zeros(k, z.mean.shape[-1])
    for c in range(k):
        members = clusters == c
        if members.sum() > 1:
            log_var[c] = 2 * DiagonalGaussian(z.mean[members], z.log_var[members]).mixture_moments()[1].log()
    return log_var


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k starting centres, each next one a point drawn with odds proportional to its squared distance to the
    nearest centre chosen so far (Arthur and Vassilvitskii 2007)."""
    chosen = torch.randint(len(points), (1,), generator=generator)
    for _ in range(k - 1):
        gap = torch.cdist(points, points[chosen]).min(1).values.square()
        chosen = torch.cat([chosen, torch.multinomial(gap / gap.sum(), 1, generator=generator)])
    return points[chosen]


def cluster_scores(labels: torch.Tensor, clusters: torch.Tensor) -> dict[str, float]:
    labels, clusters = labels.cpu().numpy(), clusters.cpu().numpy()
    return {"accuracy_hungarian": accuracy_hungarian(labels, clusters),
            "accuracy_majority": accuracy_majority(labels, clusters),
            "nmi": nmi(labels, clusters)}


# A draw returns one batch (x~, z^, c^) of samples from the joint whose MI is estimated.
Draw = Callable[[], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
Encode = Callable[[torch.Tensor], Posterior]  # images as stored -> q(z|x), q(c|x)
Decode = Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]  # (z, c) -> x~, the decoder mean


def fit_q(q: QNetwork, draw: Draw, steps: int, lr: float = 1e-3) -> None:
    """Maximize E log Q(c^|x~) over Q's parameters on fresh draws.

    The learning rate decays to 0 along a cosine, so that Q ends near an optimum rather than where the last
    minibatches' noise left it: at a constant rate, three fits of one MNIST model's Gaussian targets ended
    0.15 nats apart and 0.3 nats below a decayed fit (docs/RESULTS.md, the Gaussian experiment).
    """
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    q.train()
    for _ in range(steps):
        x, z_hat, c_hat = draw()
        loss = -sum(q.log_prob(x, z_hat, c_hat).values()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()


def mi_bound(q: QNetwork, draw: Draw, entropies: dict[str, float], batches: int) -> dict[str, float]:
    """The bound E log Q + H on `batches` held-out draws, per part and in total, with its Monte Carlo error.

    Returns log_q_<part>, entropy_<part>, mi_lower_bound_<part>, mi_lower_bound and mi_standard_error (nats).
    The standard error is that of the sampled mean of log Q: it says nothing of how far Q is from the true
    posterior of c^ (the bound's gap, which only a better-fitted Q narrows), nor of a bounded entropy's gap.
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


def fresh_q_bound(new_q: Callable[[], QNetwork], fit_on: Draw, score_on: Draw, entropies: dict[str, float],
                  steps: int, eval_batches: int) -> dict[str, float]:
    """Thesis eq. 4.8 on any joint: a fresh Q fitted for `steps` on `fit_on`, scored on `score_on`."""
    q = new_q()
    fit_q(q, fit_on, steps)
    return mi_bound(q, score_on, entropies, eval_batches)


def one_hot_sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A hard draw c ~ Cat(probs) as a one-hot vector."""
    index = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)


def split_posterior(encode: Encode, images: torch.Tensor) -> Posterior:
    """q(z|x), q(c|x) of every image in `images`: the components of the aggregate posterior over the split."""
    with torch.no_grad():
        return Posterior.cat([encode(batch) for batch in images.split(1000)])


def encoder_draw(encode: Encode, decode: Decode, images: torch.Tensor, mi: MISpec,
                 generator: torch.Generator) -> Draw:
    """Batches (x~, z^, c^) with x from `images`, the code drawn from the encoder (c hard) and x~ decoded."""
    @torch.no_grad()
    def draw():
        index = torch.randint(len(images), (BATCH,), generator=generator, device=images.device)
        posterior = encode(images[index])
        z = posterior.gaussian.rsample(generator) if posterior.gaussian else None
        c = one_hot_sample(posterior.categorical.probs, generator) if posterior.categorical else None
        return decode(z, c), z[:, mi.gaussian] if mi.gaussian else None, c if mi.categorical else None
    return draw


def encoder_path(encode: Encode, decode: Decode, fit_images: torch.Tensor, score_images: torch.Tensor,
                 mi: MISpec, new_q: Callable[[], QNetwork], steps: int, eval_batches: int = EVAL_BATCHES,
                 seed: int = 0) -> dict[str, float]:
    """The thesis' own bound on I(c^; x~) for any encoder and decoder: x from the data, c^ ~ q(c^|x), x~ decoded.

    Q is fitted on `fit_images` and scored on `score_images`, whose aggregate posterior q(c^) is the marginal
    of the scored c^; H(c^) is its entropy (exact for c, from below for Gaussian dims), so the result stays
    below the true MI whatever the scale or shape of q(z^). Q reads z^ in units of its own spread (an affine
    map leaves the MI as it is), so a model that rescaled z^ meets the same fresh Q: log_q_gaussian and
    entropy_gaussian are in those units, their sum in any.
    """
    g = torch.Generator(score_images.device).manual_seed(seed)
    posterior = split_posterior(encode, score_images)
    fit_on, score_on = (encoder_draw(encode, decode, images, mi, g) for images in (fit_images, score_images))
    if mi.gaussian:
        centre, scale = posterior.gaussian.mixture_moments()
        posterior = Posterior(posterior.gaussian.standardized(centre, scale), posterior.categorical)
        fit_on, score_on = (_in_units(draw, centre[mi.gaussian], scale[mi.gaussian]) for draw in (fit_on, score_on))
    aggregate = mi.model_copy(update={"entropy": "aggregate"})
    entropies = {part: float(h) for part, h in target_entropy(aggregate, posterior).items()}
    return fresh_q_bound(new_q, fit_on, score_on, entropies, steps, eval_batches)


def _in_units(draw: Draw, centre: torch.Tensor, scale: torch.Tensor) -> Draw:
    def standardized():
        x, z_hat, c_hat = draw()
        return x, (z_hat - centre) / scale, c_hat
    return standardized


def prior_draw(vae: VAE, device: torch.device, mi: MISpec, generator: torch.Generator) -> Draw:
    """Batches (x~, z^, c^) with the code drawn from the prior p(c) p(z|c)."""
    @torch.no_grad()
    def draw():
        c = (one_hot_sample(torch.full((BATCH, vae.k), 1 / vae.k, device=device), generator)
             if vae.k else None)
        z = vae.sample_prior_z(c, BATCH, generator) if vae.d else None
        return mean_image(vae.decode(z, c)), z[:, mi.gaussian] if mi.gaussian else None, c if mi.categorical else None
    return draw


def upper_reference(posterior: Posterior, mi: MISpec) -> dict[str, float]:
    """E_x KL(q(c^|x) || p(c^)) over a split's posteriors, per part, nats."""
    out = {}
    if mi.gaussian:
        kl = posterior.gaussian.dims(mi.gaussian).kl_standard_normal()
        out["kl_upper_reference_gaussian"] = kl.sum(-1).mean().item()
    if mi.categorical:
        out["kl_upper_reference_categorical"] = posterior.categorical.kl_uniform().mean().item()
    return out


def frozen_mi(vae: VAE, mi: MISpec, images: ImageData, new_q: Callable[[], QNetwork], steps: int,
              eval_batches: int = EVAL_BATCHES, seed: int = 0) -> dict[str, dict[str, float]]:
    """Thesis eq. 4.8: the MI bound of a fresh Q fitted to the frozen VAE, on the encoder and the prior path.

    vae: the model; run in eval mode and left as it was found (weights, BatchNorm statistics, modes).
    mi: the targets (mi.gaussian dims, mi.categorical).
    images: training images fit Q on the encoder path; test images score it and give the upper reference.
    new_q: makes an untrained Q on the right device (the caller's seed).
    steps: Adam steps of batch BATCH to fit each fresh Q; eval_batches: held-out batches that score it.
    seed: of every draw.
    Returns {"encoder": ..., "prior": ...} (each `mi_bound`'s results) and "upper_reference"
    (E_x KL(q(c^|x) || p(c^)), see vmistudy.evaluate), in nats.
    """
    with inference(vae, grad=True):  # grad: the fresh Q is fitted inside; the VAE's draws take none
        def decode(z, c):
            return mean_image(vae.decode(z, c))

        def encode(x):
            return vae.encode(as_float(x))

        device = images.train_images.device
        test_posterior = split_posterior(encode, images.test_images)
        prior = prior_draw(vae, device, mi, torch.Generator(device).manual_seed(seed))
        # z ~ N(0, I), c ~ Uniform(K): here the thesis' constants are the exact entropies
        exact = target_entropy(mi.model_copy(update={"entropy": "prior"}), test_posterior)
        return {"encoder": encoder_path(encode, decode, images.train_images, images.test_images, mi, new_q,
                                        steps, eval_batches, seed),
                "prior": fresh_q_bound(new_q, prior, prior, exact, steps, eval_batches),
                "upper_reference": upper_reference(test_posterior, mi)}
