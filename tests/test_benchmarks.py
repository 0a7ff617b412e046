"""The throughput benchmark compares what it says it compares: the baseline does one more VAE forward per batch,
and the bundle does its members' work, no more."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.throughput import (baseline_steps, bundle_steps, flops_per_image, members, project_steps, solo_steps,
                                   study)
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


def test_the_bundle_does_its_members_work(mnist_root):
    six = members(str(mnist_root), threads=2)
    data = datasets.load(six[0].data)
    with_mi, twin = (flops_per_image(project_steps(spec, data)) for spec in six[:2])
    assert six[1].mi.lambda_mi == 0 and twin < with_mi  # a twin skips the MI term's forward and backward
    assert flops_per_image(solo_steps(six, data)) == pytest.approx((with_mi + twin) / 2)
    assert flops_per_image(bundle_steps(six, data)) == pytest.approx((with_mi + twin) / 2)  # in the bundle too
