"""The latent distributions against independent references (Monte Carlo, torch.distributions, direct formulas)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from vmistudy.latents import DiagonalGaussian, GumbelSoftmax, entropy, standard_normal_entropy


def test_kl_standard_normal_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([[0.0, 1.5, -2.0, 0.3]])
    log_var = torch.tensor([[0.0, -1.0, 0.7, -2.5]])
    q = DiagonalGaussian(mean, log_var)
    n = 200_000
    samples = mean + torch.randn(n, 4, generator=g) * (0.5 * log_var).exp()
    # log q - log p per sample and dimension, computed with torch.distributions as the reference
    log_ratio = (Normal(mean, (0.5 * log_var).exp()).log_prob(samples) - Normal(0.0, 1.0).log_prob(samples))
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    kl = q.kl_standard_normal()
    assert kl.shape == (1, 4)
    assert torch.all((kl[0] - mc).abs() <= 4 * se + 1e-6), (kl, mc, se)
    # the zero case: q = p
    assert torch.allclose(DiagonalGaussian(torch.zeros(3), torch.zeros(3)).kl_standard_normal(), torch.zeros(3))


def test_kl_standard_normal_matches_closed_form_of_torch():
    g = torch.Generator().manual_seed(1)
    mean, log_var = torch.randn(50, 6, generator=g) * 2, torch.randn(50, 6, generator=g)
    ours = DiagonalGaussian(mean, log_var).kl_standard_normal()
    ref = torch.distributions.kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(2)
    mean, log_var = torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g)
    value = torch.randn(20, 5, generator=g) * 3
    ours = DiagonalGaussian(mean, log_var).log_prob(value)
    ref = Normal(mean, (0.5 * log_var).exp()).log_prob(value)
    assert ours.shape == (20, 5)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_from_params_splits_mean_then_log_var_and_rsample_has_those_moments():
    params = torch.tensor([[1.0, -2.0, math.log(4.0), math.log(0.25)]])
    q = DiagonalGaussian.from_params(params)
    assert torch.equal(q.mean, torch.tensor([[1.0, -2.0]]))
    assert torch.equal(q.log_var, torch.tensor([[math.log(4.0), math.log(0.25)]]))
    big = DiagonalGaussian(q.mean.expand(100_000, 2), q.log_var.expand(100_000, 2))
    s = big.rsample(torch.Generator().manual_seed(3))
    assert torch.allclose(s.mean(0), torch.tensor([1.0, -2.0]), atol=0.02)
    assert torch.allclose(s.std(0), torch.tensor([2.0, 0.5]), rtol=0.02)
    # reproducible with the same generator seed, different with another
    assert torch.equal(s, big.rsample(torch.Generator().manual_seed(3)))
    assert not torch.equal(s, big.rsample(torch.Generator().manual_seed(4)))


def test_rsample_is_differentiable_in_mean_and_log_var():
    mean = torch.zeros(3, requires_grad=True)
    log_var = torch.zeros(3, requires_grad=True)
    DiagonalGaussian(mean, log_var).rsample(torch.Generator().manual_seed(0)).sum().backward()
    assert torch.equal(mean.grad, torch.ones(3))
    assert log_var.grad is not None and log_var.grad.abs().sum() > 0


@pytest.mark.parametrize("dims", [1, 2, 7, 16])
def test_standard_normal_entropy_matches_torch(dims):
    ref = torch.distributions.MultivariateNormal(torch.zeros(dims), torch.eye(dims)).entropy().item()
    assert standard_normal_entropy(dims) == pytest.approx(ref, rel=1e-6)
    assert standard_normal_entropy(dims) == pytest.approx(dims * Normal(0.0, 1.0).entropy().item(), rel=1e-6)


LOGITS = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0])


def test_gumbel_samples_lie_on_the_simplex():
    q = GumbelSoftmax(LOGITS.expand(1000, 5))
    for tau in (5.0, 1.0, 0.3):
        s = q.rsample(tau, torch.Generator().manual_seed(0))
        assert s.shape == (1000, 5)
        assert torch.all(s >= 0) and torch.all(s <= 1)
        assert torch.allclose(s.sum(-1), torch.ones(1000), atol=1e-5)


def test_gumbel_samples_approach_one_hot_as_temperature_falls():
    q = GumbelSoftmax(LOGITS.expand(4000, 5))
    max_mass = {tau: q.rsample(tau, torch.Generator().manual_seed(1)).max(-1).values.mean().item()
                for tau in (2.0, 0.5, 0.01)}
    assert max_mass[2.0] < max_mass[0.5] < max_mass[0.01]
    assert max_mass[2.0] < 0.8
    assert max_mass[0.01] > 0.99


@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_gumbel_argmax_frequencies_match_softmax(tau):
    n = 40_000
    q = GumbelSoftmax(LOGITS.expand(n, 5))
    s = q.rsample(tau, torch.Generator().manual_seed(2))
    counts = torch.bincount(s.argmax(-1), minlength=5).double()
    expected = n * F.softmax(LOGITS.double(), -1)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # chi-square with 4 degrees of freedom: P(chi2 > 18.5) ~ 0.001
    assert chi2 < 18.5, (counts, expected)
    # and the test has power: frequencies of uniform logits are clearly rejected
    uniform = torch.full((5,), n / 5, dtype=torch.double)
    assert ((counts - uniform) ** 2 / uniform).sum().item() > 1000


def test_gumbel_rsample_is_differentiable_and_seeded():
    logits = LOGITS.clone().requires_grad_(True)
    q = GumbelSoftmax(logits.expand(10, 5))
    s = q.rsample(0.7, torch.Generator().manual_seed(3))
    (s[:, 0]).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert torch.equal(s.detach(), GumbelSoftmax(LOGITS.expand(10, 5)).rsample(0.7, torch.Generator().manual_seed(3)))


def test_gumbel_probs_and_categories():
    q = GumbelSoftmax(torch.tensor([[0.0, math.log(3.0)]]))
    assert q.categories == 2
    assert torch.allclose(q.probs, torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(q.log_probs.exp().sum(-1), torch.ones(1))


def test_kl_uniform_matches_direct_formula():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(30, 7, generator=g) * 3
    p = F.softmax(logits.double(), -1)
    direct = (p * (p.log() - math.log(1 / 7))).sum(-1)
    ours = GumbelSoftmax(logits).kl_uniform()
    assert ours.shape == (30,)
    assert torch.allclose(ours.double(), direct, atol=1e-5)
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits),
                                            torch.distributions.Categorical(logits=torch.zeros(7)))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.all(ours > 0)


def test_kl_uniform_is_zero_for_uniform_logits_and_log_k_for_one_hot():
    for k in (2, 10):
        assert torch.allclose(GumbelSoftmax(torch.full((4, k), 1.7)).kl_uniform(), torch.zeros(4), atol=1e-6)
    peaked = torch.tensor([[60.0, 0.0, 0.0, 0.0]])
    assert GumbelSoftmax(peaked).kl_uniform().item() == pytest.approx(math.log(4), abs=1e-5)


def test_entropy_matches_torch_categorical():
    g = torch.Generator().manual_seed(5)
    probs = F.softmax(torch.randn(25, 6, generator=g) * 2, -1)
    ref = torch.distributions.Categorical(probs=probs).entropy()
    assert torch.allclose(entropy(probs), ref, atol=1e-5)
    assert entropy(torch.full((3,), 1 / 3)).item() == pytest.approx(math.log(3), abs=1e-6)
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(entropy(one_hot))
