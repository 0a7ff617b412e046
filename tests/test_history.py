"""Optuna's views of a study: the history the driver keeps of its configurations, the views drawn from it,
replayed studies through the real Tuner (with the report; with a driver killed and the study resumed), and
optuna-dashboard serving the history."""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from ray.tune.search.repeater import TRIAL_INDEX

from conftest import PYTHON, make_spec, write_study
from ray_support import start, stop_group, wait_for
from vmistudy import cli, config, history, layout, report, study, tracking
from vmistudy.history import CONFIGURATION, TRIAL_IDS
from vmistudy.study import OptunaHistory

PNG = b"\x89PNG\r\n\x1a\n"
SPACE = {"mi.lambda_mi": {"loguniform": [1.0, 10.0]}, "train.beta": {"uniform": [1.0, 2.0]},
         "model.hidden": {"int": [16, 64]}, "train.capacity.gaussian.cap": {"choice": [None, 5.0]}}


def paired_spec(tmp_path, **search):
    return make_spec(search={"metric": "accuracy_hungarian", "replicates": 2, "paired_baseline": True,
                             "storage": str(tmp_path / "results"), "space": SPACE, **search})


def fake_trial(number: int, trial_id: str, values: dict, index: int, accuracy: float | None):
    """What the callback reads of a Tune trial that ended, the `number`th Tune created; accuracy None: it errored
    after its first epoch (Tune tells the searcher nothing of it)."""
    return SimpleNamespace(trial_id=trial_id, config={**values, TRIAL_INDEX: index}, experiment_tag=f"{number + 1}_x",
                           status="TERMINATED" if accuracy is not None else "ERROR",
                           last_result={"accuracy_hungarian": 0.99, "epoch": 1} if accuracy is None else
                           {"accuracy_hungarian": accuracy, "epoch": 3})


def configuration(number: int, prefix: str, values: dict, accuracies: list) -> list:
    """The `number`th configuration's four trials: seed 0, its twin, seed 1, its twin."""
    return [fake_trial(4 * number + i, f"{prefix}{i}", values, i, a) for i, a in enumerate(accuracies)]


def recorded(spec) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study's Optuna history (none before the store has the study)."""
    optuna_study = history.load(spec)
    return optuna_study.get_trials() if optuna_study else []


def test_each_parameter_has_the_distribution_the_search_space_samples_it_with():
    spec = make_spec(search={"space": SPACE})
    trial = optuna.create_study().ask()
    study.SearchSpace(spec.search)(trial)
    assert trial.distributions == {path: history.distribution(p) for path, p in spec.search.space.items()}


def test_a_configuration_is_recorded_once_when_its_trials_have_ended_as_the_searcher_sees_it(tmp_path):
    spec = paired_spec(tmp_path)
    values = {"mi.lambda_mi": 2.0, "train.beta": 1.5, "model.hidden": 32, "train.capacity.gaussian.cap": None}
    first = configuration(0, "a", values, [0.6, 0.2, 0.8, 0.3])
    callback = OptunaHistory(spec)
    callback.setup()
    assert history.load(spec) is not None and recorded(spec) == [], "the study is in the store from the start"
    for trial in first[:3]:
        callback.on_trial_complete(0, first[:3], trial)
    assert recorded(spec) == [], "a replicate has not ended"
    first[3].status = "RUNNING"  # Tune marks it TERMINATED after its callbacks
    callback.on_trial_complete(0, first, first[3])
    callback.on_trial_complete(0, first, first[3])  # the same trial twice
    first[3].status = "TERMINATED"

    # the same values sampled again are another configuration; one whose replicates all errored failed
    again = configuration(1, "b", values, [0.4, 0.1, 0.6, 0.1])
    errored = configuration(2, "c", {**values, "train.beta": 1.9}, [None, 0.5, None, 0.5])
    restored = [again[2], errored[3], first[1], again[0], errored[0], first[0], again[3], errored[1], first[3],
                again[1], errored[2], first[2]]  # Tune restores its trials in no particular order
    OptunaHistory(spec).on_trial_error(0, restored, errored[3])  # a new driver, as after --resume
    # a trial created again after a driver kill (the snapshot had not seen it) is not recorded again
    lost = configuration(0, "d", values, [0.9, 0.9, 0.9, 0.9])
    OptunaHistory(spec).on_trial_complete(0, lost, lost[-1])

    (a, b, c) = recorded(spec)
    assert a.value == pytest.approx(0.7) and a.params == values and a.user_attrs == {
        CONFIGURATION: 0, TRIAL_IDS: ["a0", "a1", "a2", "a3"], "values": [0.6, 0.8], "twin_values": [0.2, 0.3],
        "epochs": [3] * 4}
    assert b.value == pytest.approx(0.5) and b.params == values and b.user_attrs[CONFIGURATION] == 1
    assert c.state == optuna.trial.TrialState.FAIL and c.user_attrs["values"] == [None, None]
    assert c.user_attrs["epochs"] == [1, 3, 1, 3]
    assert c.user_attrs["twin_values"] == [0.5, 0.5]


