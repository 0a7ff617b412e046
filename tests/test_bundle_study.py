"""Bundle trials (search.bundle) through the real service: one Tune trial per configuration, its members trained
as one vectorized model, each member with its own MLflow run, figures and model; a killed study resumes them."""
from __future__ import annotations

import os
import signal
import sys

import optuna
import pytest
from mlflow import MlflowClient

from conftest import make_spec
from ray_support import (SNAPSHOT_EVERY_SECOND, results, run_study, saved_epochs, start, stop_group, tiny_study,
                          wait_for)
from vmistudy import config, study, tracking
from vmistudy.errors import InputError

METRICS = ("elbo", "mi_lower_bound", "kl_categorical", "accuracy_hungarian")
# one configuration, its 2 seeds and their twins; figures and the model at the end only
PAIRED = {"search__algorithm": "grid", "search__space": {"mi.lambda_mi": {"choice": [5.0]}},
          "search__replicates": 2, "search__paired_baseline": True, "search__scheduler__name": "none",
          "tracking__figures_every": 0}


def _trial_runs(storage, name: str) -> list:
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return [run for run in runs if tracking.PARENT_TAG in run.data.tags]


def _member_runs(storage, name: str) -> dict[tuple[int, float], object]:
    """The trial runs of a one-configuration study by (seed, lambda_mi)."""
    return {(int(r.data.params["train.seed"]), float(r.data.params["mi.lambda_mi"])): r
            for r in _trial_runs(storage, name)}


@pytest.mark.ray
def test_a_bundle_trial_is_its_members_trained_alone_each_with_its_own_run(tmp_path):
    bundled = tiny_study(tmp_path, "bundled", search__bundle=True, **PAIRED)
    code, log = run_study(bundled, log=tmp_path / "bundled.log")
    assert code == 0, log[-3000:]
    solo = tiny_study(tmp_path, "solo", **PAIRED)
    code, solo_log = run_study(solo, log=tmp_path / "solo.log")
    assert code == 0, solo_log[-3000:]

    # Tune ran one trial, reporting the mean of the members with lambda_mi > 0, and each member's metrics
    (history,) = results(tmp_path / "results" / "bundled").values()
    assert [row["epoch"] for row in history] == [1, 2, 3]
    members = history[-1][study.MEMBERS]
    assert [(m["seed"], m["lambda_mi"]) for m in members] == [(0, 5.0), (0, 0.0), (1, 5.0), (1, 0.0)]
    assert history[-1]["accuracy_hungarian"] == pytest.approx((members[0]["accuracy_hungarian"]
                                                               + members[2]["accuracy_hungarian"]) / 2)
    assert "4 trials (in 1 bundles) of study bundled" in log and "a bundle of 4" in log, log[-3000:]
    # each seed's agreement with the other seed of its lambda_mi (two seeds: one pair, the same for both)
    assert members[0]["seed_agreement"] == members[2]["seed_agreement"] == history[-1]["seed_agreement"]
    assert members[1]["seed_agreement"] == members[3]["seed_agreement"]

    # each member has its own finished run, every epoch once, its final figures and model; and is, to float
    # rounding, the trial the service trains alone
    runs, alone = _member_runs(tmp_path / "results", "bundled"), _member_runs(tmp_path / "results", "solo")
    assert runs.keys() == alone.keys() == {(0, 5.0), (0, 0.0), (1, 5.0), (1, 0.0)}
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    for key, run in runs.items():
        assert run.info.status == "FINISHED", key
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "elbo")) == [1, 2, 3]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures/final")}
        assert "figures/final/categorical_swaps.png" in artifacts, (key, artifacts)
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "seed_agreement")) == [1, 2, 3]
        assert "seed_agreement" not in alone[key].data.metrics  # solo trials: no seeds side by side
        for metric in METRICS:
            assert run.data.metrics[metric] == pytest.approx(alone[key].data.metrics[metric], rel=1e-4, abs=1e-5), \
                (key, metric)

    models = client.search_logged_models([client.get_experiment_by_name("bundled").experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in runs.values())

    # the search's history: one Optuna trial for the configuration, its seeds' values and its twins'
    (trial,) = optuna.load_study(study_name="bundled", storage=f"sqlite:///{tmp_path}/results/optuna.db").trials
    assert trial.user_attrs["values"] == [runs[(0, 5.0)].data.metrics["accuracy_hungarian"],
                                          runs[(1, 5.0)].data.metrics["accuracy_hungarian"]]
    assert trial.user_attrs["twin_values"] == [runs[(0, 0.0)].data.metrics["accuracy_hungarian"],
                                               runs[(1, 0.0)].data.metrics["accuracy_hungarian"]]


@pytest.mark.ray
def test_driver_sigkill_then_resume_continues_each_bundle_and_its_members_runs(tmp_path):
    spec = tiny_study(tmp_path, data__train_size=4096, train__epochs=6, search__num_samples=2,
                      search__scheduler__name="none", search__bundle=True, search__replicates=2,
                      search__paired_baseline=True, tracking__figures_every=0)
    experiment = tmp_path / "results" / "tiny"
    driver = start([sys.executable, "-m", "vmistudy.run", str(spec)], tmp_path / "first.log",
                   **SNAPSHOT_EVERY_SECOND)
    try:  # killed while a bundle has reported a part of its epochs to Tune
        wait_for(lambda: any(2 <= len(h) < 6 for h in results(experiment).values()), 300, "two epochs", driver)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        stop_group(driver.pid)
    saved = saved_epochs(experiment)
    assert any(epoch < 6 for epoch in saved.values()), saved

    code, log = run_study(spec, "--resume", log=tmp_path / "resume.log")
    assert code == 0, log[-3000:]
    after = results(experiment)
    assert len(after) == 2
    for name, history in after.items():
        epochs = [row["epoch"] for row in history]
        assert epochs == sorted(set(epochs)) and epochs[-1] == 6, (name, epochs)
        assert len(history[-1][study.MEMBERS]) == 4
    # every member's run holds each epoch once and finished: the bundle went on from its saved state
    runs = _trial_runs(tmp_path / "results", "tiny")
    assert sorted(run.info.run_name.split("/")[1] for run in runs) == sorted([f"member_{m}" for m in range(4)] * 2)
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "elbo"))
        assert steps == [1, 2, 3, 4, 5, 6] and run.info.status == "FINISHED", (run.info.run_name, steps)


