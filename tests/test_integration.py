"""End to end on real MNIST: the MI regularizer does what the thesis claims; the CLIs produce what they document."""
from __future__ import annotations

import json
import math

import pytest

from conftest import MNIST_SMALL, make_spec, raw_study, run_cli, state_equal, write_study
from vmistudy import config
from vmistudy import data as datasets
from vmistudy.objective import temperature
from vmistudy.trainer import Trainer, load_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 3
MNIST_6K = raw_study(MNIST_SMALL, data={"subset": 6000, "test_subset": 1000},
                     model={"hidden": 256}, train={"epochs": EPOCHS, "batch_size": 64, "lr": 2e-3, "q_lr": 2e-3})
DOCUMENTED = (["elbo", "recon", "kl_continuous", "kl_categorical"] + [f"kl_z{i}" for i in range(16)]
              + ["mi_lower_bound", "mi_lower_bound_categorical", "temperature", "accuracy_hungarian",
                 "accuracy_majority", "accuracy_majority_train", "nmi", "images_per_second", "epoch_seconds",
                 "train_loss", "train_mi_lower_bound", "epoch", "step"])


@pytest.fixture(scope="module")
def lambda_runs(mnist_root):
    images = datasets.load(make_spec(MNIST_6K).data)
    runs = {}
    for lam in (0.0, 5.0):
        trainer = Trainer(make_spec(MNIST_6K, mi={"lambda_mi": lam}).recipe, images)
        initial = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
        for _ in range(EPOCHS):
            trainer.train_epoch()
        runs[lam] = (trainer, initial)
    return runs


def test_mi_regularizer_raises_mi_and_accuracy(lambda_runs):
    (t0, init0), (t5, init5) = lambda_runs[0.0], lambda_runs[5.0]
    assert state_equal(init0, init5) == [], "both runs must start from the same weights"
    m0, m5 = t0.history[-1], t5.history[-1]
    print(f"\nMNIST 6000/1000, mlp, {EPOCHS} epochs, seed 0:\n"
          f"  lambda_mi=0: mi_lower_bound {m0['mi_lower_bound']:.3f}  accuracy_hungarian "
          f"{m0['accuracy_hungarian']:.3f}  nmi {m0['nmi']:.3f}  elbo {m0['elbo']:.1f}\n"
          f"  lambda_mi=5: mi_lower_bound {m5['mi_lower_bound']:.3f}  accuracy_hungarian "
          f"{m5['accuracy_hungarian']:.3f}  nmi {m5['nmi']:.3f}  elbo {m5['elbo']:.1f}")
    assert m5["mi_lower_bound"] > m0["mi_lower_bound"] + 0.3
    assert m5["accuracy_hungarian"] > m0["accuracy_hungarian"] + 0.05
    assert m5["mi_lower_bound"] <= math.log(10) + 1e-6
    # the MI bound grows over the epochs with the regularizer on
    assert t5.history[-1]["mi_lower_bound"] > t5.history[0]["mi_lower_bound"]
    # training improved the ELBO in both runs
    for t in (t0, t5):
        assert t.history[-1]["elbo"] > t.history[0]["elbo"]


def test_every_documented_metric_is_reported(lambda_runs):
    for lam, (trainer, _) in lambda_runs.items():
        assert [m["epoch"] for m in trainer.history] == list(range(1, EPOCHS + 1))
        for m in trainer.history:
            missing = [k for k in DOCUMENTED if k not in m]
            assert not missing, f"lambda {lam}: missing {missing}"
            assert set(m) == config.metric_names(trainer.recipe)
            assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values()), m
        m = trainer.history[-1]
        assert m["elbo"] == pytest.approx(-(m["recon"] + m["kl_continuous"] + m["kl_categorical"]), rel=1e-5)
        assert m["kl_continuous"] == pytest.approx(sum(m[f"kl_z{i}"] for i in range(16)), rel=1e-4)
        assert all(m[f"kl_z{i}"] >= 0 for i in range(16)) and m["kl_categorical"] >= 0
        assert m["mi_lower_bound"] == pytest.approx(m["mi_lower_bound_categorical"])
        assert m["step"] == EPOCHS * math.ceil(6000 / 64) and m["epoch"] == EPOCHS
        assert m["temperature"] == temperature(m["step"], trainer.recipe.train.temperature)
        assert 0.1 <= m["accuracy_hungarian"] <= m["accuracy_majority"] <= 1 and 0 <= m["nmi"] <= 1
        assert m["images_per_second"] > 0
        # metrics are a function of the weights: evaluating again gives the same numbers
        again = trainer.evaluate()
        assert {k: again[k] for k in again} == {k: m[k] for k in again}


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, mnist_root):
    tmp = tmp_path_factory.mktemp("integration")
    study = write_study(tmp / "study.yaml", raw_study(MNIST_SMALL, train={"epochs": 1}))
    proc = run_cli("train", study, "--out", tmp / "run")
    return tmp / "run", proc