@pytest.mark.subprocess
def test_the_importance_view_is_drawn_without_loading_scikit_learn(tmp_path):
    """Optuna's importance package loads scikit-learn's forests for fANOVA (1.2 s of the report); the view ranks
    with PED-ANOVA, which needs none of it. In a fresh process, as the report's other process is."""
    probe = (f"import sys, optuna\nfrom pathlib import Path\nfrom vmistudy import history\n"
             f"s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))\n"
             f"s.optimize(lambda t: t.suggest_float('a', 0, 1) + t.suggest_float('b', 0, 9) / 10, n_trials=8)\n"
             f"print(history.draw(s, Path({str(tmp_path)!r}))['importances'], 'sklearn' in sys.modules)")
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(tmp_path / "optuna-importances.png"), "False"], done.stdout
    assert (tmp_path / "optuna-importances.png").read_bytes()[:8] == PNG


def test_a_configuration_stopped_before_the_last_epoch_is_recorded_pruned_at_the_epoch_it_reached(tmp_path):
    """Optuna's views draw completed trials: a configuration ASHA cut short must not stand among them with its
    early value as if it were final."""
    spec = paired_spec(tmp_path)
    values = {"mi.lambda_mi": 2.0, "train.beta": 1.5, "model.hidden": 32, "train.capacity.gaussian.cap": None}
    stopped = configuration(0, "a", values, [0.3, 0.2, 0.5, 0.3])
    for trial in stopped[::2]:  # ASHA stopped both seeds after epoch 1; their twins ran to the end
        trial.last_result = {**trial.last_result, "epoch": 1}
    errored = configuration(1, "b", {**values, "train.beta": 1.9}, [0.6, 0.2, None, 0.3])  # one seed errored early
    callback = OptunaHistory(spec)
    callback.on_trial_complete(0, stopped + errored, errored[-1])

    (a, b) = recorded(spec)
    assert a.state == optuna.trial.TrialState.PRUNED and a.value is None
    assert a.intermediate_values == {1: pytest.approx(0.4)} and a.user_attrs["epochs"] == [1, 3, 1, 3]
    assert b.state == optuna.trial.TrialState.COMPLETE and b.value == pytest.approx(0.6)  # the errored one: no value
    assert [t.number for t in history.load(spec).get_trials(states=(optuna.trial.TrialState.COMPLETE,))] == [1]


def test_the_views_are_drawn_or_skipped_with_the_reason(tmp_path):
    spec = make_spec(search={"space": SPACE})
    searched = optuna.create_study(direction="maximize")
    for i in range(6):
        trial = searched.ask()
        study.SearchSpace(spec.search)(trial)
        searched.tell(trial, 0.1 * i)
    drawn = history.draw(searched, tmp_path)
    assert drawn == {name: tmp_path / f"optuna-{name}.png" for name in history.VIEWS}
    assert all(path.read_bytes()[:8] == PNG for path in drawn.values())

    grid = optuna.create_study()
    for lam in (1.0, 5.0):  # a grid of one parameter
        grid.add_trial(optuna.trial.create_trial(value=lam, params={"mi.lambda_mi": lam}, distributions={
            "mi.lambda_mi": optuna.distributions.CategoricalDistribution([1.0, 5.0])}))
    skipped = history.draw(grid, tmp_path)
    assert skipped["importances"] == "one searched parameter: its importance is 1"
    assert history.draw(optuna.create_study(), tmp_path) == dict.fromkeys(history.VIEWS,
                                                                          "no configuration has completed")


