"""train.precision: bfloat16 autocast runs the step's matmuls in bf16, keeps weights, optimizer and evaluation
in float32, and trains to the float32 run's metrics within the seeds' noise."""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, MNIST_SMALL, make_spec
from vmistudy import data as datasets
from vmistudy.bundle import Bundle
from vmistudy.trainer import Trainer



def small(lambda_mi: float = 5.0, **train):
    """MNIST_SMALL on 600 images, 2 epochs, with `train` fields."""
    return make_spec(MNIST_SMALL, data={"subset": 600, "test_subset": 200}, train={"epochs": 2, **train},
                     mi={"lambda_mi": lambda_mi})


def linear_output_dtypes(trainer: Trainer) -> tuple[list[torch.dtype], object]:
    """The dtypes the VAE's and Q's linear layers put out, as they run; and the hooks, to remove."""
    seen = []
    layers = [m for net in (trainer.vae, trainer.q) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype)) for layer in layers]
    return seen, hooks


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_steps_run_matmuls_in_bf16_and_keep_the_rest_float32(mnist_root, device):
    spec = small(precision="bfloat16", device=device)
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    seen, hooks = linear_output_dtypes(trainer)
    images = trainer.images(trainer.data.train_images[:100])
    out = trainer.train_step(images)
    assert seen and set(seen) == {torch.bfloat16}  # both forward passes of the step, VAE and Q
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert {p.dtype for p in [*trainer.vae.parameters(), *trainer.q.parameters()]} == {torch.float32}
    seen.clear()
    metrics = trainer.evaluate()
    assert set(seen) == {torch.float32}  # the metrics are float32 numbers, whatever the training precision
    for hook in hooks:
        hook.remove()
    assert all(v == v for v in metrics.values())


@pytest.mark.slow
def test_bfloat16_metrics_are_within_the_seeds_noise_of_float32(mnist_root):
    """Same seed, both precisions: the final ELBO and train loss differ by less than another seed moves them."""
    runs = {}
    for precision in ("float32", "bfloat16"):
        for seed in (0, 1):
            spec = small(seed=seed, precision=precision)
            trainer = Trainer(spec.recipe, datasets.load(spec.data))
            for _ in range(spec.train.epochs):
                metrics = trainer.train_epoch()
            runs[precision, seed] = metrics
    for key in ("elbo", "train_loss"):
        noise = abs(runs["float32", 0][key] - runs["float32", 1][key])
        for seed in (0, 1):
            gap = abs(runs["bfloat16", seed][key] - runs["float32", seed][key])
            assert gap < noise and gap < 0.01 * abs(runs["float32", seed][key]), (key, seed, gap, noise)


def test_a_bundle_trains_in_bfloat16_too(mnist_root):
    recipes = [small(lam, precision=p).recipe for p in ("bfloat16", "float32") for lam in (5.0, 0.0)]
    data = datasets.load(recipes[0].data)
    half, full = Bundle.fresh(recipes[:2], data), Bundle.fresh(recipes[2:], data)
    x = datasets.as_float(data.train_images[torch.arange(200).view(2, 100)])
    for _ in range(3):
        ours, theirs = half.train_step(x), full.train_step(x)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=0.02, atol=0.05)  # bf16 rounding, not another model
    assert not torch.equal(ours, theirs)  # and bf16 did run
