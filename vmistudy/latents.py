"""The two latent parts: a diagonal Gaussian z and a Gumbel-softmax relaxed categorical c.

Small distribution objects in the manner of `torch.distributions`, but with explicit
generators (so every random draw is reproducible) and KLs to the priors: those of the thesis,
p(z) = N(0, I) and p(c) = uniform over K classes, and the mixture p(z|c) = N(mu_c, diag sigma_c^2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def gaussian_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
                   device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """eps ~ N(0, I), the draw `DiagonalGaussian.rsample` scales and shifts."""
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """g ~ Gumbel(0, 1), the draw `GumbelSoftmax.rsample` adds to log pi: -log E with E ~ Exp(1)."""
    return -torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator).log()


class DiagonalGaussian:
    """N(mean, diag(exp(log_var)))."""

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor):
        self.mean, self.log_var = mean, log_var

    @classmethod
    def from_params(cls, params: torch.Tensor) -> DiagonalGaussian:
        """The last dim holds [mean, log_var] halves, as network heads emit them."""
        mean, log_var = params.chunk(2, dim=-1)
        return cls(mean, log_var)

    def rsample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """mean + std * eps; eps drawn on `generator`, or given (`gaussian_noise` drawn ahead, outside a vmap)."""
        if noise is None:
            noise = gaussian_noise(self.mean.shape, generator, self.mean.device, self.mean.dtype)
        return self.mean + noise * (0.5 * self.log_var).exp()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per dimension, nats."""
        return -0.5 * (LOG_2PI + self.log_var + (value - self.mean) ** 2 * (-self.log_var).exp())

    def dims(self, index: list[int]) -> DiagonalGaussian:
        """The marginal over the listed dims (last axis)."""
        return DiagonalGaussian(self.mean[..., index], self.log_var[..., index])

    def mixture_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation per dim of the equal-weight mixture over the first axis:
        var = Var(mean) + E var."""
        return self.mean.mean(0), (self.mean.var(0, correction=0) + self.log_var.exp().mean(0)).sqrt()

    def standardized(self, centre: torch.Tensor, scale: torch.Tensor) -> DiagonalGaussian:
        """The law of (z - centre) / scale."""
        return DiagonalGaussian((self.mean - centre) / scale, self.log_var - 2 * scale.log())

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, 1)) per dimension, nats."""
        return 0.5 * (self.mean ** 2 + self.log_var.exp() - 1 - self.log_var)

    def kl_normal_mixture(self, components: DiagonalGaussian, weights: torch.Tensor) -> torch.Tensor:
        """E_{c ~ weights} KL(q || components[c]) per dimension, nats; components [K, d], weights [B, K]."""
        mean, log_var = self.mean.unsqueeze(1), self.log_var.unsqueeze(1)
        kl = 0.5 * (components.log_var - log_var - 1
                    + (log_var.exp() + (mean - components.mean) ** 2) * (-components.log_var).exp())
        return torch.einsum("bk,bkd->bd", weights, kl)


def standard_normal_entropy(dims: int) -> float:
    """H(N(0, I_dims)) = dims/2 log(2 pi e), nats."""
    return 0.5 * dims * (LOG_2PI + 1)


PAIRS_PER_CHUNK = 2 ** 22  # pairwise terms held at once: the estimator's memory, not its result


def mixture_entropy_lower_bound(components: DiagonalGaussian) -> torch.Tensor:
    """A lower bound on the entropy of the equal-weight mixture (1/N) sum_i N(mean_i, diag var_i), nats.

    components: N Gaussians over d dims (mean and log_var [N, d]), e.g. q(z^|x) over a batch or a split, whose
    mixture is the aggregate posterior q(z^). The larger of two pairwise bounds, each proven:
      Bhattacharyya (Kolchinsky & Tracey 2017, Entropy 19(7):361, with Chernoff alpha = 1/2):
        H >= sum_i w_i H(p_i) - sum_i w_i log sum_j w_j exp(-D_B(p_i, p_j)); exact when the components
        coincide or are far apart;
      Jensen (Huber et al. 2008): H = -sum_i w_i E_{p_i} log p >= -sum_i w_i log sum_j w_j N(mu_i; mu_j, S_i + S_j);
        tight when the components are narrow beside their spread, where the first loses 1/2 log(4/e) per dim.
    Both move by exactly d log|a| under z -> a z (the pairwise terms are affine-invariant), as the true
    entropy does, so E log Q(z^|x~) + this bound does not change when z^ is rescaled.
    Averaged over random batches it stays below H(q(z^)) too: entropy is concave and the batches' mixtures
    average to q(z^).
    """
    mean, log_var = components.mean, components.log_var
    n, d = mean.shape
    var, log_det = log_var.exp(), log_var.sum(-1)
    rows = max(1, PAIRS_PER_CHUNK // (n * d))
    bhattacharyya, jensen = [], []
    for start in range(0, n, rows):
        pair = var[start:start + rows, None] + var  # S_i + S_j, [rows, N, d]
        spread = ((mean[start:start + rows, None] - mean) ** 2 / pair).sum(-1)  # Mahalanobis^2 under S_i + S_j
        log_det_pair = pair.log().sum(-1)
        # D_B = 1/8 gap' ((S_i+S_j)/2)^-1 gap + 1/2 log(|(S_i+S_j)/2| / sqrt(|S_i||S_j|))
        distance = (0.25 * spread + 0.5 * (log_det_pair - d * math.log(2))
                    - 0.25 * (log_det[start:start + rows, None] + log_det))
        bhattacharyya.append(torch.logsumexp(-distance, 1))
        jensen.append(torch.logsumexp(-0.5 * (d * LOG_2PI + log_det_pair + spread), 1))
    log_n = math.log(n)
    own = 0.5 * (d * (LOG_2PI + 1) + log_det)
    by_distance = (own - torch.cat(bhattacharyya) + log_n).mean()
    by_overlap = (log_n - torch.cat(jensen)).mean()
    return torch.maximum(by_distance, by_overlap)


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

    def rsample(self, temperature: float, generator: torch.Generator | None = None,
                gumbel: torch.Tensor | None = None) -> torch.Tensor:
        """softmax((log pi + g) / tau), g ~ Gumbel(0, 1): a point on the simplex, differentiable in pi.

        g is drawn on `generator`, or given (`gumbel_noise` drawn ahead, outside a vmap)."""
        if gumbel is None:
            gumbel = gumbel_noise(self.log_probs.shape, generator, self.log_probs.device, self.log_probs.dtype)
        return F.softmax((self.log_probs + gumbel) / temperature, dim=-1)

    def kl_uniform(self) -> torch.Tensor:
        """KL(q || Uniform(K)) = sum_k q_k (log q_k + log K), per sample, nats."""
        return (self.probs * (self.log_probs + math.log(self.categories))).sum(-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of categorical distributions along the last dim, nats."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)