@pytest.mark.subprocess
def test_cli_run_writes_metrics_checkpoint_and_model(cli_model):
    out, proc = cli_model
    assert proc.returncode == 0, proc.stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["epoch"] == 1 and all(k in metrics for k in DOCUMENTED)
    assert f"model: {out / 'model.pt'}" in proc.stdout
    model = load_checkpoint(out / "model.pt")
    assert set(model) == {"spec", "vae", "epoch"} and model["epoch"] == 1
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert state_equal(model["vae"], checkpoint["vae"]) == []
    assert config.validate(model["spec"]).mi.lambda_mi == MNIST_SMALL["mi"]["lambda_mi"]


@pytest.mark.subprocess
def test_evaluate_cli_on_a_trained_model(cli_model):
    out, proc = cli_model
    assert proc.returncode == 0, proc.stderr
    ev = run_cli("evaluate", out / "model.pt", "--steps", "200", "--eval-batches", "4", "--json")
    assert ev.returncode == 0, ev.stderr
    results = json.loads(ev.stdout.strip().splitlines()[-1])
    print("\nevaluate:", json.dumps(results, indent=1))
    assert set(results) == {"encoder", "prior", "upper_reference"}
    for path in ("encoder", "prior"):
        r = results[path]
        assert math.isfinite(r["mi_lower_bound"]) and math.isfinite(r["mi_standard_error"])
        assert r["mi_lower_bound"] == pytest.approx(r["log_q_categorical"] + r["entropy_categorical"], abs=1e-6)
        assert r["mi_lower_bound"] <= math.log(10) + 1e-6
    assert results["prior"]["entropy_categorical"] == pytest.approx(math.log(10), abs=1e-9)
    assert 0 < results["encoder"]["entropy_categorical"] <= math.log(10) + 1e-9
    ref = results["upper_reference"]
    assert set(ref) == {"kl_upper_reference_categorical"}
    assert math.isfinite(ref["kl_upper_reference_categorical"]) and ref["kl_upper_reference_categorical"] >= 0


@pytest.mark.subprocess
def test_fresh_q_bounds_of_the_last_epoch_are_what_evaluate_finds(tmp_path, mnist_root):
    study = write_study(tmp_path / "study.yaml", raw_study(MNIST_SMALL, train={"epochs": 2}, mi={"fresh_q_steps": 40}))
    proc = run_cli("train", study, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    first, last = map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    frozen = {"frozen_mi_lower_bound_encoder", "frozen_mi_lower_bound_prior"}
    assert not frozen & set(first) and frozen <= set(last)
    ev = run_cli("evaluate", tmp_path / "run" / "model.pt", "--steps", "40", "--json")
    assert ev.returncode == 0, ev.stderr
    results = json.loads(ev.stdout.strip().splitlines()[-1])
    for path in ("encoder", "prior"):
        assert last[f"frozen_mi_lower_bound_{path}"] == pytest.approx(results[path]["mi_lower_bound"], abs=1e-6)


@pytest.mark.subprocess
def test_evaluate_cli_rejects_bad_arguments(cli_model):
    out, _ = cli_model
    zero = run_cli("evaluate", out / "model.pt", "--steps", "0")
    assert zero.returncode == 2 and zero.stderr.startswith("error:") and "--steps" in zero.stderr
    assert zero.stdout == ""
