"""Seeds: the initial VAE depends only on the model and the seed; runs with the same spec are identical; a pair
of twins is one model until its MI term starts."""
from __future__ import annotations

import pytest
import torch

from conftest import make_spec, state_equal, strip_timing
from vmistudy import data as datasets
from vmistudy.metrics import cluster_log_var, kmeans
from vmistudy.networks import inference
from vmistudy.trainer import Trainer, build_q, build_vae, seeds

SHAPE = (1, 28, 28)


@pytest.mark.parametrize("change", [
    {"mi": {"lambda_mi": 0.0}},
    {"mi": {"lambda_mi": 25.0, "entropy": "prior"}},
    {"mi": {"gaussian": [0], "categorical": False}},
    {"mi": {"gaussian": [], "categorical": True}},
    {"mi": {"gaussian": [0, 1, 2, 3]}},
    {"train": {"temperature": {"start": 3.0, "min": 0.1, "rate": 0.1, "every": 7}}},
    {"train": {"lr": 0.1, "q_lr": 1e-5, "beta": 4.0}},
])
def test_same_seed_same_initial_vae_whatever_the_objective(change):
    base = build_vae(make_spec(), SHAPE).state_dict()
    other = build_vae(make_spec(**change), SHAPE).state_dict()
    assert state_equal(base, other) == []


def test_different_seed_different_initial_vae_and_q():
    a, b = make_spec(train={"seed": 0}), make_spec(train={"seed": 1})
    vae_a, vae_b = build_vae(a, SHAPE).state_dict(), build_vae(b, SHAPE).state_dict()
    assert set(state_equal(vae_a, vae_b)) == set(vae_a)  # every tensor differs
    q_a, q_b = build_q(a, SHAPE).state_dict(), build_q(b, SHAPE).state_dict()
    assert set(state_equal(q_a, q_b)) == set(q_a)
    assert state_equal(q_a, build_q(make_spec(train={"seed": 0}), SHAPE).state_dict()) == []


def test_building_models_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_vae(make_spec(), SHAPE)
    build_q(make_spec(), SHAPE)
    assert torch.equal(torch.rand(3), expected)
    # and the global RNG does not leak into the initial weights
    torch.manual_seed(1)
    w1 = build_vae(make_spec(), SHAPE).state_dict()
    torch.manual_seed(2)
    assert state_equal(w1, build_vae(make_spec(), SHAPE).state_dict()) == []


def test_vae_and_q_initialisations_are_independent_streams():
    spec = make_spec(mi={"gaussian": [], "categorical": True})
    vae, q = build_vae(spec, SHAPE), build_q(spec, SHAPE)
    # the encoder body and Q body have the same architecture; equal seeds would make them identical
    assert not torch.equal(vae.body[1].weight, q.body[1].weight)


def test_seeds_gives_four_distinct_stable_values():
    for seed in (0, 1, 2, 12345):
        s = seeds(seed)
        assert set(s) == {"vae_init", "q_init", "data", "sampling"}
        assert len(set(s.values())) == 4
        assert all(isinstance(v, int) and v >= 0 for v in s.values())
        assert seeds(seed) == s
    assert seeds(0) != seeds(1)
    assert set(seeds(0).values()).isdisjoint(seeds(1).values())


def test_two_trainers_with_the_same_spec_are_identical_after_an_epoch():
    spec = make_spec(mi={"lambda_mi": 3.0})
    runs = []
    for _ in range(2):
        trainer = Trainer(spec.recipe, datasets.load(spec.data))
        metrics = trainer.train_epoch()
        runs.append((strip_timing([metrics])[0], trainer.vae.state_dict(), trainer.q.state_dict()))
    (m1, v1, q1), (m2, v2, q2) = runs
    assert m1 == m2
    assert state_equal(v1, v2) == [] and state_equal(q1, q2) == []
    # a different seed gives a different run
    other = Trainer(make_spec(mi={"lambda_mi": 3.0}, train={"seed": 5}).recipe, datasets.load(spec.data))
    m3 = strip_timing([other.train_epoch()])[0]
    assert m3["elbo"] != m1["elbo"] and m3["mi_lower_bound"] != m1["mi_lower_bound"]


def test_data_order_and_sampling_follow_the_seed():
    spec = make_spec()
    data = datasets.load(spec.data)
    a, b = Trainer(spec.recipe, data), Trainer(spec.recipe, data)
    c = Trainer(make_spec(train={"seed": 9}).recipe, data)
    assert torch.equal(a.data_rng.get_state(), b.data_rng.get_state())
    assert not torch.equal(a.data_rng.get_state(), c.data_rng.get_state())
    assert torch.equal(a.sample_rng.get_state(), b.sample_rng.get_state())
    assert not torch.equal(a.sample_rng.get_state(), c.sample_rng.get_state())


@pytest.mark.parametrize("variance", ["unit", "learned"])
def test_pretraining_is_the_elbo_alone_then_the_mixture_starts_at_k_means_clusters_of_z(variance):
    """train.pretrain_epochs: a lambda_mi > 0 trainer equals its lambda_mi = 0 twin through the pretraining (no MI
    term; the mixture held at N(0, I): the standard prior); the first epoch after it starts both from the same
    k-means centres of the training split's z means (and learned variances from those clusters' spreads), and only
    then do they part."""
    def trainer(lambda_mi):
        spec = make_spec(model={"prior": "mixture", "prior_spread": 0.0, "prior_variance": variance},
                         train={"epochs": 3, "pretrain_epochs": 1}, mi={"lambda_mi": lambda_mi, "gaussian": []})
        return Trainer(spec.recipe, datasets.load(spec.data))

    mi, twin = trainer(3.0), trainer(0.0)
    assert mi.pretraining
    for t in (mi, twin):
        t.train_epoch()
    assert not mi.pretraining and state_equal(mi.vae.state_dict(), twin.vae.state_dict()) == []
    assert not mi.vae.prior_components().mean.any() and not mi.vae.prior_components().log_var.any()
    with inference(mi.vae):
        z = mi.vae.encode(mi.images(mi.data.train_images)).gaussian
    expected = kmeans(z.mean, mi.vae.k, torch.Generator().manual_seed(mi.recipe.train.seed))
    spread = (cluster_log_var(z, torch.cdist(z.mean, expected).argmin(1), mi.vae.k) if variance == "learned"
              else torch.zeros_like(expected))
    mi.start_prior()
    assert torch.equal(mi.vae.prior_means.detach(), expected) and expected.abs().sum(1).min() > 0
    assert torch.equal(mi.vae.prior_components().log_var.detach(), spread)
    assert (variance == "unit") == (not spread.any())
    for t in (mi, twin):
        t.train_epoch()
    assert state_equal(mi.vae.state_dict(), twin.vae.state_dict()) != []
    assert torch.allclose(mi.vae.prior_means, twin.vae.prior_means, atol=0.1)  # the same start, a few steps on