def test_a_parameter_that_kept_one_value_is_drawn_without_library_warnings_unless_verbose(tmp_path, monkeypatch):
    for name in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL"):  # quiet() sets them: undone after
        monkeypatch.delenv(name, raising=False)
    for logger in ("mlflow", "optuna._gp.batched_lbfgsb"):
        monkeypatch.setattr(logging.getLogger(logger), "level", logging.getLogger(logger).level)
    flat = optuna.create_study(direction="maximize")
    for lam in (1.0, 2.0, 5.0, 7.0):  # train.beta kept 1.5 in every completed configuration: a flat axis
        flat.add_trial(optuna.trial.create_trial(value=lam, params={"mi.lambda_mi": lam, "train.beta": 1.5},
                                                 distributions={"mi.lambda_mi": optuna.distributions.FloatDistribution(
                                                     1.0, 10.0), "train.beta": optuna.distributions.FloatDistribution(
                                                     1.0, 2.0)}))
    for verbose in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli.quiet(verbose)
            drawn = history.draw(flat, tmp_path)
        assert all(isinstance(path, Path) for path in drawn.values()), drawn
        library = [str(w.message) for w in caught if "optuna" in w.filename]
        assert bool(library) == verbose, library  # the noise is there to hide, and --verbose shows it


LAMBDAS, BETAS, SEEDS, EPOCHS = (0.0, 1.0, 2.0, 4.0, 7.0, 10.0), (1.0, 1.25, 1.5, 1.75, 2.0), (0, 1), 3


@contextlib.contextmanager
def local_ray():
    """A local Ray in this process, on 127.0.0.1, as study.connect starts it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def replayed_study(tmp_path, time_scale: float = 0.0, **search) -> tuple[dict, config.StudySpec]:
    """A replayed study of configurations of two parameters, each of 2 seeds beside their twins: its raw study
    and spec."""
    table = tmp_path / "curves.csv"
    pd.DataFrame([{"mi.lambda_mi": lam, "train.beta": beta, "seed": seed, "epoch": epoch,
                   "accuracy_hungarian": 0.1 + 0.01 * lam + 0.03 * beta + 0.001 * seed + 0.02 * epoch,
                   "mi_lower_bound": lam * epoch, "kl_categorical": epoch * (1 + lam), "elbo": -100.0, "seconds": 0.5}
                  for lam, beta, seed in itertools.product(LAMBDAS, BETAS, SEEDS)
                  for epoch in range(1, EPOCHS + 1)]).to_csv(table, index=False)
    raw = {"name": "replayed-history", "data": {"name": "synthetic"}, "train": {"epochs": EPOCHS},
           "model": {"hidden": 32, "gaussian_dims": 4, "categories": 4},
           "replay": {"table": str(table), "time_scale": time_scale},
           "search": {"metric": "accuracy_hungarian", "num_samples": 4, "replicates": 2, "paired_baseline": True,
                      "max_concurrent": 2, "storage": str(tmp_path / "results"),
                      "space": {"mi.lambda_mi": {"loguniform": [1.0, 10.0]}, "train.beta": {"uniform": [1.0, 2.0]}},
                      **search},
           "tracking": {"figures_every": 0, "log_model": False}, "resources": {"cpu": 1}}
    return raw, make_spec(raw)


def assert_recorded_as_searched(spec: config.StudySpec, results) -> None:
    """One Optuna trial per configuration, numbered in the order sampled, its value the mean of its non-twin
    trials' final accuracy."""
    means: dict[str, list[float]] = {}  # by sampled values
    for result in results:
        if not study.is_twin(result.config, spec.search):
            key = json.dumps({k: result.config[k] for k in spec.search.space}, sort_keys=True)
            means.setdefault(key, []).append(result.metrics["accuracy_hungarian"])
    configurations = recorded(spec)
    assert sorted(t.user_attrs[CONFIGURATION] for t in configurations) == list(range(spec.search.num_samples))
    for trial in configurations:
        accuracies = means[json.dumps(trial.params, sort_keys=True)]
        shortest = min(trial.user_attrs["epochs"])
        if shortest < spec.train.epochs:  # a seed stopped by ASHA: pruned, its value where it stopped
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert trial.intermediate_values == {shortest: pytest.approx(sum(accuracies) / 2)}
        else:
            assert trial.value == pytest.approx(sum(accuracies) / 2)
        assert len(trial.user_attrs["twin_values"]) == 2 and len(trial.user_attrs[TRIAL_IDS]) == 4


