"""The study service on a real local Ray (127.0.0.1, token authentication on): search, ASHA, resume, failures."""
from __future__ import annotations

import os
import re
import sys
import signal

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.repeater import TRIAL_INDEX

from conftest import REPO, make_spec, run_cli
from ray_support import (SNAPSHOT_EVERY_SECOND, results, run_study, saved_epochs, start, stop_group, tiny_study,
                         trial_workers, wait_for)
from vmistudy import config, run, study
from vmistudy.config import SUBSET_PATH
from vmistudy.errors import InputError
from vmistudy.tracking import ROLE_TAG, TRIAL_TAG

SEARCH = {"metric": "accuracy_hungarian", "replicates": 2, "paired_baseline": True,
          "subsets": {"cat": {"categorical": True}, "cat+z01": {"categorical": True, "gaussian": [0, 1]}},
          "space": {SUBSET_PATH: {"choice": ["cat", "cat+z01"]},
                    "mi.lambda_mi": {"loguniform": [1.0, 10.0]},
                    "train.temperature.min": {"uniform": [0.2, 0.5], "when": {SUBSET_PATH: "cat+z01"}}}}


def test_trial_spec_applies_samples_seeds_and_twins():
    spec = make_spec(search=SEARCH, train={"seed": 7})
    config = {SUBSET_PATH: "cat+z01", "mi.lambda_mi": 3.0, "train.temperature.min": 0.3}
    trials = [study.trial_spec(spec, {**config, TRIAL_INDEX: i}) for i in range(4)]
    assert [t.train.seed for t in trials] == [7, 7, 8, 8]
    assert [t.mi.lambda_mi for t in trials] == [3.0, 0.0, 3.0, 0.0]  # odd indices are the lambda = 0 twins
    assert all(t.mi.gaussian == [0, 1] and t.mi.categorical and t.train.temperature.min == 0.3 for t in trials)
    assert all(t.search is None for t in trials)
    assert study.trials_per_configuration(spec.search) == 4


def test_a_trial_differs_from_its_study_only_in_the_fields_its_run_logs():
    spec = make_spec(search=SEARCH, train={"seed": 7}, mi={"lambda_mi": 2.0})
    fields = spec.search.trial_fields()
    assert SUBSET_PATH not in fields and {"mi.categorical", "mi.gaussian", "train.seed", "mi.lambda_mi"} <= fields
    base = config.flatten(spec)
    space = study.SearchSpace(spec.search)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    changed = set()
    for i in range(24):
        trial = sampler.ask()
        space(trial)
        flat = config.flatten(study.trial_spec(spec, {**trial.params, TRIAL_INDEX: i % 4}))
        changed |= {k for k, v in flat.items() if k != "search" and v != base[k]}
        sampler.tell(trial, 0.0)
    assert changed <= fields, changed - fields  # what a trial changes, its run records
    assert changed >= {"mi.gaussian", "train.seed", "mi.lambda_mi", "train.temperature.min"}


def test_conditional_parameter_sampled_only_when_its_condition_holds():
    space = study.SearchSpace(make_spec(search=SEARCH).search)
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"cat": 0, "cat+z01": 0}
    for _ in range(30):
        trial = optuna_study.ask()
        space(trial)
        subset = trial.params[SUBSET_PATH]
        seen[subset] += 1
        assert ("train.temperature.min" in trial.params) == (subset == "cat+z01")
        assert 1.0 <= trial.params["mi.lambda_mi"] <= 10.0
        optuna_study.tell(trial, 0.0)
    assert min(seen.values()) > 0


