"""A trial bundle is its members' solo runs: each member equals `Trainer` on its recipe, step by step and epoch by
epoch, its checkpoints resume alone or as a bundle, and members that are not one configuration are refused.

Tolerance: the equality tests run in float64 (torch's default float type, which the Trainer follows). The
bundle's batched matmuls (bmm) round differently from the solo ones (mm), by an ulp; Adam divides each gradient
by its own running size, so where a gradient is nearly zero (a pixel that is almost never on) that ulp becomes a
different step. In float32 on MNIST_TINY the weights drift apart by ~1e-3 within 3 epochs and the metrics by
~0.3%; in float64 they stay within ~4e-14 and ~3e-13. WEIGHTS and METRICS are 1000x above that, and far below
what any real difference (another draw, data order or lambda_mi) gives, ~1e-3 in one step. The float32 run, the
one studies train, is checked to the looser FLOAT32 tolerance.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, MNIST_SMALL, SYNTHETIC, make_spec, raw_study, state_equal, strip_timing
from vmistudy import data as datasets
from vmistudy.bundle import Bundle, stack_adam, unstack_adam
from vmistudy.errors import InputError
from vmistudy.metrics import mutual_information
from vmistudy.trainer import DivergenceError, Trainer, load_checkpoint, save_checkpoint

WEIGHTS = dict(rtol=0, atol=1e-10)
METRICS = dict(rel=1e-9, abs=1e-9)
FLOAT32 = dict(rel=1e-2, abs=1e-2)
# a small MNIST: 6 steps of 50 per epoch; Gaussian and categorical MI targets, so both draws are in play
MNIST_TINY = raw_study(MNIST_SMALL, data={"subset": 300, "test_subset": 100}, model={"hidden": 32},
                       train={"batch_size": 50}, mi={"gaussian": [0, 3]})
MEMBERS = [(seed, lambda_mi) for seed in (0, 1, 2) for lambda_mi in (5.0, 0.0)]  # 3 replicates, each with its twin


def recipes(members=MEMBERS, device: str = "cpu", base: dict = MNIST_TINY):
    return [make_spec(base, train={"seed": seed, "device": device}, mi={"lambda_mi": lam}).recipe
            for seed, lam in members]


@pytest.fixture(scope="module")
def mnist(mnist_root) -> datasets.ImageData:
    return datasets.load(make_spec(MNIST_TINY).data)


@pytest.fixture
def float64():
    """Train in float64 (see the module docstring), and back to torch's default after."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def assert_same_model(member: Trainer, solo: Trainer) -> None:
    for module in ("vae", "q"):
        ours, theirs = getattr(member, module).state_dict(), getattr(solo, module).state_dict()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], **WEIGHTS, msg=lambda m: f"{module}.{key}: {m}")
    for optimizer in ("vae_opt", "q_opt"):
        ours, theirs = getattr(member, optimizer).state_dict(), getattr(solo, optimizer).state_dict()
        assert ours["param_groups"] == theirs["param_groups"]
        for i, state in theirs["state"].items():
            assert torch.equal(ours["state"][i]["step"], state["step"])
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(ours["state"][i][k], state[k], rtol=1e-9, atol=1e-12)
    # the same draws, in the same number: the generators are in the same state
    assert torch.equal(member.data_rng.get_state(), solo.data_rng.get_state())
    assert torch.equal(member.sample_rng.get_state(), solo.sample_rng.get_state())
    assert (member.step, member.epoch) == (solo.step, solo.epoch)


def assert_same_history(member: Trainer, solo: Trainer, tolerance: dict = METRICS) -> None:
    ours, theirs = strip_timing(member.history), strip_timing(solo.history)
    assert [m.keys() for m in ours] == [m.keys() for m in theirs]
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, **tolerance)


@pytest.mark.parametrize("device", DEVICES)
def test_each_member_is_its_solo_run_step_by_step(mnist, float64, device):
    bundle, solos = Bundle.fresh(recipes(device=device), mnist), [Trainer(r, mnist) for r in recipes(device=device)]
    for m, solo in enumerate(solos):  # the same initial weights, from the member's own seed
        assert state_equal(bundle.member(m).vae.state_dict(), solo.vae.state_dict()) == []
    images = mnist.train_images
    for step in range(4):
        batches = [torch.randperm(len(images), generator=torch.Generator().manual_seed(10 * step + m))[:50]
                   for m in range(len(solos))]
        x = datasets.as_float(images[torch.stack(batches)]).to(bundle.device)
        ours = bundle.train_step(x)
        theirs = torch.stack([solo.train_step(x[m]) for m, solo in enumerate(solos)])
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for m, solo in enumerate(solos):
        assert_same_model(bundle.member(m), solo)
    # the twins do differ from their MI members: the comparison can see lambda_mi
    assert not torch.allclose(bundle.member(0).vae.head.weight, bundle.member(1).vae.head.weight, atol=1e-3)


