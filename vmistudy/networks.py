"""Encoder, decoder and Q networks on two backbones.

`mlp`: two hidden layers (fast on CPU). `conv`: the reference code's architecture, two stride-2
4x4 convolutions (64, 128 channels) with BatchNorm and LeakyReLU, then two linear layers of 512;
the decoder mirrors it. The decoder returns logits; `mean_image` maps them to the decoder mean
that Q reads (sigmoid for both likelihoods, whose means live in [0, 1]).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelSpec
from .latents import DiagonalGaussian, GumbelSoftmax, gaussian_noise, gumbel_noise

Shape = tuple[int, int, int]
Noise = tuple[torch.Tensor | None, torch.Tensor | None]  # eps for z, Gumbel g for c~ (None: no such part)
CONV_FEATURES = 512


def encoder_body(backbone: str, shape: Shape, hidden: int) -> tuple[nn.Module, int]:
    """Image [B, C, H, W] -> features [B, F]; returns the module and F."""
    if backbone == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.ReLU(),
                             nn.Linear(hidden, hidden), nn.ReLU()), hidden
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 64, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.1), nn.Flatten(),
        nn.Linear(128 * (h // 4) * (w // 4), CONV_FEATURES), nn.BatchNorm1d(CONV_FEATURES), nn.LeakyReLU(0.1),
        nn.Linear(CONV_FEATURES, CONV_FEATURES), nn.BatchNorm1d(CONV_FEATURES), nn.LeakyReLU(0.1),
    ), CONV_FEATURES


def decoder_net(backbone: str, latent: int, shape: Shape, hidden: int) -> nn.Module:
    """Latent code [B, latent] -> pixel logits [B, C, H, W]."""
    c, h, w = shape
    if backbone == "mlp":
        return nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, math.prod(shape)), nn.Unflatten(1, shape))
    return nn.Sequential(
        nn.Linear(latent, CONV_FEATURES), nn.BatchNorm1d(CONV_FEATURES), nn.ReLU(),
        nn.Linear(CONV_FEATURES, 128 * (h // 4) * (w // 4)), nn.BatchNorm1d(128 * (h // 4) * (w // 4)), nn.ReLU(),
        nn.Unflatten(1, (128, h // 4, w // 4)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, c, 4, 2, 1),
    )


@dataclass
class Posterior:
    """q(z|x) and q(c|x); either may be absent."""
    gaussian: DiagonalGaussian | None
    categorical: GumbelSoftmax | None

    @classmethod
    def cat(cls, batches: list[Posterior]) -> Posterior:
        """The posteriors of several batches as one, e.g. of a whole split."""
        first = batches[0]
        gaussian = (DiagonalGaussian(torch.cat([b.gaussian.mean for b in batches]),
                                     torch.cat([b.gaussian.log_var for b in batches])) if first.gaussian else None)
        categorical = (GumbelSoftmax(torch.cat([b.categorical.log_probs for b in batches]))
                       if first.categorical else None)
        return cls(gaussian, categorical)


@dataclass
class Forward:
    """One VAE pass: the posterior, the sampled code (z, c~) and the decoder's logits."""
    posterior: Posterior
    z: torch.Tensor | None
    c: torch.Tensor | None
    logits: torch.Tensor
    prior: DiagonalGaussian | None = None  # p(z|c) of the mixture prior, one component per c; None: N(0, I)


