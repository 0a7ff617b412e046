"""benchmarks.seed_agreement reads a solo study's final checkpoints, groups its runs into configurations and
scores each run's agreement with its configuration's other seeds as a bundle would (metrics.seed_agreement)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks import seed_agreement
from conftest import MNIST_SMALL, make_spec
from vmistudy import data as datasets
from vmistudy.metrics import accuracy_hungarian, consensus, mutual_information
from vmistudy.report import t_half_width
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


def synthetic_runs(seeds: int = 5) -> pd.DataFrame:
    """Runs of an MI configuration and its twins, without training: each seed's code is the labels, renamed, with a
    share of the images put in a random category (more for the twins)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    rows = []
    for lambda_mi, noise in ((5.0, 0.3), (0.0, 0.5)):
        key = json.dumps({"mi": {"lambda_mi": lambda_mi}, "train": {"epochs": 1}}, sort_keys=True)
        for seed in reversed(range(seeds)):  # out of order: ensembles take the seeds in order
            code = rng.permutation(10)[labels]
            noisy = rng.random(len(labels)) < noise
            code[noisy] = rng.integers(0, 10, noisy.sum())
            rows.append({"mi.lambda_mi": lambda_mi, "configuration": key, "seed": seed, "code": code,
                         "labels": labels, "accuracy_hungarian": accuracy_hungarian(labels, code)})
    return pd.DataFrame(rows)


def test_ensembles_are_disjoint_runs_of_seeds_each_voted_into_one_code():
    runs = synthetic_runs()
    table = seed_agreement.ensembles(runs, 2)
    assert table.seeds.tolist() == [(0, 1), (2, 3)] * 2  # seed 4 is a remainder, left out
    mi = runs[runs["mi.lambda_mi"] > 0].set_index("seed")
    votes = consensus([mi.code[2], mi.code[3]])
    assert table.consensus[1] == accuracy_hungarian(mi.labels[2], votes)
    assert table.mean_seed[1] == pytest.approx(mi.accuracy_hungarian[[2, 3]].mean())
    assert table.best_seed[1] == mi.accuracy_hungarian[[2, 3]].max()


def test_each_ensemble_is_paired_with_its_twins_ensemble_of_the_same_seeds():
    runs = synthetic_runs(seeds=9)
    lines = seed_agreement.ensemble_lines(runs, 3)
    table = seed_agreement.ensembles(runs, 3)
    mi, twins = table[:3], table[3:]
    diff = 100 * (mi.consensus.to_numpy() - twins.consensus.to_numpy())
    assert lines[0].startswith("ensembles of 3 seeds (disjoint, in seed order)")
    assert lines[1].startswith(f"  mi.lambda_mi=5.0: 3 ensemble(s), consensus {100 * mi.consensus.mean():.1f} +- ")
    assert lines[2] == (f"    against the lambda_mi = 0 twins' ensembles of the same seeds: {diff.mean():.1f} +- "
                        f"{100 * t_half_width((diff / 100).tolist()):.1f} (n=3) points, higher in "
                        f"{(diff > 0).sum()} of 3")
    assert lines[3].startswith("  mi.lambda_mi=0.0: 3 ensemble(s)") and len(lines) == 4  # twins have no twins


def test_the_command_prints_ensembles_and_refuses_an_ensemble_of_one(experiment, capsys):
    seed_agreement.main([str(experiment), "--ensemble", "2"])
    out = capsys.readouterr().out.splitlines()
    start = out.index("ensembles of 2 seeds (disjoint, in seed order), each voted into one code without labels:")
    assert [line.split(":")[0] for line in out[start + 1:]] == [
        "  train.capacity.gaussian.cap=2.0", "  train.capacity.gaussian.cap=5.0"]
    with pytest.raises(SystemExit) as exited:
        seed_agreement.main([str(experiment), "--ensemble", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and "--ensemble: 1 is not allowed" in err[0]