@pytest.mark.parametrize("algorithm", ["auto", "optuna", "gp", "random"])
def test_a_configuration_proposed_again_is_told_its_outcome_not_trained_again(algorithm, capsys):
    spec = make_spec(search={"algorithm": algorithm, "startup_trials": 2, "replicates": 1, "num_samples": 20,
                             "space": {"mi.lambda_mi": {"choice": [0.0, 1.0, 3.0]}}})
    searcher = study._search_algorithm(spec).searcher
    trained = []
    for i in range(40):  # without TriedOnce: 40 trained, no end
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        trained.append(config["mi.lambda_mi"])
        searcher.on_trial_complete(f"t{i}", {searcher.metric: 0.1 * (1 + trained[-1])})
    assert sorted(trained) == [0.0, 1.0, 3.0]  # each once, then the search ends
    assert "the space is exhausted or the search has converged; it ends after 3" in capsys.readouterr().out
    told = searcher._ot_study.get_trials(deepcopy=False)
    assert len(told) >= 3 + study.TriedOnce.PATIENCE
    assert all(t.value == pytest.approx(0.1 * (1 + t.params["mi.lambda_mi"])) for t in told)  # repeats: the same


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_default_sampler_hands_over_from_its_first_to_its_second_at_the_switch():
    first, second = (optuna.samplers.PartialFixedSampler({"x": x}, optuna.samplers.RandomSampler(seed=0))
                     for x in (1.0, 2.0))
    optuna_study = optuna.create_study(sampler=study.GPThenTPE(first, second, switch=3))
    optuna_study.optimize(lambda trial: trial.suggest_float("x", 0.0, 3.0) + trial.suggest_float("y", 0.0, 1.0),
                          n_trials=5)
    assert [t.params["x"] for t in optuna_study.trials] == [1.0, 1.0, 1.0, 2.0, 2.0]
    spec = make_spec(search={"space": {"mi.lambda_mi": {"uniform": [0.0, 10.0]}}})
    sampler = study._search_algorithm(spec).searcher._sampler
    assert spec.search.algorithm == "auto" and isinstance(sampler._gp, optuna.samplers.GPSampler)
    assert isinstance(sampler._tpe, optuna.samplers.TPESampler) and sampler._switch == 100
    assert isinstance(sampler._gp._independent_sampler, optuna.samplers.TPESampler)  # conditional parameters


@pytest.mark.parametrize("algorithm", ["auto", "gp"])
def test_a_restored_searcher_suggests_what_the_one_it_was_saved_from_would(algorithm, tmp_path):
    """What a resumed study relies on to take over a trial Tune lost: the searcher restored from its last save
    proposes the same configurations as the one the driver had (here past the GP's startup)."""
    spec = make_spec(search={"algorithm": algorithm, "startup_trials": 2, "replicates": 1, "num_samples": 20,
                             "space": {"mi.lambda_mi": {"uniform": [0.0, 10.0]},
                                       "train.beta": {"choice": [1.0, 2.0]}}})
    searcher = study._search_algorithm(spec).searcher
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {searcher.metric: config["mi.lambda_mi"] / config["train.beta"]})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = study._search_algorithm(spec).searcher
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [searcher.suggest(f"n{i}") for i in range(2)] == [restored.suggest(f"n{i}") for i in range(2)]


def test_a_repeat_of_a_configuration_still_training_waits_for_its_outcome():
    spec = make_spec(search={"algorithm": "random", "replicates": 1, "num_samples": 20,
                             "space": {"mi.lambda_mi": {"choice": [1.0, 3.0]}}})
    searcher = study._search_algorithm(spec).searcher
    a, b = searcher.suggest("a")["mi.lambda_mi"], searcher.suggest("b")["mi.lambda_mi"]
    assert {a, b} == {1.0, 3.0} and searcher.suggest("c") == Searcher.FINISHED
    waiting = [t for t in searcher._ot_study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    assert len(waiting) >= 2 + study.TriedOnce.PATIENCE  # a, b and their repeats, told nothing yet
    searcher.on_trial_complete("a", {searcher.metric: 0.5})
    searcher.on_trial_complete("b", {searcher.metric: 0.25})
    trials = searcher._ot_study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.params["mi.lambda_mi"]: t.value for t in trials} == {a: 0.5, b: 0.25}


def test_asha_rungs_rank_on_the_scheduler_metric_at_the_first_milestones():
    def rungs(**scheduler):
        asha = study._scheduler(make_spec(search={**SEARCH, "scheduler": scheduler}, train={"epochs": 15}))
        return asha.metric, asha._mode, [milestone for milestone, _ in asha._brackets[0]._rungs]

    assert rungs() == ("kl_categorical", "max", [1])  # the default: a label-free early signal, one rung
    assert rungs(rungs=None, grace_period=2) == ("kl_categorical", "max", [8, 4, 2])
    assert rungs(metric="elbo", mode="min", rungs=2) == ("elbo", "min", [2, 1])
    gaussian_only = make_spec(model={"categories": None}, mi={"categorical": False, "gaussian": [0]},
                              search={**SEARCH, "metric": "elbo", "mode": "min"})
    assert config.rung_ranking(gaussian_only) == ("elbo", "min")