@pytest.mark.ray
def test_a_replayed_study_records_each_configuration_and_the_report_draws_and_logs_the_views(tmp_path):
    raw, spec = replayed_study(tmp_path, scheduler={"name": "none"})  # all complete: every view has its trials
    storage = layout.storage_path(spec)
    study_file = write_study(tmp_path / "study.yaml", raw)
    tracker = tracking.start_study(spec, study_file, storage)
    with local_ray():
        results = study.tuner(spec, tracker, callbacks=(OptunaHistory(spec),), verbose=0).fit()
    assert len(results) == 16 and not results.errors
    assert_recorded_as_searched(spec, results)

    # the command, where the study's images are not (a laptop reading a cluster's study): it reads MLflow only
    report.main([str(study_file), "--set", "data.name=mnist", "--set", f"data.root={tmp_path / 'no-images'}",
                 "--out", str(tmp_path / "report"), "--verbose"])  # verbose: it leaves this process' logging be
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Optuna's views of the search" in text and history.dashboard_command(spec) in text
    client = MlflowClient(tracker.uri)
    logged = {f.path for f in client.list_artifacts(tracker.parent_run_id, "report")}
    for name in history.VIEWS:
        assert f"![{name}](optuna-{name}.png)" in text
        assert (tmp_path / "report" / f"optuna-{name}.png").read_bytes()[:8] == PNG
        assert f"report/optuna-{name}.png" in logged


def recorded_so_far(spec) -> int:
    try:
        return len(recorded(spec))
    except history.STORE_ERRORS:  # the driver is creating the store
        return 0


DRIVER = ("import sys, ray; from vmistudy import config, study, tracking; from vmistudy.study import OptunaHistory; "
          "spec = config.load(sys.argv[1]); ray.init(address='local', num_cpus=2, include_dashboard=False, "
          "_node_ip_address='127.0.0.1'); "
          "study.tuner(spec, tracking.NullStudyTracker(), callbacks=(OptunaHistory(spec),), verbose=0).fit()")


@pytest.mark.ray
@pytest.mark.subprocess
def test_a_driver_killed_mid_study_then_resumed_records_each_configuration_once(tmp_path):
    raw, spec = replayed_study(tmp_path, time_scale=1.0, num_samples=6)
    driver = start([PYTHON, "-c", DRIVER, str(write_study(tmp_path / "study.yaml", raw))], tmp_path / "driver.log")
    try:
        wait_for(lambda: recorded_so_far(spec) >= 2, 300, "two configurations recorded", driver)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray, as a machine that fails kills them
    finally:
        stop_group(driver.pid)
    assert len(recorded(spec)) < 6, "killed mid-study"

    with local_ray():
        results = study.restore(spec, tracking.NullStudyTracker()).fit()  # the callback comes back with tuner.pkl
    assert len(results) == 24 and not results.errors
    assert_recorded_as_searched(spec, results)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 60) -> dict:
    """The JSON at `url`, waiting for the server to answer."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.server
@pytest.mark.subprocess
def test_optuna_dashboard_serves_the_studys_history(tmp_path):
    spec = paired_spec(tmp_path)
    trials = [t for i in range(3) for t in configuration(i, f"{i}-", {"mi.lambda_mi": 1.0 + i, "train.beta": 1.5,
                                                                      "model.hidden": 16 + i}, [0.5, 0.1, 0.7, 0.2])]
    OptunaHistory(spec).on_trial_complete(0, trials, trials[-1])
    port = free_port()
    server = subprocess.Popen([str(Path(PYTHON).parent / "optuna-dashboard"), history.storage_url(spec),
                               "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        (served,) = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert served["study_name"] == spec.name and served["directions"] == ["maximize"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{served['study_id']}")
        assert len(detail["trials"]) == 3 and detail["objective_names"] == ["accuracy_hungarian"]
        assert [t["values"] for t in detail["trials"]] == [[0.6]] * 3
    finally:
        stop_group(server.pid)
    assert server.poll() is not None