def test_an_epoch_gives_each_member_its_solo_metrics(mnist, float64):
    bundle, solos = Bundle.fresh(recipes(), mnist), [Trainer(r, mnist) for r in recipes()]
    metrics = bundle.train_epoch()
    assert len(metrics) == len(solos)
    for m, solo in enumerate(solos):
        solo.train_epoch()
        assert metrics[m] is bundle.members[m].history[-1]
        assert_same_model(bundle.member(m), solo)
        assert_same_history(bundle.member(m), solo)


@pytest.mark.parametrize("sections, members", [
    ({"mi": {"entropy": "prior"}}, [(0, 2.0), (0, 0.0), (7, 2.0)]),  # the bound's entropies are floats
    ({"model": {"categories": None}, "mi": {"categorical": False}}, [(0, 2.0), (7, 2.0)]),  # no Gumbel draw; no twin
    ({}, [(0, 0.0), (7, 0.0)]),  # twins only: no MI term at all
    ({"mi": {"warmup_steps": 5}}, [(0, 2.0), (0, 0.0), (7, 2.0)]),  # lambda_mi ramped over the epoch's first steps
    ({"train": {"capacity": {"gaussian": {"cap": 2.0, "steps": 5}, "categorical": {"cap": 1.0, "steps": 5}}}},
     [(0, 2.0), (0, 0.0), (7, 2.0)]),  # both capacity schedules: best_mnist's loss
    ({"model": {"prior": "mixture", "prior_variance": "learned"}, "mi": {"gaussian": []}},
     [(0, 2.0), (0, 0.0), (7, 2.0)]),  # the mixture prior, its means and variances learned per member
    ({"model": {"prior": "mixture", "prior_spread": 0.0, "prior_variance": "learned"}, "mi": {"gaussian": []},
      "train": {"epochs": 3, "pretrain_epochs": 1}},
     [(0, 2.0), (0, 0.0), (7, 2.0)]),  # VaDE's start: an epoch of the ELBO, then each member's own k-means centres
])
def test_other_codes_and_groups_match_too(float64, sections, members):
    group = [make_spec(SYNTHETIC, **raw_study({"train": {"seed": s}, "mi": {"lambda_mi": lam}}, **sections)).recipe
             for s, lam in members]
    data = datasets.load(make_spec(SYNTHETIC).data)
    bundle, solos = Bundle.fresh(group, data), [Trainer(r, data) for r in group]
    for _ in range(1 + group[0].train.pretrain_epochs):  # one epoch of the method, after any pretraining
        bundle.train_epoch()
        for solo in solos:
            solo.train_epoch()
    for m, solo in enumerate(solos):
        assert_same_model(bundle.member(m), solo)
        assert_same_history(bundle.member(m), solo)


def test_each_member_gets_its_agreement_with_the_other_seeds_of_its_lambda_mi(mnist):
    group = recipes(members=[(0, 5.0), (0, 0.0), (1, 5.0), (1, 0.0), (2, 5.0), (2, 2.0)])
    bundle = Bundle.fresh(group, mnist)
    metrics = [epoch.metrics for epoch in next(bundle.epochs())]
    codes = [member.clusters(mnist.test_images).numpy() for member in bundle.members]
    # lambda 5: seeds 0, 1, 2 (members 0, 2, 4); the twins (members 1, 3) among themselves; lambda 2 is alone
    mi = mutual_information
    assert metrics[0]["seed_agreement"] == pytest.approx((mi(codes[0], codes[2]) + mi(codes[0], codes[4])) / 2)
    assert metrics[1]["seed_agreement"] == metrics[3]["seed_agreement"] == pytest.approx(mi(codes[1], codes[3]))
    assert "seed_agreement" not in metrics[5]
    assert bundle.members[0].history[-1] is metrics[0]  # in the history: a checkpoint keeps it
    # a lambda_mi = 0 configuration's twins are its own runs again: one model per seed, not two that agree fully
    zero = Bundle.fresh(recipes(members=[(0, 0.0), (0, 0.0), (1, 0.0), (1, 0.0)]), mnist)
    metrics = [epoch.metrics for epoch in next(zero.epochs())]
    codes = [member.clusters(mnist.test_images).numpy() for member in zero.members]
    assert [m["seed_agreement"] for m in metrics] == pytest.approx([mi(codes[0], codes[2])] * 4)
    # a model without a categorical code has no partition to agree on
    plain = [make_spec(SYNTHETIC, **raw_study({"train": {"seed": s}}, model={"categories": None},
                                              mi={"categorical": False, "gaussian": [0]})).recipe for s in (0, 1)]
    epoch = next(Bundle.fresh(plain, datasets.load(make_spec(SYNTHETIC).data)).epochs())
    assert all("seed_agreement" not in e.metrics for e in epoch)