class VAE(nn.Module):
    def __init__(self, spec: ModelSpec, shape: Shape):
        super().__init__()
        self.d, self.k = spec.gaussian_dims, spec.categories or 0
        self.body, features = encoder_body(spec.backbone, shape, spec.hidden)
        self.head = nn.Linear(features, 2 * self.d + self.k)
        self.decoder = decoder_net(spec.backbone, self.d + self.k, shape, spec.hidden)
        # created last, so that the layers above get the same initial weights under either prior
        self.prior_means = (nn.Parameter(spec.prior_spread * torch.randn(self.k, self.d)) if spec.prior == "mixture"
                            else None)
        self.prior_log_var = (nn.Parameter(torch.zeros(self.k, self.d)) if spec.prior_variance == "learned"
                              else None)

    def prior_components(self) -> DiagonalGaussian | None:
        """p(z|c) for each c [K, d]: N(mu_c, I), or N(mu_c, diag sigma_c^2) with model.prior_variance learned;
        None under the standard prior."""
        if self.prior_means is None:
            return None
        log_var = torch.zeros_like(self.prior_means) if self.prior_log_var is None else self.prior_log_var
        return DiagonalGaussian(self.prior_means, log_var)

    def encode(self, x: torch.Tensor) -> Posterior:
        params = self.head(self.body(x))
        gaussian, logits = params.split([2 * self.d, self.k], dim=-1)
        return Posterior(DiagonalGaussian.from_params(gaussian) if self.d else None,
                         GumbelSoftmax(logits) if self.k else None)

    def decode(self, z: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(torch.cat([t for t in (z, c) if t is not None], dim=-1))

    def forward(self, x: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                noise: Noise | None = None) -> Forward:
        """Encode, sample (z, c~) and decode; the draws are made on `generator`, or given as `noise`."""
        posterior = self.encode(x)
        eps, gumbel = noise if noise is not None else (None, None)
        z = posterior.gaussian.rsample(generator, eps) if posterior.gaussian else None
        c = posterior.categorical.rsample(temperature, generator, gumbel) if posterior.categorical else None
        return Forward(posterior, z, c, self.decode(z, c), self.prior_components())

    def noise(self, n: int, generator: torch.Generator | None = None) -> Noise:
        """The draws `forward` makes on n images, in its order and shapes: what a vectorized caller, which
        cannot draw on one generator per model inside torch.func.vmap, draws ahead and passes as `noise`."""
        like = self.head.weight
        return (gaussian_noise((n, self.d), generator, like.device, like.dtype) if self.d else None,
                gumbel_noise((n, self.k), generator, like.device, like.dtype) if self.k else None)

    def sample_prior_z(self, c: torch.Tensor | None, n: int, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """z ~ p(z|c): N(0, I), or the mixture prior's component c (c one-hot [n, K]), on `generator`'s device."""
        where = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.d, generator=generator, device=where).to(self.head.weight.device)
        prior = self.prior_components()
        return z if prior is None else c @ prior.mean + z * (c @ (0.5 * prior.log_var).exp())


@contextlib.contextmanager
def inference(*modules: nn.Module, grad: bool = False):
    """Eval mode inside (BatchNorm on its running statistics) and, unless `grad`, no autograd; every
    submodule's own train/eval flag is restored after. The one way the project switches a model to
    inference and back (`grad=True` where a fresh Q is fitted to a frozen VAE)."""
    modes = [(module, module.training) for root in modules for module in root.modules()]
    for root in modules:
        root.eval()
    try:
        with contextlib.nullcontext() if grad else torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def mean_image(logits: torch.Tensor) -> torch.Tensor:
    """The decoder mean x~ that Q reads."""
    return torch.sigmoid(logits)


class QNetwork(nn.Module):
    """Q(c^|x~): a diagonal Gaussian over the chosen Gaussian dims and/or logits over K categories."""

    def __init__(self, backbone: str, shape: Shape, hidden: int, gaussian_targets: int, categories: int):
        super().__init__()
        self.g, self.k = gaussian_targets, categories
        self.body, features = encoder_body(backbone, shape, hidden)
        self.head = nn.Linear(features, 2 * self.g + self.k)

    def forward(self, x: torch.Tensor, z_hat: torch.Tensor | None, c_hat: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        """`log_prob`, for callers that go through the module call (torch.func.functional_call)."""
        return self.log_prob(x, z_hat, c_hat)

    def log_prob(self, x: torch.Tensor, z_hat: torch.Tensor | None, c_hat: torch.Tensor | None
                 ) -> dict[str, torch.Tensor]:
        """log Q(c^|x~) per sample, one entry per target part ('gaussian', 'categorical').

        A relaxed c~ on the simplex is scored as a soft one-hot: sum_k c~_k log Q(k|x~).
        """
        gaussian, logits = self.head(self.body(x)).split([2 * self.g, self.k], dim=-1)
        parts = {}
        if self.g:
            parts["gaussian"] = DiagonalGaussian.from_params(gaussian).log_prob(z_hat).sum(-1)
        if self.k:
            parts["categorical"] = (c_hat * torch.log_softmax(logits, dim=-1)).sum(-1)
        return parts
