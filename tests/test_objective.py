"""The temperature schedule, the objective's terms, and one step of Algorithm 1 reproduced by hand."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from conftest import make_spec, state_equal
from vmistudy import config
from vmistudy import data as datasets
from vmistudy.latents import DiagonalGaussian, GumbelSoftmax, mixture_entropy_lower_bound, standard_normal_entropy
from vmistudy.networks import Forward, Posterior, QNetwork, mean_image
from vmistudy.objective import (capacity, elbo_terms, invariance_mi, mi_lower_bound, mi_targets, mi_warmup,
                                reconstruction_nll, target_entropy, temperature, virtual_adversarial)
from vmistudy.trainer import Trainer, build_q, build_vae, seeds


# ---------------------------------------------------------------------------------------------- temperature

def tspec(**kw) -> config.TemperatureSpec:
    return config.TemperatureSpec(**kw)


def test_temperature_starts_at_start():
    for start in (1.0, 2.5, 0.7):
        assert temperature(0, tspec(start=start, min=0.1, rate=1e-2)) == start


def test_temperature_decays_exponentially_every_step():
    spec = tspec(start=2.0, min=0.3, rate=1e-3, every=1)
    for step in (1, 7, 100, 999, 1500):
        assert temperature(step, spec) == pytest.approx(max(0.3, 2.0 * math.exp(-1e-3 * step)), rel=1e-12)
    values = [temperature(s, spec) for s in range(0, 1500, 50)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_temperature_is_held_between_updates():
    spec = tspec(start=1.0, min=0.01, rate=1e-3, every=100)
    at_100 = temperature(100, spec)
    assert at_100 == pytest.approx(math.exp(-0.1), rel=1e-12)
    for step in range(100, 200):
        assert temperature(step, spec) == at_100
    # the reference code's bug would keep tau at start until the schedule first "fires" mid-interval
    assert temperature(150, spec) != spec.start
    assert temperature(150, spec) < spec.start
    for step in range(0, 100):
        assert temperature(step, spec) == spec.start
    assert temperature(200, spec) == pytest.approx(math.exp(-0.2), rel=1e-12)
    assert temperature(200, spec) < temperature(199, spec)


def test_temperature_floors_at_min():
    spec = tspec(start=1.0, min=0.5, rate=1e-2, every=1)
    floor_step = math.ceil(math.log(2) / 1e-2)  # start * exp(-rate * s) = min
    assert temperature(floor_step - 5, spec) > 0.5
    for step in (floor_step, floor_step + 1, 10_000, 10**7):
        assert temperature(step, spec) == 0.5
    assert temperature(10**6, tspec(start=1.0, min=1.0, rate=1.0)) == 1.0
    assert temperature(10**6, tspec(start=3.0, min=0.2, rate=0.0)) == 3.0


def test_trainer_temperature_follows_its_step():
    spec = make_spec(train={"temperature": {"start": 1.0, "min": 0.2, "rate": 0.05, "every": 3}})
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    x = trainer.images(trainer.data.train_images[:32])
    seen = []
    for _ in range(7):
        seen.append(trainer.temperature)
        trainer.train_step(x)
    assert trainer.step == 7
    assert seen == [temperature(s, spec.train.temperature) for s in range(7)]
    assert seen[0] == seen[1] == seen[2] == 1.0 and seen[3] < 1.0


# ---------------------------------------------------------------------------------------------- ELBO terms

def _forward(spec, n=16, seed=0):
    shape = (1, 28, 28)
    vae = build_vae(spec, shape)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, *shape, generator=g) < 0.3).float()
    return vae, x, vae(x, 0.8, g)


def test_elbo_terms_match_direct_formulas_bernoulli():
    spec = make_spec()
    _, x, out = _forward(spec)
    terms = elbo_terms(out, x, spec.model)
    logits = out.logits.double()
    p = torch.sigmoid(logits)
    recon = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    g = out.posterior.gaussian
    kl_z = torch.distributions.kl_divergence(Normal(g.mean, (0.5 * g.log_var).exp()), Normal(0.0, 1.0))
    probs = out.posterior.categorical.probs.double()
    kl_c = (probs * (probs * spec.model.categories).log()).sum(-1)
    assert torch.allclose(terms.recon.double(), recon, rtol=1e-4)
    assert torch.allclose(terms.kl_per_dim, kl_z, atol=1e-5)
    assert terms.kl_per_dim.shape == (16, spec.model.gaussian_dims)
    assert torch.allclose(terms.kl_continuous, kl_z.sum(-1), atol=1e-5)
    assert torch.allclose(terms.kl_categorical.double(), kl_c, atol=1e-5)
    assert torch.allclose(terms.elbo.double(), -(recon + kl_z.sum(-1) + kl_c), rtol=1e-4)
    for beta in (0.0, 1.0, 4.0):
        expected = (recon + beta * (kl_z.sum(-1) + kl_c)).mean()
        train = spec.train.model_copy(update={"beta": beta})
        assert terms.loss(train, step=0).item() == pytest.approx(expected.item(), rel=1e-4)


def test_capacity_rises_linearly_to_the_cap_then_stays():
    spec = config.CapacitySpec(cap=5.0, steps=1000)
    assert [capacity(t, spec) for t in (0, 250, 1000, 5000)] == [0.0, 1.25, 5.0, 5.0]


def test_capacity_replaces_only_its_parts_kl_term():
    """With a cap on one part, the loss is recon + gamma |mean KL - C(t)| for it and beta * KL for the other."""
    spec = make_spec(train={"beta": 2.0, "capacity": {"gaussian": {"cap": 4.0, "gamma": 30.0, "steps": 100}}})
    vae = build_vae(spec, (1, 28, 28))
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    terms = elbo_terms(vae(x, 1.0, torch.Generator().manual_seed(1)), x, spec.model)
    for step, c in ((0, 0.0), (50, 2.0), (400, 4.0)):
        expected = (terms.recon.mean() + 30.0 * (terms.kl_continuous.mean() - c).abs()
                    + 2.0 * terms.kl_categorical.mean())
        assert terms.loss(spec.train, step).item() == pytest.approx(expected.item(), rel=1e-5)
    both = spec.train.model_copy(deep=True)
    both.capacity.categorical = config.CapacitySpec(cap=1.0, gamma=10.0, steps=100)
    expected = (terms.recon.mean() + 30.0 * (terms.kl_continuous.mean() - 2.0).abs()
                + 10.0 * (terms.kl_categorical.mean() - 0.5).abs())
    assert terms.loss(both, 50).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
def test_capacity_steers_the_kl_of_its_part_to_the_cap():
    """Trained on synthetic data, a Gaussian part capped at 1 nat ends near 1 nat of KL, while the same
    model without the cap spends several times more."""
    kls = {}
    for cap in (None, 1.0):
        _, trainer = _trainer(train={"epochs": 4, "capacity": {"gaussian": {"cap": cap, "steps": 50}}},
                              data={"train_size": 2000, "test_size": 500})
        for _ in range(4):
            metrics = trainer.train_epoch()
        kls[cap] = metrics["kl_continuous"]
    print(f"kl_continuous: uncapped {kls[None]:.2f}, capped at 1 nat {kls[1.0]:.2f}")
    assert kls[1.0] == pytest.approx(1.0, abs=0.3)
    assert kls[None] > 3 * kls[1.0]


@pytest.mark.parametrize("variance", ["unit", "learned"])
def test_mixture_prior_kl_is_the_posterior_weighted_kl_to_each_component(variance):
    spec = make_spec(model={"prior": "mixture", "prior_variance": variance}, mi={"gaussian": []})
    vae = build_vae(spec, (1, 28, 28))
    std = torch.ones(vae.k, vae.d)
    if variance == "learned":
        with torch.no_grad():
            vae.prior_log_var.uniform_(-2, 1, generator=torch.Generator().manual_seed(2))
        std = (0.5 * vae.prior_log_var.detach()).exp()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = vae(x, 1.0, torch.Generator().manual_seed(1))
    terms = elbo_terms(out, x, spec.model)
    g, probs = out.posterior.gaussian, out.posterior.categorical.probs
    q = Normal(g.mean.unsqueeze(1), (0.5 * g.log_var).exp().unsqueeze(1))
    per_component = torch.distributions.kl_divergence(q, Normal(vae.prior_means, std))  # [B, K, d]
    assert torch.allclose(terms.kl_per_dim, (probs.unsqueeze(-1) * per_component).sum(1), atol=1e-5)
    terms.elbo.mean().backward()
    learned = [vae.prior_means] + ([vae.prior_log_var] if variance == "learned" else [])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)


@pytest.mark.parametrize("variance, added", [("unit", {"prior_means"}), ("learned", {"prior_means", "prior_log_var"})])
def test_mixture_prior_keeps_the_networks_initial_weights(variance, added):
    standard, mixture = (build_vae(make_spec(model={"prior": p, "prior_variance": v}, mi={"gaussian": []}), (1, 28, 28))
                         for p, v in (("standard", "unit"), ("mixture", variance)))
    mixed = mixture.state_dict()
    assert set(mixed) - set(standard.state_dict()) == added
    assert all(torch.equal(v, mixed[k]) for k, v in standard.state_dict().items())


def test_mixture_prior_samples_each_component_at_its_mean_and_spread():
    vae = build_vae(make_spec(model={"prior": "mixture", "prior_variance": "learned"}, mi={"gaussian": []}),
                    (1, 28, 28))
    with torch.no_grad():
        vae.prior_log_var.uniform_(-3, 1, generator=torch.Generator().manual_seed(2))
    c = F.one_hot(torch.full((20000,), 3), vae.k).float()
    z = vae.sample_prior_z(c, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), vae.prior_means[3], atol=0.05)
    assert torch.allclose(z.std(0), (0.5 * vae.prior_log_var[3]).exp(), rtol=0.03)


def test_mixture_prior_spread_scales_the_means_and_zero_starts_as_the_standard_prior():
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    models, terms = {}, {}
    for name, model in (("standard", {}), ("spread 0", {"prior": "mixture", "prior_spread": 0.0}),
                        ("spread 1", {"prior": "mixture"}), ("spread 3", {"prior": "mixture", "prior_spread": 3.0})):
        spec = make_spec(model=model, mi={"gaussian": []})
        models[name] = build_vae(spec, (1, 28, 28))
        terms[name] = elbo_terms(models[name](x, 1.0, torch.Generator().manual_seed(1)), x, spec.model)
    assert torch.equal(models["spread 3"].prior_means, 3.0 * models["spread 1"].prior_means)
    assert torch.allclose(terms["spread 0"].kl_per_dim, terms["standard"].kl_per_dim, atol=1e-6)
    assert not torch.allclose(terms["spread 1"].kl_per_dim, terms["standard"].kl_per_dim, atol=1e-2)


def test_gaussian_likelihood_is_normal_log_prob_of_the_sigmoid_mean():
    spec = make_spec(model={"likelihood": "gaussian", "likelihood_std": 0.2})
    g = torch.Generator().manual_seed(1)
    logits, x = torch.randn(5, 1, 28, 28, generator=g), torch.rand(5, 1, 28, 28, generator=g)
    ref = -Normal(torch.sigmoid(logits), 0.2).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(reconstruction_nll(logits, x, spec.model), ref, rtol=1e-5)


def test_elbo_terms_without_gaussian_or_categorical_part():
    spec = make_spec(model={"gaussian_dims": 0}, mi={"gaussian": []})
    _, x, out = _forward(spec)
    terms = elbo_terms(out, x, spec.model)
    assert out.z is None and terms.kl_per_dim is None
    assert torch.equal(terms.kl_continuous, torch.zeros(16))
    spec = make_spec(model={"categories": None}, mi={"categorical": False})
    _, x, out = _forward(spec)
    terms = elbo_terms(out, x, spec.model)
    assert out.c is None and torch.equal(terms.kl_categorical, torch.zeros(16))
    assert torch.all(terms.kl_continuous > 0)


# ------------------------------------------------------------------------------------------ MI targets, H(c^)

def test_mi_targets_select_the_listed_gaussian_columns():
    z = torch.arange(24.0).reshape(4, 6)
    c = F.softmax(torch.randn(4, 3), -1)
    out = Forward(posterior=None, z=z, c=c, logits=torch.zeros(4, 1, 2, 2))
    z_hat, c_hat = mi_targets(out, config.MISpec(gaussian=[4, 1], categorical=True))
    assert torch.equal(z_hat, z[:, [4, 1]])
    assert torch.equal(z_hat[:, 0], torch.tensor([4.0, 10.0, 16.0, 22.0]))
    assert c_hat is c
    z_hat, c_hat = mi_targets(out, config.MISpec(gaussian=[2], categorical=False))
    assert torch.equal(z_hat, z[:, [2]]) and c_hat is None
    z_hat, c_hat = mi_targets(out, config.MISpec(gaussian=[], categorical=True))
    assert z_hat is None and c_hat is c


def _posterior(probs=None, mean=None, log_var=None) -> Posterior:
    return Posterior(DiagonalGaussian(mean, log_var) if mean is not None else None,
                     GumbelSoftmax(probs.log()) if probs is not None else None)


def test_target_entropy_prior_vs_aggregate():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    aggregate = target_entropy(config.MISpec(entropy="aggregate"), _posterior(probs))["categorical"]
    prior = target_entropy(config.MISpec(entropy="prior"), _posterior(probs))["categorical"]
    assert prior == pytest.approx(math.log(3))
    marginal = probs.mean(0)
    assert aggregate.item() == pytest.approx(-(marginal * marginal.log()).sum().item(), rel=1e-6)
    assert aggregate.item() < prior - 0.05
    # a batch whose marginal is uniform makes the two agree
    balanced = torch.eye(3).clamp_min(1e-30)
    assert target_entropy(config.MISpec(entropy="aggregate"), _posterior(balanced))["categorical"].item() == \
        pytest.approx(math.log(3), abs=1e-6)


def test_target_entropy_of_gaussian_targets_prior_constant_or_aggregate_bound_of_the_listed_dims():
    g = torch.Generator().manual_seed(0)
    mean, log_var = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g) - 2
    posterior = _posterior(torch.full((50, 4), 0.25), mean, log_var)
    prior = target_entropy(config.MISpec(gaussian=[0, 2, 5], categorical=False, entropy="prior"), posterior)
    assert set(prior) == {"gaussian"}
    assert prior["gaussian"] == pytest.approx(standard_normal_entropy(3))
    aggregate = target_entropy(config.MISpec(gaussian=[0, 2, 5], categorical=True), posterior)
    assert set(aggregate) == {"gaussian", "categorical"}
    listed = mixture_entropy_lower_bound(DiagonalGaussian(mean[:, [0, 2, 5]], log_var[:, [0, 2, 5]]))
    assert aggregate["gaussian"].item() == pytest.approx(listed.item(), rel=1e-6)
    assert aggregate["categorical"].item() == pytest.approx(math.log(4), rel=1e-6)


def test_aggregate_entropy_carries_gradient_prior_does_not():
    logits = torch.tensor([[2.0, 0.0, -1.0], [1.0, 0.5, 0.0]], requires_grad=True)
    mean = torch.tensor([[0.3, -1.0], [1.2, 0.4]], requires_grad=True)
    log_var = torch.full((2, 2), -1.0, requires_grad=True)
    posterior = Posterior(DiagonalGaussian(mean, log_var), GumbelSoftmax(logits))
    h = target_entropy(config.MISpec(gaussian=[0, 1], entropy="aggregate"), posterior)
    for part, leaves in (("categorical", [logits]), ("gaussian", [mean, log_var])):
        grads = torch.autograd.grad(h[part], leaves)
        assert all(grad.abs().sum() > 0 for grad in grads), part
    prior = target_entropy(config.MISpec(gaussian=[0, 1], entropy="prior"), posterior)
    assert all(isinstance(value, float) for value in prior.values())


def test_mi_lower_bound_is_mean_log_q_plus_entropy_summed_over_parts():
    log_q = {"gaussian": torch.tensor([-1.0, -3.0]), "categorical": torch.tensor([-0.5, -0.1])}
    h = {"gaussian": 2.0, "categorical": torch.tensor(1.0)}
    assert mi_lower_bound(log_q, h).item() == pytest.approx((-2.0 + 2.0) + (-0.3 + 1.0))
    assert mi_lower_bound({"gaussian": log_q["gaussian"]}, h) == pytest.approx(0.0)


def test_q_log_prob_scores_gaussian_and_soft_one_hot():
    q = QNetwork("mlp", (1, 4, 4), 8, gaussian_targets=2, categories=3)
    x = torch.rand(5, 1, 4, 4)
    z_hat, c_hat = torch.randn(5, 2), F.softmax(torch.randn(5, 3), -1)
    parts = q.log_prob(x, z_hat, c_hat)
    gaussian, logits = q.head(q.body(x)).split([4, 3], dim=-1)
    mean, log_var = gaussian.chunk(2, -1)
    ref_g = Normal(mean, (0.5 * log_var).exp()).log_prob(z_hat).sum(-1)
    ref_c = (c_hat * F.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(parts["gaussian"], ref_g, atol=1e-5)
    assert torch.allclose(parts["categorical"], ref_c, atol=1e-6)
    # a hard one-hot is scored as log Q(k|x~)
    k = torch.tensor([0, 2, 1, 1, 0])
    hard = q.log_prob(x, z_hat, F.one_hot(k, 3).float())["categorical"]
    assert torch.allclose(hard, F.log_softmax(logits, -1)[torch.arange(5), k], atol=1e-6)


# ------------------------------------------------------------------------------------- gradients of the MI term

@pytest.mark.parametrize("mi", [{"gaussian": [0, 2], "categorical": True}, {"gaussian": [], "categorical": True},
                                {"gaussian": [1], "categorical": False}])
def test_mi_gradient_reaches_encoder_and_decoder_but_not_q(mi):
    spec = make_spec(mi=mi)
    vae, x, out = _forward(spec)
    q = build_q(spec, (1, 28, 28))
    z_hat, c_hat = mi_targets(out, spec.mi)
    entropies = target_entropy(spec.mi, out.posterior)
    bound = mi_lower_bound(q.log_prob(mean_image(out.logits), z_hat, c_hat), entropies)
    groups = {"body": list(vae.body.parameters()), "head": list(vae.head.parameters()),
              "decoder": list(vae.decoder.parameters())}
    flat = [p for ps in groups.values() for p in ps]
    grads = torch.autograd.grad(bound, flat, retain_graph=True, allow_unused=True)
    i = 0
    for name, ps in groups.items():
        g = grads[i:i + len(ps)]
        i += len(ps)
        assert all(t is not None for t in g), name
        assert sum(t.abs().sum().item() for t in g) > 0, f"no MI gradient reaches the {name}"
    bound.backward(inputs=flat)
    assert all(p.grad is None for p in q.parameters())
    assert all(p.grad is not None for p in vae.parameters())


# --------------------------------------------------------------------------------- Algorithm 1, one train_step

def _trainer(**sections):
    spec = make_spec(**sections)
    return spec, Trainer(spec.recipe, datasets.load(spec.data))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _hand_step(spec, vae, q, x, lambda_mi):
    """Algorithm 1 reproduced from the public functions on copies: Q step on detached (x~, c^), then the VAE
    step on -(ELBO + lambda * MI) with the updated Q. Returns (vae, q, q grads of the Q step)."""
    vae, q = copy.deepcopy(vae), copy.deepcopy(q)
    vae_opt = torch.optim.Adam(vae.parameters(), lr=spec.train.lr, fused=True)  # as the Trainer's
    q_opt = torch.optim.Adam(q.parameters(), lr=spec.train.q_lr, fused=True)
    rng = torch.Generator().manual_seed(seeds(spec.train.seed)["sampling"])
    out = vae(x, temperature(0, spec.train.temperature), rng)
    x_tilde = mean_image(out.logits)
    z_hat, c_hat = mi_targets(out, spec.mi)
    entropies = target_entropy(spec.mi, out.posterior)

    log_q = q.log_prob(x_tilde.detach(), *(t.detach() if t is not None else None for t in (z_hat, c_hat)))
    (-sum(log_q.values()).mean()).backward()
    q_grads = {n: p.grad.clone() for n, p in q.named_parameters()}
    q_opt.step()

    vae_params = list(vae.parameters())
    assert all(p.grad is None for p in vae_params)  # the Q step leaves the VAE untouched
    loss = elbo_terms(out, x, spec.model).loss(spec.train, step=0)
    if lambda_mi:
        mi = mi_lower_bound(q.log_prob(x_tilde, z_hat, c_hat), entropies)
        invariance = spec.mi.invariance
        if invariance.weight:  # drawn after the forward's draws, on the same generator
            if invariance.copies == "adversarial":
                log_p = out.posterior.categorical.log_probs.detach()
                copies = x + virtual_adversarial(x, log_p, lambda v: vae.encode(v).categorical.log_probs,
                                                 invariance.epsilon, rng)
            else:
                copies = datasets.random_affine(x, invariance.rotate, invariance.translate, invariance.scale, rng)
            mi = mi + invariance.weight * invariance_mi(out.posterior.categorical.probs,
                                                        vae.encode(copies).categorical.probs)
        loss = loss - lambda_mi * mi
    grads = torch.autograd.grad(loss, vae_params)
    for p, g in zip(vae_params, grads):
        p.grad = g
    vae_opt.step()
    return vae, q, q_grads


@pytest.mark.parametrize("lambda_mi, invariance, copies", [(0.0, 0.0, "affine"), (3.0, 0.0, "affine"),
                                                            (3.0, 0.5, "affine"), (0.0, 0.5, "affine"),
                                                            (3.0, 0.5, "adversarial")])
def test_train_step_equals_algorithm_1_by_hand(lambda_mi, invariance, copies):
    spec, trainer = _trainer(mi={"lambda_mi": lambda_mi, "gaussian": [1, 3], "categorical": True,
                                 "invariance": {"weight": invariance, "copies": copies}})
    x = trainer.images(trainer.data.train_images[:64])
    vae0, q0 = _snapshot(trainer.vae), _snapshot(trainer.q)
    ref_vae, ref_q, q_grads = _hand_step(spec, trainer.vae, trainer.q, x, lambda_mi)
    values = trainer.train_step(x)
    assert values.shape == (2,) and torch.isfinite(values).all()
    assert trainer.step == 1

    vae1, q1 = _snapshot(trainer.vae), _snapshot(trainer.q)
    assert all(not torch.equal(vae0[k], vae1[k]) for k in vae0 if k.endswith("weight")), "VAE did not move"
    assert all(not torch.equal(q0[k], q1[k]) for k in q0 if k.endswith("weight")), "Q did not move"
    for k, v in ref_vae.state_dict().items():
        assert torch.equal(v, vae1[k]), f"VAE parameter {k} differs from the hand-computed step"
    for k, v in ref_q.state_dict().items():
        assert torch.equal(v, q1[k]), f"Q parameter {k} differs from the hand-computed Q step"
    # the VAE step's backward must not add the MI gradient into Q's grads
    for name, p in trainer.q.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, q_grads[name]), name


def test_invariance_term_changes_the_vae_update_only_with_mi_on():
    """It is part of the MI term: scaled by lambda_mi, so a lambda_mi = 0 twin trains as without it (same draws)."""
    runs = {}
    for lam, weight in ((0.0, 0.0), (0.0, 1.0), (3.0, 0.0), (3.0, 1.0)):
        _, trainer = _trainer(mi={"lambda_mi": lam, "invariance": {"weight": weight}})
        for _ in range(2):  # the second step shows that the twin's generator was not drawn on
            trainer.train_step(trainer.images(trainer.data.train_images[:64]))
        runs[lam, weight] = _snapshot(trainer.vae)
    assert state_equal(runs[0.0, 0.0], runs[0.0, 1.0]) == []
    assert state_equal(runs[3.0, 0.0], runs[3.0, 1.0]) != []


def test_adversarial_copies_train_differently_from_affine_ones_and_leave_the_metric_affine():
    """mi.invariance.copies picks the training copy; invariance_mi is measured on the affine copies either way."""
    runs = {}
    for copies in ("affine", "adversarial"):
        _, trainer = _trainer(mi={"lambda_mi": 3.0, "invariance": {"weight": 1.0, "copies": copies}})
        trainer.train_step(trainer.images(trainer.data.train_images[:64]))
        runs[copies] = _snapshot(trainer.vae)
        x = trainer.images(trainer.data.test_images[:32])
        metric = trainer.code_of_copies(x, torch.Generator().manual_seed(0))
        spec = trainer.recipe.mi.invariance
        affine = datasets.random_affine(x, spec.rotate, spec.translate, spec.scale, torch.Generator().manual_seed(0))
        assert torch.equal(metric, trainer.vae.encode(affine).categorical.probs)
    assert state_equal(runs["affine"], runs["adversarial"]) != []


def test_mi_warmup_rises_linearly_to_one_then_stays():
    spec = config.MISpec(lambda_mi=5.0, warmup_steps=200)
    assert [mi_warmup(s, spec) for s in (0, 50, 100, 200, 201, 10 ** 6)] == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert mi_warmup(0, config.MISpec(lambda_mi=5.0)) == 1.0  # no warm-up: the thesis' full weight from step 0


@pytest.mark.parametrize("step, expected_lambda", [(0, 0.0), (2, 3.0), (4, 6.0), (9, 6.0)])
def test_warmup_trains_as_the_ramped_lambda_at_that_step(step, expected_lambda):
    """lambda 6 over 4 warm-up steps updates the model at step s exactly as lambda 6 * min(1, s / 4) does."""
    runs = []
    for mi in ({"lambda_mi": 6.0, "warmup_steps": 4}, {"lambda_mi": expected_lambda}):
        _, trainer = _trainer(mi=mi)
        trainer.step = step  # the same temperature and capacity in both; only the MI weight may differ
        trainer.train_step(trainer.images(trainer.data.train_images[:64]))
        runs.append(_snapshot(trainer.vae))
    assert state_equal(*runs) == []


def test_lambda_changes_the_vae_update_but_not_the_q_update():
    runs = {}
    for lam in (0.0, 3.0):
        _, trainer = _trainer(mi={"lambda_mi": lam})
        trainer.train_step(trainer.images(trainer.data.train_images[:64]))
        runs[lam] = (_snapshot(trainer.vae), _snapshot(trainer.q))
    (vae_a, q_a), (vae_b, q_b) = runs[0.0], runs[3.0]
    assert all(torch.equal(q_a[k], q_b[k]) for k in q_a), "the Q step must not depend on lambda"
    differ = [k for k in vae_a if not torch.equal(vae_a[k], vae_b[k])]
    for prefix in ("body.", "head.", "decoder."):
        assert any(k.startswith(prefix) for k in differ), f"lambda_mi did not change the {prefix} update"


@pytest.mark.slow
def test_mi_regularizer_raises_the_bound_on_synthetic_data():
    """Sign check end to end: from the same initial weights, lambda_mi = 5 ends with a clearly higher test MI bound
    and finds the synthetic classes better than lambda_mi = 0 (a wrong-signed MI term would lower it)."""
    seed, results = 1, {}
    for lam in (0.0, 5.0):
        _, trainer = _trainer(mi={"lambda_mi": lam, "gaussian": []}, train={"seed": seed, "epochs": 5},
                              data={"train_size": 2000, "test_size": 200})
        for _ in range(5):
            metrics = trainer.train_epoch()
        results[lam] = metrics
    print(f"synthetic seed {seed}: mi_lower_bound {results[0.0]['mi_lower_bound']:.3f} (lambda 0) vs "
          f"{results[5.0]['mi_lower_bound']:.3f} (lambda 5); accuracy {results[0.0]['accuracy_hungarian']:.3f} vs "
          f"{results[5.0]['accuracy_hungarian']:.3f}")
    assert results[5.0]["mi_lower_bound"] > results[0.0]["mi_lower_bound"] + 0.3
    assert results[5.0]["mi_lower_bound"] <= math.log(4) + 0.05  # a lower bound on I <= H(c) = log 4
    assert results[5.0]["accuracy_hungarian"] > results[0.0]["accuracy_hungarian"] + 0.1


@pytest.mark.slow
def test_fresh_q_leaves_the_vae_as_it_found_it():
    """The eq. 4.8 bounds run the VAE in eval mode: BatchNorm's running statistics, the weights and the
    training mode are unchanged afterwards, and the Q trained alongside is not touched either."""
    _, trainer = _trainer(model={"backbone": "conv"}, mi={"fresh_q_steps": 5})
    trainer.train_step(trainer.images(trainer.data.train_images[:64]))
    vae, q = copy.deepcopy(trainer.vae.state_dict()), copy.deepcopy(trainer.q.state_dict())
    bounds = trainer.frozen_mi_lower_bounds()
    assert set(bounds) == {"frozen_mi_lower_bound_encoder", "frozen_mi_lower_bound_prior"}
    assert all(math.isfinite(v) for v in bounds.values())
    assert trainer.vae.training
    for before, model in ((vae, trainer.vae), (q, trainer.q)):
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------- the invariance term

def _linear_code(seed=0, d=20, k=5):
    weight = torch.randn(d, k, generator=torch.Generator().manual_seed(seed))
    return lambda x: torch.log_softmax(x.flatten(1) @ weight, -1)


def test_virtual_adversarial_has_norm_epsilon_per_image_and_follows_the_generator():
    log_q, x = _linear_code(), torch.rand(8, 1, 4, 5)
    r = virtual_adversarial(x, log_q(x).detach(), log_q, 0.7, torch.Generator().manual_seed(3))
    assert r.shape == x.shape and not r.requires_grad
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((8,), 0.7), atol=1e-5)
    again = virtual_adversarial(x, log_q(x).detach(), log_q, 0.7, torch.Generator().manual_seed(3))
    assert torch.equal(r, again)


def test_virtual_adversarial_moves_the_code_more_than_random_perturbations_of_its_norm():
    log_q, x, generator = _linear_code(), torch.rand(64, 20), torch.Generator().manual_seed(1)
    log_p = log_q(x).detach()

    def kl(r):
        return (log_p.exp() * (log_p - log_q(x + r))).sum(-1)

    adversarial = kl(virtual_adversarial(x, log_p, log_q, 0.5, generator))
    noise = torch.randn(64, 20, generator=generator)
    random = kl(0.5 * noise / noise.norm(dim=1, keepdim=True))
    assert (adversarial > random).float().mean() > 0.9
    assert adversarial.mean() > 3 * random.mean()


def test_invariance_mi_is_log_k_for_a_code_that_ignores_the_copy_and_fills_every_class():
    k = 4
    probs = F.one_hot(torch.arange(40) % k, k).float()
    assert invariance_mi(probs, probs).item() == pytest.approx(math.log(k), abs=1e-5)


def test_invariance_mi_is_zero_when_the_copys_code_is_independent_or_one_class_holds_all():
    probs = F.one_hot(torch.arange(16) % 4, 4).float()
    shuffled = F.one_hot(torch.arange(16) // 4, 4).float()  # independent of c: each (c, c') pair once
    assert invariance_mi(probs, shuffled).item() == pytest.approx(0.0, abs=1e-5)
    one_class = F.one_hot(torch.zeros(40, dtype=torch.long), 4).float()
    assert invariance_mi(one_class, one_class).item() == pytest.approx(0.0, abs=1e-5)


def test_invariance_mi_matches_the_mi_of_the_symmetrized_joint():
    torch.manual_seed(0)
    logits = torch.randn(50, 5, dtype=torch.float64) * 3
    p, p_copy = torch.softmax(logits, -1), torch.softmax(logits + torch.randn_like(logits), -1)  # related codes
    joint = (p[:, :, None] * p_copy[:, None, :]).mean(0)
    joint = (joint + joint.T) / 2
    marginal = joint.sum(1)
    expected = (joint * (joint / (marginal[:, None] * marginal[None, :])).log()).sum()
    assert expected.item() > 0.3
    assert invariance_mi(p, p_copy).item() == pytest.approx(expected.item(), rel=1e-9)
    assert invariance_mi(p, p_copy).item() == pytest.approx(invariance_mi(p_copy, p).item(), rel=1e-12)
