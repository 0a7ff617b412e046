"""benchmarks.seed_agreement reads a solo study's final checkpoints, groups its runs into configurations and
scores each run's agreement with its configuration's other seeds as a bundle would (metrics.seed_agreement)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import seed_agreement
from conftest import MNIST_SMALL, make_spec
from vmistudy import data as datasets
from vmistudy.metrics import accuracy_hungarian, consensus, mutual_information
from vmistudy.trainer import Trainer, save_checkpoint

RUNS = [(cap, seed) for cap in (2.0, 5.0) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def experiment(mnist_root, tmp_path_factory):
    """A study's folder as Tune leaves it: one trial per run, its last checkpoint in checkpoint_000000/."""
    folder = tmp_path_factory.mktemp("results") / "caps"
    specs = [make_spec(MNIST_SMALL, data={"subset": 300, "test_subset": 100},
                       train={"epochs": 1, "seed": seed, "capacity": {"gaussian": {"cap": cap}}}) for cap, seed in RUNS]
    data = datasets.load(specs[0].data)
    for i, spec in enumerate(specs):
        trainer = Trainer(spec.recipe, data)
        trainer.train_epoch()
        trial = folder / f"train_trial_{i:05d}" / "checkpoint_000000"
        trial.mkdir(parents=True)
        save_checkpoint(trainer.state_dict(), trial / "checkpoint.pt")
    return folder


def test_each_runs_agreement_is_its_mean_mi_with_its_configurations_other_seeds(experiment):
    runs = seed_agreement.table(seed_agreement.final_models(experiment))
    assert len(runs) == 6 and runs.groupby("train.capacity.gaussian.cap").size().tolist() == [3, 3]
    models = seed_agreement.final_models(experiment)
    codes = [m.clusters(m.data.test_images).numpy() for m in models]  # in the order of RUNS: trials sorted by name
    expected = np.mean([mutual_information(codes[0], codes[1]), mutual_information(codes[0], codes[2])])
    assert runs.seed_agreement.iloc[0] == pytest.approx(expected)
    assert runs.mi_lower_bound_categorical.iloc[0] == models[0].history[-1]["mi_lower_bound_categorical"]
    labels = models[0].data.test_labels.numpy()
    assert runs.consensus.tolist() == [accuracy_hungarian(labels, consensus(codes[:3]))] * 3 + \
        [accuracy_hungarian(labels, consensus(codes[3:]))] * 3


def test_the_command_prints_each_scores_pick_against_the_labels(experiment, capsys):
    seed_agreement.main([str(experiment)])
    out = capsys.readouterr().out
    assert out.startswith("6 runs from 1 experiment(s)")
    assert "| train.capacity.gaussian.cap | seeds | accuracy_hungarian | seed_agreement |" in out
    assert "the labels pick train.capacity.gaussian.cap=" in out
    for name in ("seed agreement picks", "the categorical MI bound picks"):
        assert name in out and "points below (goal 2: " in out and "over the 2 configurations" in out
    assert "| consensus |" in out and "the consensus of each configuration's seeds (a vote after matching" in out


def test_a_folder_without_trials_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        seed_agreement.main([str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no train_trial_*/checkpoint_*/checkpoint.pt" in err[0]