@pytest.mark.parametrize("changes, expected", [
    ({"model": {"backbone": "conv"}}, "search.bundle: bundles train the mlp backbone only"),
    ({"search": {"bundle": True, "space": {"model.backbone": {"choice": ["mlp", "conv"]}}}},
     "search.bundle: bundles train the mlp backbone only"),
    ({"replay": {"table": __file__}}, "search.bundle: a replayed study (replay.table) trains no models to bundle"),
])
def test_what_a_bundle_cannot_train_is_refused_naming_the_field(changes, expected):
    raw = make_spec(search={"bundle": True}).model_dump()
    for section, values in changes.items():
        raw[section].update(values)
    with pytest.raises(InputError) as info:
        config.validate(raw, source="s.yaml")
    assert str(info.value).startswith(f"s.yaml: {expected}"), str(info.value)


def test_kept_calls_of_bundle_members_are_found_beside_their_trial(tmp_path):
    for folder in ("", "train_trial_a", "train_trial_b/member_1", "train_trial_b/member_3"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / tracking.KEPT).write_text("{}")
    (tmp_path / "train_trial_b" / tracking.KEPT_FILES / "x").mkdir(parents=True)  # the files of kept calls
    (tmp_path / "train_trial_b" / tracking.KEPT_FILES / "x" / "figure.png").write_bytes(b"")
    found = tracking._kept_files(str(tmp_path))
    assert sorted(found, key=str) == sorted([None, "train_trial_a", "train_trial_b/member_1",
                                             "train_trial_b/member_3"], key=str)
