"""The objective of thesis eq. 4.11/4.22: ELBO + lambda_mi * MI, all terms per sample in nats.

ELBO (4.19) = E_q[log p(x|z,c)] - KL(q(z|x)||p(z)) - KL(q(c|x)||p(c)); under the mixture prior the
z term is E_q(c|x) KL(q(z|x)||p(z|c)).
MI   (4.9)  = E[log Q(c^|x~)] + H(c^), c^ the chosen code parts, x~ the decoder mean; H(c^) is that of the
aggregate posterior q(c^) = E_x q(c^|x), taken from below, or the thesis' prior constants (`mi.entropy`).
Beyond the thesis, `mi.invariance` adds weight * I(c; c') to MI (the code of x against that of a transformed x),
and `mi.warmup_steps` ramps lambda_mi up from 0 over the first steps (`mi_warmup`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .config import CapacitySpec, MISpec, ModelSpec, TemperatureSpec, TrainSpec
from .latents import entropy, mixture_entropy_lower_bound, standard_normal_entropy
from .networks import Forward, Posterior


def temperature(step: int, spec: TemperatureSpec) -> float:
    """tau = max(min, start * exp(-rate * step)), recomputed every `spec.every` steps and held in between."""
    held = step - step % spec.every
    return max(spec.min, spec.start * math.exp(-spec.rate * held))


def mi_warmup(step: int, spec: MISpec) -> float:
    """The share of lambda_mi the MI term gets at this step: rising linearly over mi.warmup_steps, so that the
    code first forms from the ELBO alone before the MI term shapes it."""
    return min(1.0, step / spec.warmup_steps) if spec.warmup_steps else 1.0


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """-log p(x|z,c) summed over pixels, per sample."""
    if spec.likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        std = spec.likelihood_std
        nll = 0.5 * ((x - torch.sigmoid(logits)) / std) ** 2 + math.log(std) + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(1)


@dataclass
class ELBOTerms:
    """Per-sample terms; elbo = -(recon + kl_continuous + kl_categorical)."""
    recon: torch.Tensor
    kl_per_dim: torch.Tensor | None
    kl_categorical: torch.Tensor

    @property
    def kl_continuous(self) -> torch.Tensor:
        return self.kl_per_dim.sum(-1) if self.kl_per_dim is not None else torch.zeros_like(self.recon)

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.recon + self.kl_continuous + self.kl_categorical)

    def loss(self, spec: TrainSpec, step: int) -> torch.Tensor:
        """The VAE's loss without the MI term, batch mean: the negative beta-ELBO (beta = 1: plain ELBO),
        with each latent part's KL under a capacity schedule where one is set."""
        return (self.recon.mean() + kl_penalty(self.kl_continuous, spec.beta, spec.capacity.gaussian, step)
                + kl_penalty(self.kl_categorical, spec.beta, spec.capacity.categorical, step))


def capacity(step: int, spec: CapacitySpec) -> float:
    """C(t) in nats: rises linearly from 0 to spec.cap over spec.steps steps, then stays."""
    return spec.cap * min(1.0, step / spec.steps)


def kl_penalty(kl: torch.Tensor, beta: float, spec: CapacitySpec, step: int) -> torch.Tensor:
    """beta * KL (the thesis), or JointVAE's gamma * |KL - C(t)| on the batch mean when spec.cap is set:
    the part may carry C(t) nats and no more, so the other parts must explain the rest."""
    if spec.cap is None:
        return beta * kl.mean()
    return spec.gamma * (kl.mean() - capacity(step, spec)).abs()


def elbo_terms(out: Forward, x: torch.Tensor, spec: ModelSpec) -> ELBOTerms:
    gaussian, categorical = out.posterior.gaussian, out.posterior.categorical
    recon = reconstruction_nll(out.logits, x, spec)
    if gaussian is None:
        kl_per_dim = None
    elif out.prior is None:
        kl_per_dim = gaussian.kl_standard_normal()
    else:  # KL(q(z,c|x) || p(z|c) p(c)) = E_q(c|x) KL(q(z|x) || p(z|c)) + KL(q(c|x) || p(c))
        kl_per_dim = gaussian.kl_normal_mixture(out.prior, categorical.probs)
    return ELBOTerms(recon, kl_per_dim, categorical.kl_uniform() if categorical else torch.zeros_like(recon))


