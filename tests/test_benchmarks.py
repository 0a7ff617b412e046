"""The throughput benchmark compares what it says it compares: the baseline does one more VAE forward per batch,
and the bundle does its members' work, no more; the command prints every row, the bundle's ratio and trials per
hour, and refuses a GPU it does not have."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import throughput
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


def _run(capsys, *args: str) -> str:
    throughput.main(["--seconds", "0.3", "--warmup", "0", "--rounds", "1", "--threads", "1", *args])
    return capsys.readouterr().out


def test_the_command_prints_every_row_the_bundle_ratio_and_trials_per_hour(mnist_root, capsys):
    out = _run(capsys)
    rows = [line.split()[0] for line in out.splitlines() if line.split()[:1] and line.split()[0] in (
        "baseline-conv", "vmistudy-conv", "vmistudy-mlp", "solo-mlp-x6", "bundle-mlp-x6") and "x" in line]
    assert rows[:5] == ["baseline-conv", "vmistudy-conv", "vmistudy-mlp", "solo-mlp-x6", "bundle-mlp-x6"], out
    assert "targets (conv >= 2x, mlp >= 10x baseline-conv) met:" in out
    assert "vs solo-mlp-x6 (the same six models, one vectorized step against six)" in out and "goal on cpu 2x" in out
    per_hour = [line for line in out.splitlines() if "trials per cpu-hour" in line]
    assert [line.split(":")[0] for line in per_hour] == ["solo-mlp-x6", "bundle-mlp-x6"], out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        throughput.main(["--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and err[0].startswith("error: --device cuda: torch sees no"), err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_on_a_gpu_the_project_rows_run_without_the_baseline(mnist_root, capsys):
    out = _run(capsys, "--device", "cuda")
    assert "baseline-conv" not in out and "goal on cuda 10x" in out and "trials per cuda-hour" in out, out
