"""The two latent parts: a diagonal Gaussian z and a Gumbel-softmax relaxed categorical c.

Small distribution objects in the manner of `torch.distributions`, but with explicit
generators (so every random draw is reproducible) and KLs to the priors: those of the thesis,
p(z) = N(0, I) and p(c) = uniform over K classes, and the mixture p(z|c) = N(mu_c, I).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian:
    """N(mean, diag(exp(log_var)))."""

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor):
        self.mean, self.log_var = mean, log_var

    @classmethod
    def from_params(cls, params: torch.Tensor) -> DiagonalGaussian:
        """The last dim holds [mean, log_var] halves, as network heads emit them."""
        mean, log_var = params.chunk(2, dim=-1)
        return cls(mean, log_var)

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + noise * (0.5 * self.log_var).exp()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per dimension, nats."""
        return -0.5 * (LOG_2PI + self.log_var + (value - self.mean) ** 2 * (-self.log_var).exp())

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, 1)) per dimension, nats."""
        return 0.5 * (self.mean ** 2 + self.log_var.exp() - 1 - self.log_var)

    def kl_normal_mixture(self, means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """E_{c ~ weights} KL(q || N(means[c], 1)) per dimension, nats; means [K, d], weights [B, K]."""
        spread = torch.einsum("bk,bkd->bd", weights, (self.mean.unsqueeze(1) - means) ** 2)
        return 0.5 * (spread + self.log_var.exp() - 1 - self.log_var)


def standard_normal_entropy(dims: int) -> float:
    """H(N(0, I_dims)) = dims/2 log(2 pi e), nats."""
    return 0.5 * dims * (LOG_2PI + 1)


class GumbelSoftmax:
    """Cat(softmax(logits)) with the Gumbel-softmax relaxation of eq. 4.20."""

    def __init__(self, logits: torch.Tensor):
        self.log_probs = F.log_softmax(logits, dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    @property
    def categories(self) -> int:
        return self.log_probs.shape[-1]

    def rsample(self, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """softmax((log pi + g) / tau), g ~ Gumbel(0, 1): a point on the simplex, differentiable in pi."""
        # -log E with E ~ Exp(1) is a Gumbel(0, 1) draw
        gumbel = -torch.empty_like(self.log_probs).exponential_(generator=generator).log()
        return F.softmax((self.log_probs + gumbel) / temperature, dim=-1)

    def kl_uniform(self) -> torch.Tensor:
        """KL(q || Uniform(K)) = sum_k q_k (log q_k + log K), per sample, nats."""
        return (self.probs * (self.log_probs + math.log(self.categories))).sum(-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of categorical distributions along the last dim, nats."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)
