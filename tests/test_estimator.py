"""metrics.fit_q + metrics.mi_bound against joints whose mutual information is known exactly."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vmistudy.latents import standard_normal_entropy
from vmistudy.metrics import fit_q, mi_bound
from vmistudy.networks import QNetwork

pytestmark = pytest.mark.slow

D, BATCH, HIDDEN = 8, 256, 64


def linear_gaussian(d: int, scales: list[float], sigma: float, seed: int):
    """z ~ N(0, I_d), x = W z + sigma eps with orthogonal columns of W (so p(z|x) is diagonal).
    Returns (W, exact I(z; x) = 1/2 log det(I + W^T W / sigma^2))."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=torch.float64))
    w = (u * torch.tensor(scales, dtype=torch.float64)).float()
    truth = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + (w.T @ w).double() / sigma ** 2).item()
    assert truth == pytest.approx(0.5 * sum(math.log(1 + s ** 2 / sigma ** 2) for s in scales), rel=1e-5)
    return w, truth


def mixture_means(k: int, distance: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, D, generator=g)
    mu = distance * mu / mu.norm(dim=1, keepdim=True)
    min_gap = (torch.cdist(mu, mu) + 1e3 * torch.eye(k)).min().item()
    assert min_gap > 4.0  # with noise 0.3 the classes overlap by less than 1e-10
    return mu


def _check(result: dict, truth: float):
    est, se = result["mi_lower_bound"], result["mi_standard_error"]
    print(f"truth {truth:.4f}  estimate {est:.4f} +- {se:.4f}")
    assert math.isfinite(est) and se >= 0
    assert est <= truth + 3 * se + 1e-4, "a lower bound may not exceed the true MI"
    assert est >= 0.9 * truth


@pytest.mark.parametrize("d, scales, steps", [(2, [1.0, 2.0], 600), (3, [1.0, 2.0, 3.0], 800),
                                              (4, [0.5, 1.0, 2.0, 4.0], 1000)])
def test_linear_gaussian_mi(d, scales, steps):
    w, truth = linear_gaussian(d, scales, sigma=1.0, seed=d)
    g = torch.Generator().manual_seed(100 + d)

    def draw():
        z = torch.randn(BATCH, d, generator=g)
        x = z @ w.T + torch.randn(BATCH, D, generator=g)
        return x.view(BATCH, 1, 1, D), z, None

    torch.manual_seed(d)
    q = QNetwork("mlp", (1, 1, D), HIDDEN, gaussian_targets=d, categories=0)
    entropies = {"gaussian": standard_normal_entropy(d)}
    untrained = mi_bound(q, draw, entropies, 10)["mi_lower_bound"]
    fit_q(q, draw, steps, lr=3e-3)
    result = mi_bound(q, draw, entropies, 40)
    assert set(result) == {"log_q_gaussian", "entropy_gaussian", "mi_lower_bound_gaussian", "mi_lower_bound",
                           "mi_standard_error"}
    assert result["entropy_gaussian"] == pytest.approx(standard_normal_entropy(d))
    assert result["mi_lower_bound_gaussian"] == pytest.approx(result["mi_lower_bound"], abs=1e-6)
    _check(result, truth)
    assert untrained < 0.5 * truth, "fitting Q must matter"


@pytest.mark.parametrize("k", [3, 10])
def test_separated_mixture_mi_is_log_k(k):
    mu = mixture_means(k, distance=6.0, seed=k)
    g = torch.Generator().manual_seed(200 + k)

    def draw():
        c = torch.randint(k, (BATCH,), generator=g)
        x = mu[c] + 0.3 * torch.randn(BATCH, D, generator=g)
        return x.view(BATCH, 1, 1, D), None, F.one_hot(c, k).float()

    torch.manual_seed(k)
    q = QNetwork("mlp", (1, 1, D), HIDDEN, gaussian_targets=0, categories=k)
    entropies = {"categorical": math.log(k)}
    untrained = mi_bound(q, draw, entropies, 10)["mi_lower_bound"]
    fit_q(q, draw, 300, lr=3e-3)
    result = mi_bound(q, draw, entropies, 40)
    truth = math.log(k)  # minus an overlap below 1e-10
    _check(result, truth)
    assert result["mi_lower_bound"] >= truth - 0.02
    assert result["entropy_categorical"] == pytest.approx(math.log(k))
    assert untrained < 0.5 * truth


def test_joint_gaussian_and_categorical_targets_add_up():
    """Independent z (linear-Gaussian, first 8 features) and c (mixture, last 8): I((z, c); x) = I(z; x) + I(c; x)."""
    d, k = 2, 4
    w, truth_z = linear_gaussian(d, [1.0, 3.0], sigma=1.0, seed=7)
    mu = mixture_means(k, distance=6.0, seed=8)
    g = torch.Generator().manual_seed(9)

    def draw():
        z = torch.randn(BATCH, d, generator=g)
        c = torch.randint(k, (BATCH,), generator=g)
        x = torch.cat([z @ w.T + torch.randn(BATCH, D, generator=g), mu[c] + 0.3 * torch.randn(BATCH, D, generator=g)],
                      dim=1)
        return x.view(BATCH, 1, 1, 2 * D), z, F.one_hot(c, k).float()

    torch.manual_seed(0)
    q = QNetwork("mlp", (1, 1, 2 * D), HIDDEN, gaussian_targets=d, categories=k)
    fit_q(q, draw, 800, lr=3e-3)
    result = mi_bound(q, draw, {"gaussian": standard_normal_entropy(d), "categorical": math.log(k)}, 40)
    _check(result, truth_z + math.log(k))
    assert result["mi_lower_bound_gaussian"] == pytest.approx(truth_z, abs=0.1)
    assert result["mi_lower_bound_categorical"] == pytest.approx(math.log(k), abs=0.02)
    assert result["mi_lower_bound"] == pytest.approx(
        result["mi_lower_bound_gaussian"] + result["mi_lower_bound_categorical"], abs=1e-5)
