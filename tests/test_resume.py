"""Stopping and resuming gives exactly the run that was never stopped; divergence is reported by step and term."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import time

import pytest
import torch

from conftest import (DEVICES, MNIST_SMALL, PYTHON, REPO, SYNTHETIC, make_spec, raw_study, run_cli, state_equal,
                      strip_timing, write_study)
from vmistudy import data as datasets
from vmistudy import train
from vmistudy.errors import InputError
from vmistudy.trainer import DivergenceError, Trainer, load_checkpoint, save_checkpoint


def _resume_matches_straight_run(spec, tmp_path):
    images = datasets.load(spec.data)
    straight = Trainer(spec.recipe, images)
    for _ in range(3):
        straight.train_epoch()

    first = Trainer(spec.recipe, images)
    first.train_epoch()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(first.state_dict(), path)
    assert path.is_file() and not path.with_suffix(".tmp").exists()
    del first
    resumed = Trainer(spec.recipe, images)
    resumed.load_state_dict(load_checkpoint(path))
    assert resumed.epoch == 1 and resumed.step > 0 and len(resumed.history) == 1
    for _ in range(2):
        resumed.train_epoch()

    assert resumed.epoch == straight.epoch == 3 and resumed.step == straight.step
    assert state_equal(straight.vae.state_dict(), resumed.vae.state_dict()) == []
    assert state_equal(straight.q.state_dict(), resumed.q.state_dict()) == []
    assert strip_timing(straight.history) == strip_timing(resumed.history)
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_resume_in_process_synthetic(tmp_path, device):
    _resume_matches_straight_run(make_spec(mi={"lambda_mi": 3.0}, train={"device": device}), tmp_path)


@pytest.mark.slow
def test_resume_in_process_with_the_invariance_term(tmp_path):
    """The transformed copies are drawn on the sampling generator, which the checkpoint keeps."""
    _resume_matches_straight_run(make_spec(mi={"lambda_mi": 3.0, "invariance": {"weight": 1.0}}), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["unit", "learned"])
def test_resume_in_process_across_the_end_of_pretraining(tmp_path, variance):
    """Resumed from the last pretraining epoch's checkpoint, the mixture's components start where they would have."""
    _resume_matches_straight_run(make_spec(model={"prior": "mixture", "prior_spread": 0.0, "prior_variance": variance},
                                           train={"pretrain_epochs": 1}, mi={"lambda_mi": 3.0, "gaussian": []}),
                                 tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_resume_in_process_mnist(tmp_path, mnist_root, device):
    _resume_matches_straight_run(make_spec(MNIST_SMALL, train={"device": device}), tmp_path)


def test_resume_without_restoring_the_rngs_would_differ(tmp_path):
    """The test above has power: dropping the RNG state from the checkpoint changes the continuation."""
    spec = make_spec()
    images = datasets.load(spec.data)
    straight = Trainer(spec.recipe, images)
    straight.train_epoch()
    straight.train_epoch()
    first = Trainer(spec.recipe, images)
    first.train_epoch()
    state = first.state_dict()
    fresh = Trainer(spec.recipe, images)
    state["data_rng"], state["sample_rng"] = fresh.data_rng.get_state(), fresh.sample_rng.get_state()
    resumed = Trainer(spec.recipe, images)
    resumed.load_state_dict(state)
    resumed.train_epoch()
    assert state_equal(straight.vae.state_dict(), resumed.vae.state_dict()) != []


def test_checkpoint_holds_plain_state(tmp_path):
    spec = make_spec()
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    trainer.train_epoch()
    save_checkpoint(trainer.state_dict(), tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only loading must accept it
    assert state["spec"] == spec.recipe.model_dump()
    assert state["epoch"] == 1 and state["step"] == math.ceil(300 / 64)
    assert state["history"][0]["epoch"] == 1


# ------------------------------------------------------------------------------------------------------ CLI

def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    study = write_study(tmp / "study.yaml", raw_study(SYNTHETIC, train={"epochs": 2}))
    straight = run_cli("train", study, "--out", tmp / "straight")
    one = run_cli("train", study, "--out", tmp / "resumed", "--set", "train.epochs=1")
    one_lines = (tmp / "resumed" / "metrics.jsonl").read_text() if one.returncode == 0 else None
    resumed = run_cli("train", study, "--resume", tmp / "resumed", "--set", "train.epochs=2")
    return tmp, study, straight, one, one_lines, resumed


@pytest.mark.subprocess
def test_cli_resume_equals_straight_run(cli_runs):
    tmp, _, straight, one, one_lines, resumed = cli_runs
    for proc in (straight, one, resumed):
        assert proc.returncode == 0, proc.stderr
    assert len(one_lines.splitlines()) == 1
    a, b = _lines(tmp / "straight" / "metrics.jsonl"), _lines(tmp / "resumed" / "metrics.jsonl")
    assert len(a) == len(b) == 2
    assert [m["epoch"] for m in b] == [1, 2]
    assert all(m["images_per_second"] > 0 for m in a + b)
    assert strip_timing(a) == strip_timing(b)
    # the printed lines are the metrics lines
    printed = [json.loads(line) for line in straight.stdout.splitlines() if line.startswith("{")]
    assert printed == a
    for run in ("straight", "resumed"):
        model = load_checkpoint(tmp / run / "model.pt")
        assert model["epoch"] == 2
    sa, sb = load_checkpoint(tmp / "straight" / "model.pt"), load_checkpoint(tmp / "resumed" / "model.pt")
    assert state_equal(sa["vae"], sb["vae"]) == []


@pytest.mark.subprocess
def test_ctrl_c_in_train_says_how_to_continue_exits_130_and_resume_goes_on(tmp_path):
    study = write_study(tmp_path / "study.yaml", raw_study(SYNTHETIC, train={"epochs": 100000}))
    out = tmp_path / "run"
    proc = subprocess.Popen([PYTHON, "-m", "vmistudy.train", str(study), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or len(_lines(out / "metrics.jsonl")) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "two epochs"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-2:] == [f"{out} holds the last finished epoch: --resume {out} continues "
                                                "from it", "interrupted (Ctrl-C)"]
    done = len(_lines(out / "metrics.jsonl"))
    resumed = run_cli("train", study, "--resume", out, "--set", f"train.epochs={done + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["epoch"] for m in _lines(out / "metrics.jsonl")] == list(range(1, done + 2))


@pytest.mark.subprocess
def test_cli_resume_with_a_changed_field_fails_naming_it(cli_runs):
    tmp, study, *_ = cli_runs
    before = (tmp / "resumed" / "metrics.jsonl").read_text()
    proc = run_cli("train", study, "--resume", tmp / "resumed", "--set", "train.epochs=3", "--set", "mi.lambda_mi=7")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "mi.lambda_mi" in lines[0] and "7" in lines[0]
    assert (tmp / "resumed" / "metrics.jsonl").read_text() == before


@pytest.mark.subprocess
def test_cli_refuses_to_overwrite_a_run(cli_runs):
    tmp, study, *_ = cli_runs
    proc = run_cli("train", study, "--out", tmp / "straight")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "--resume" in proc.stderr
    assert len(_lines(tmp / "straight" / "metrics.jsonl")) == 2


# ----------------------------------------------------------------------------------------------- divergence

def test_absurd_learning_rate_raises_divergence_error():
    spec = make_spec(train={"lr": 1e30, "q_lr": 1e30})
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    with pytest.raises(DivergenceError) as info:
        for _ in range(3):
            trainer.train_epoch()
    err = info.value
    assert err.step >= 1 and err.step == trainer.step + 1, "the step that failed, 1-based; it was not taken"
    assert f"step {err.step}" in str(err)
    terms = ("recon", "kl_continuous", "kl_categorical", "log_q_gaussian", "log_q_categorical", "mi_lower_bound")
    assert err.term in terms and err.term in str(err)


def test_nan_weights_raise_divergence_error_at_the_first_step():
    spec = make_spec()
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    with torch.no_grad():
        trainer.vae.decoder[0].weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError) as info:
        trainer.train_epoch()
    assert info.value.step == 1
    assert str(info.value) == "training diverged at step 1: recon is not finite"
    assert trainer.history == []


@pytest.mark.parametrize("lambda_mi", [0.0, 2.0])
def test_nan_in_q_names_the_q_term(lambda_mi):
    spec = make_spec(mi={"lambda_mi": lambda_mi, "gaussian": [0], "categorical": False})
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    with torch.no_grad():
        trainer.q.head.bias.fill_(float("nan"))
    with pytest.raises(DivergenceError) as info:
        trainer.train_epoch()
    assert info.value.step == 1 and info.value.term == "log_q_gaussian"
    assert str(info.value) == "training diverged at step 1: log_q_gaussian is not finite"


def test_resume_state_raises_input_errors_naming_the_folder_or_field(tmp_path):
    spec = make_spec(train={"epochs": 1})
    with pytest.raises(InputError, match=r"--resume .*: no checkpoint.pt there"):
        train.resume_state(tmp_path, spec.recipe)
    trainer = Trainer(spec.recipe, datasets.load(spec.data))
    trainer.train_epoch()
    save_checkpoint(trainer.state_dict(), tmp_path / "checkpoint.pt")
    assert train.resume_state(tmp_path, make_spec(train={"epochs": 2, "threads": 1}).recipe)["epoch"] == 1
    with pytest.raises(InputError, match=r"mi.lambda_mi is 7.0 here but 2.0 in the saved spec"):
        train.resume_state(tmp_path, make_spec(mi={"lambda_mi": 7.0}).recipe)
