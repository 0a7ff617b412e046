"""The throughput benchmark compares what it says it compares: the baseline does one more VAE forward per batch."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.throughput import baseline_steps, flops_per_image, project_steps, study
from vmistudy import data as datasets
from vmistudy.trainer import build_vae

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backbone", ["conv", "mlp"])
def test_the_baseline_differs_by_one_vae_forward(mnist_root, backbone):
    spec = study(str(mnist_root), backbone, threads=2)
    project = flops_per_image(project_steps(spec, datasets.load(spec.data)))
    baseline = flops_per_image(baseline_steps(spec))

    x = torch.rand(spec.train.batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        build_vae(spec, (1, 28, 28))(x, 1.0)
    forward = counter.get_total_flops() / len(x)
    assert forward > 0
    assert baseline - project == pytest.approx(forward)