def mi_targets(out: Forward, spec: MISpec) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """c^: the chosen Gaussian dims of the sampled z, and/or the relaxed categorical sample c~."""
    z_hat = out.z[:, spec.gaussian] if spec.gaussian else None
    c_hat = out.c if spec.categorical else None
    return z_hat, c_hat


def target_entropy(spec: MISpec, posterior: Posterior) -> dict[str, torch.Tensor | float]:
    """H(c^) per target part, nats; `posterior` is q(z|x), q(c|x) of the batch (or split) at hand.

    `entropy: aggregate` (default): the entropy of the aggregate posterior q(c^) = mean_x q(c^|x), the marginal
    that the bound (4.3) asks for, with its gradient. Categorical: exact, and its gradient keeps all K
    categories in use. Gaussian dims: q(z^) is a mixture of the batch's Gaussians, whose entropy is taken
    from below (`mixture_entropy_lower_bound`), so the bound stays a bound and shrinking z^ gains nothing:
    log Q loses what H gains.
    `entropy: prior`, the thesis' constants: log K, under which maximizing E log Q alone is solved by
    collapsing c to one class, and |S|/2 log(2 pi e), exact only if q(z^) = N(0, I), under which shrinking
    z^ by a raises the "bound" by |S| log(1/a) without bound (docs/RESULTS.md, the Gaussian experiment).
    """
    aggregate = spec.entropy == "aggregate"
    parts: dict[str, torch.Tensor | float] = {}
    if spec.gaussian:
        parts["gaussian"] = (mixture_entropy_lower_bound(posterior.gaussian.dims(spec.gaussian)) if aggregate
                             else standard_normal_entropy(len(spec.gaussian)))
    if spec.categorical:
        probs = posterior.categorical.probs
        parts["categorical"] = entropy(probs.mean(0)) if aggregate else math.log(probs.shape[-1])
    return parts


def mi_lower_bound(log_q: dict[str, torch.Tensor], entropies: dict[str, torch.Tensor | float]) -> torch.Tensor:
    """E log Q(c^|x~) + H(c^), summed over target parts: a batch scalar in nats."""
    return sum(log_q[part].mean() + entropies[part] for part in log_q)


def invariance_mi(probs: torch.Tensor, probs_copy: torch.Tensor) -> torch.Tensor:
    """I(c; c') in nats, c the code of an image and c' that of its transformed copy, over the images at hand
    (IIC's objective): of the joint P(c, c') = mean_x q(c|x) q(c'|x'), symmetrized since which of the two is
    the copy is arbitrary. It is log K at most, reached when the code ignores the transformation and uses all
    K categories equally: so it asks both for invariance and for no empty class."""
    joint = probs.T @ probs_copy / len(probs)
    joint = (joint + joint.T) / 2
    return 2 * entropy(joint.sum(1)) - entropy(joint.flatten())


PROBE = 1.0  # the length of VAT's probe; its paper's 1e-6 moves float32 logits by less than their rounding


def virtual_adversarial(x: torch.Tensor, log_p: torch.Tensor, log_q: Callable[[torch.Tensor], torch.Tensor],
                        epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """The perturbation r, ||r|| = epsilon per image, that most raises KL(p(c|x) || q(c|x + r)) to second
    order: one power iteration from a random direction (VAT, as IMSAT uses it). `log_p` is the code of x
    (detached), `log_q` the encoder's log q(c|.)."""
    def unit(d: torch.Tensor) -> torch.Tensor:
        return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))

    probe = (PROBE * unit(torch.randn(x.shape, generator=generator, device=x.device))).requires_grad_()
    kl = (log_p.exp() * (log_p - log_q(x + probe))).sum(-1).mean()
    direction, = torch.autograd.grad(kl, probe)
    return epsilon * unit(direction)
