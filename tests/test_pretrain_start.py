"""benchmarks.pretrain_start scores the partition a trial's mixture prior would start from: pretrained to an
epoch inside a longer pretraining, the same centres a trial pretrained for exactly that long starts from."""
from __future__ import annotations

import pytest
import torch

from benchmarks import pretrain_start
from conftest import REPO
from vmistudy import data
from vmistudy.cli import load_study
from vmistudy.metrics import accuracy_hungarian
from vmistudy.trainer import Trainer

pytestmark = pytest.mark.slow

STUDY = str(REPO / "studies" / "kmeans_mnist.yaml")
SMALL = ["data.subset=3000", "data.test_subset=300", "train.threads=1"]


def test_the_scored_partition_is_the_one_a_trial_starts_from(mnist_root, capsys):
    rows = pretrain_start.pretrain(STUDY, SMALL, seed=3, stops=[1, 2])
    assert sorted(rows) == [1, 2] and "seed 3  epoch   2" in capsys.readouterr().out

    spec = load_study(STUDY, [*SMALL, "train.seed=3", "train.pretrain_epochs=1", "train.epochs=2"])
    trial = Trainer(spec.recipe, data.load(spec.recipe.data))
    assert trial.train_epoch()["elbo"] == rows[1]["elbo"]
    trial.start_prior()  # what its second epoch begins with
    z, _ = trial.start_centres()
    clusters = torch.cdist(z.mean, trial.vae.prior_means.detach()).argmin(1)
    assert accuracy_hungarian(trial.data.train_labels.numpy(), clusters.numpy()) == rows[1]["start_accuracy"]
    assert 0.1 < rows[1]["start_accuracy"] < 1


def test_the_summary_gives_each_epoch_over_the_seeds():
    runs = {0: {3: {"start_accuracy": 0.6, "elbo": -110.0}}, 1: {3: {"start_accuracy": 0.7, "elbo": -112.0}}}
    lines = pretrain_start.summary(runs)
    assert lines[1].split()[:2] == ["3", "0.650"] and lines[1].endswith("-111.0")
    assert "+-" in lines[1]