def test_grid_counts_every_point_once():
    spec = make_spec(search={"algorithm": "grid", "space": {"mi.lambda_mi": {"choice": [0.0, 5.0]},
                                                            "train.beta": {"choice": [1.0, 2.0, 4.0]}}})
    assert study.configurations(spec.search) == 6


@pytest.mark.subprocess
@pytest.mark.parametrize("case, args, message", [
    ("no search", ["--set", "search=null"], "search: required"),
    ("resume nothing", ["--resume"], "--resume: no study named"),
    ("bad space", ["--set", "search.space.mi.lambda_mi.uniform=[5,1]"], "search.space.mi.lambda_mi"),
])
def test_bad_study_input_exits_2_and_starts_nothing(tmp_path, case, args, message):
    done = run_cli("run", tiny_study(tmp_path), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr
    assert not (tmp_path / "results" / "tiny").exists()


@pytest.mark.ray
def test_optuna_asha_study_completes_and_refuses_to_start_over(tmp_path):
    code, log = run_study(tiny_study(tmp_path), log=tmp_path / "run.log")
    assert code == 0, log[-3000:]
    experiment = tmp_path / "results" / "tiny"
    trials = results(experiment)
    assert len(trials) == 4
    for history in trials.values():
        assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert "4 trials of study tiny" in log
    # the console: a line per trial and status lines, not Tune's tables, its warnings or a TensorBoard hint
    assert len(re.findall(r"^trial \w+ done", log, re.M)) == 4 and "4/4 trials ended" in log, log[-3000:]
    assert not any(s in log for s in ("Trial status", "TensorBoard", "snapshotting")), log[-3000:]
    # the search's history, for optuna-dashboard and the report: one Optuna trial per configuration
    optuna_db = f"sqlite:///{tmp_path}/results/optuna.db"
    assert f"optuna-dashboard {optuna_db}" in log
    assert len(optuna.load_study(study_name="tiny", storage=optuna_db).trials) == 4
    assert list(experiment.glob("searcher-state-*.pkl")), "Optuna's state is saved for --resume"

    again = run_cli("run", tiny_study(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    assert results(experiment) == trials, "a refused start changes nothing"


@pytest.mark.ray
def test_driver_sigkill_then_resume_finishes_every_trial_without_restarting(tmp_path):
    spec = tiny_study(tmp_path, data__train_size=4096, train__epochs=6, search__scheduler__name="none")
    experiment = tmp_path / "results" / "tiny"
    driver = start([sys.executable, "-m", "vmistudy.run", str(spec)], tmp_path / "first.log",
                   **SNAPSHOT_EVERY_SECOND)
    try:  # killed while a trial has logged a part of its epochs to Tune
        wait_for(lambda: any(2 <= len(h) < 6 for h in results(experiment).values()), 300, "two epochs", driver)
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone: Ray's own processes are left as a crash leaves them
        driver.wait()
    finally:
        stop_group(driver.pid)
    before, saved = results(experiment), saved_epochs(experiment)
    assert sum(epoch == 6 for epoch in saved.values()) < 4, "the study was killed mid-way"
    assert any(h and h[-1]["epoch"] < 6 for h in before.values()), before

    code, log = run_study(spec, "--resume", log=tmp_path / "resume.log")
    assert code == 0, log[-3000:]
    after = results(experiment)
    assert len(after) == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    for name, history in after.items():
        epochs = [r["epoch"] for r in history]
        assert epochs == sorted(set(epochs)) and epochs[-1] == 6, f"{name} repeated epochs: {epochs}"
        # Tune's log of the first life is kept (ContinueTrials); the second goes on from the saved state (a trial
        # saved at its last epoch reports that again, in place of its row of the first life); epochs the driver
        # had not yet logged are in MLflow
        kept = [row for row in before.get(name, []) if row["epoch"] < 6]
        assert history[:len(kept)] == kept
        second_life = epochs[len(kept):]
        if name in saved:
            assert second_life[0] == min(saved[name] + 1, 6), (name, saved[name], second_life)
        # MLflow holds every epoch once: a resumed trial went on from its saved state, it did not start over
        (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                    f"tags.`{TRIAL_TAG}` = '{history[0]['trial_id']}'")
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "accuracy_hungarian"))
        assert steps == [1, 2, 3, 4, 5, 6] and run.info.status == "FINISHED", (name, steps, run.info.status)


@pytest.mark.ray
def test_ctrl_c_says_the_study_is_unfinished_exits_130_and_resume_finishes_it(tmp_path):
    spec = tiny_study(tmp_path, data__train_size=4096, train__epochs=6, search__scheduler__name="none")
    experiment = tmp_path / "results" / "tiny"
    driver = start([sys.executable, "-m", "vmistudy.run", str(spec)], tmp_path / "first.log", **SNAPSHOT_EVERY_SECOND)
    try:
        wait_for(lambda: any(2 <= len(h) < 6 for h in results(experiment).values()), 300, "two epochs", driver)
        os.kill(driver.pid, signal.SIGINT)  # Ctrl-C: Tune saves the study's state and returns
        code = driver.wait(timeout=120)
    finally:
        stop_group(driver.pid)
    log = (tmp_path / "first.log").read_text()
    said = re.search(r"interrupted: [12] of the [234] trials started are unfinished \(4 planned\); --resume", log)
    assert code == 130 and said, log[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    experiment_id = client.get_experiment_by_name("tiny").experiment_id

    def study_run_status() -> str:
        (run,) = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'study'")
        return run.info.status

    assert study_run_status() == "KILLED"
    code, log = run_study(spec, "--resume", log=tmp_path / "resume.log")
    assert code == 0 and "interrupted" not in log, log[-3000:]
    assert len(results(experiment)) == 4 and all(h[-1]["epoch"] == 6 for h in results(experiment).values())
    assert study_run_status() == "FINISHED"


@pytest.mark.ray
def test_worker_killed_mid_trial_continues_from_checkpoint(tmp_path):
    spec = tiny_study(tmp_path, data__train_size=4096, train__epochs=6, search__num_samples=1,
                      search__scheduler__name="none", search__max_failures=2)
    experiment = tmp_path / "results" / "tiny"
    driver = start([sys.executable, "-m", "vmistudy.run", str(spec)], tmp_path / "run.log")
    try:
        wait_for(lambda: max(saved_epochs(experiment).values(), default=0) >= 2, 300, "two epochs", driver)
        (worker,) = trial_workers(driver.pid)
        os.kill(worker, signal.SIGKILL)  # the trial's worker, in the session of this test's driver
        assert driver.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        stop_group(driver.pid)
    (history,) = results(experiment).values()
    epochs = [r["epoch"] for r in history]
    assert epochs[0] == 1 and epochs.count(1) == 1, f"restarted from scratch: {epochs}"
    assert epochs == [1, 2, 3, 4, 5, 6] and len({r["pid"] for r in history}) == 2, "a second worker finished it"
    assert worker in {r["pid"] for r in history}


@pytest.mark.ray
def test_diverged_trial_errors_with_its_reason_and_the_study_goes_on(tmp_path):
    spec = tiny_study(tmp_path, search__algorithm="grid", search__max_failures=0,
                      search__space={"train.lr": {"choice": [1.0e-3, 1.0e+12]}})
    code, log = run_study(spec, log=tmp_path / "run.log")
    assert code == 1, log[-3000:]
    trials = results(tmp_path / "results" / "tiny")
    assert any(len(h) == 3 for h in trials.values()), "the healthy trial ran to the end"
    assert "errored:" in log and "training diverged at step" in log


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_file_validates(path, mnist_root, fashion_root):
    spec = config.load(path)
    if spec.search:
        assert study.configurations(spec.search) >= 1
        assert spec.search.metric in config.metric_names(spec)


def test_the_start_checks_raise_one_input_error_in_process(tmp_path):
    spec = make_spec(search={"storage": str(tmp_path / "results"), "space": {}})
    with pytest.raises(InputError, match=r"^--resume: no study named synthetic-test in "):
        run.check_start(spec, resume=True)
    run.check_start(spec, resume=False)  # a new study: nothing to refuse, nothing written
    assert not (tmp_path / "results").exists()