def test_in_float32_the_members_stay_close_to_their_solo_runs(mnist):
    bundle, solos = Bundle.fresh(recipes(), mnist), [Trainer(r, mnist) for r in recipes()]
    assert bundle.vae_leaves["head.weight"].dtype == torch.float32
    bundle.train_epoch()
    for m, solo in enumerate(solos):
        solo.train_epoch()
        assert_same_history(bundle.member(m), solo, FLOAT32)


def test_one_adam_over_stacked_parameters_is_each_members_fused_adam():
    """Exactly, not to a tolerance: fused Adam is elementwise, whatever the tensor's size or layout."""
    g = torch.Generator().manual_seed(0)
    solo = [torch.randn(33, 17, generator=g, requires_grad=True) for _ in range(3)]
    stacked = torch.stack([p.detach() for p in solo]).requires_grad_()
    optimizers = [torch.optim.Adam([p], lr=1e-3, fused=True) for p in solo]
    bundled = torch.optim.Adam([stacked], lr=1e-3, fused=True)
    for _ in range(5):
        grads = torch.randn(3, 33, 17, generator=g) * torch.rand(3, 1, 1, generator=g) * 1e-3
        for p, grad, opt in zip(solo, grads, optimizers):
            p.grad = grad.clone()
            opt.step()
        stacked.grad = grads.clone()
        bundled.step()
    assert torch.equal(stacked.detach(), torch.stack([p.detach() for p in solo]))
    # and the state dicts convert both ways without a change
    states = [opt.state_dict() for opt in optimizers]
    for m, state in enumerate(states):
        back = unstack_adam(stack_adam(states), m)
        assert all(torch.equal(back["state"][0][k], state["state"][0][k]) for k in state["state"][0])


@pytest.mark.parametrize("sections", [
    {},
    # saved at the end of pretraining: the epoch after it starts each member's mixture at its k-means centres
    {"model": {"prior": "mixture", "prior_spread": 0.0}, "mi": {"gaussian": []},
     "train": {"epochs": 3, "pretrain_epochs": 1}},
])
def test_checkpoints_resume_alone_and_as_a_bundle(mnist, float64, tmp_path, sections):
    group = recipes(members=[(0, 5.0), (0, 0.0), (3, 5.0)], base=raw_study(MNIST_TINY, **sections))
    bundle = Bundle.fresh(group, mnist)
    bundle.train_epoch()
    paths = []
    for m, state in enumerate(bundle.state_dicts()):
        paths.append(tmp_path / f"member-{m}.pt")
        save_checkpoint(state, paths[-1])
    bundle.train_epoch()

    # a member's checkpoint is a solo Trainer's: it goes on alone as the bundle's member went on
    alone = Trainer(group[2], mnist)
    alone.load_state_dict(load_checkpoint(paths[2]))
    alone.train_epoch()
    assert_same_model(bundle.member(2), alone)
    assert_same_history(bundle.member(2), alone)

    # a bundle of the members' checkpoints goes on exactly as the bundle that wrote them
    resumed = Bundle.resume(group, mnist, [load_checkpoint(p) for p in paths])
    resumed.train_epoch()
    for ours, theirs in zip(resumed.state_dicts(), bundle.state_dicts()):
        assert state_equal(ours["vae"], theirs["vae"]) == [] and state_equal(ours["q"], theirs["q"]) == []
        assert strip_timing(ours["history"]) == strip_timing(theirs["history"])
        assert torch.equal(ours["sample_rng"], theirs["sample_rng"])


def test_members_of_one_configuration_only():
    data = datasets.load(make_spec(SYNTHETIC).data)
    with pytest.raises(InputError, match=r"member 1 differs from member 0 in model\.hidden, train\.lr; "):
        Bundle.fresh([make_spec().recipe, make_spec(model={"hidden": 16}, train={"lr": 1e-2, "seed": 4}).recipe],
                     data)
    with pytest.raises(InputError, match=r"model\.backbone: a bundle trains mlp members only, got 'conv'"):
        Bundle.fresh([make_spec(model={"backbone": "conv"}).recipe], data)
    with pytest.raises(InputError, match=r"mi\.invariance\.weight: a bundle does not train the invariance term"):
        Bundle.fresh([make_spec(mi={"invariance": {"weight": 1.0}}).recipe], data)
    with pytest.raises(InputError, match="no members"):
        Bundle.fresh([], data)
    ahead, behind = Trainer(make_spec().recipe, data), Trainer(make_spec(train={"seed": 1}).recipe, data)
    ahead.train_epoch()
    with pytest.raises(InputError, match="different steps"):
        Bundle([ahead, behind])


def test_a_diverging_member_is_named():
    data = datasets.load(make_spec(SYNTHETIC).data)
    bundle = Bundle.fresh([make_spec(train={"seed": s}).recipe for s in (0, 1, 2)], data)
    with torch.no_grad():
        bundle.vae_leaves["head.bias"][1] = float("nan")
    with pytest.raises(DivergenceError, match="at step 1: recon of bundle member 1 is not finite"):
        bundle.train_epoch()
