"""A tracking server that goes away: a real `mlflow server` on 127.0.0.1, stopped in mid-study and started again
on the same port and store. No trial fails and no metric point is lost or logged twice, whether MLflow's own
retries bridge the outage or it outlasts them (then the runs' calls are kept beside them and logged later).
Studies replay a learning-curve table (the replay trainable) whose epochs all take the same time, so that the
outage falls where the test puts it (the repository's table records 1.6 to 28 s per epoch)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from conftest import PYTHON, make_spec, run_cli, write_study
from ray_support import results, run_study, start, stop_group, tiny_study, trial_workers, wait_for
from test_tracking import free_port
from vmistudy import tracking
from vmistudy.errors import InputError
from vmistudy.tracking import KEPT, KEPT_FILES, ROLE_TAG, TRIAL_TAG

WARNING = "warning: MLflow at"


class MlflowServer:
    """`mlflow server` on 127.0.0.1:`port` with a sqlite store in `folder`; stopped and started again on the same
    port and store. Its own process group, stopped by the test."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        log = self.folder / "server.log"
        self.proc = subprocess.Popen(
            [str(Path(PYTHON).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "server-artifacts")],
            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.health() == "OK", timeout, f"the mlflow server on port {self.port} (see {log})",
                 self.proc)

    def health(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    def stop(self) -> None:
        stop_group(self.proc.pid)
        assert self.proc.wait(30) is not None and not tracking.answers(self.uri, timeout=1)


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        stop_group(server.proc.pid)


def curve_table(path: Path) -> Path:
    """A learning-curve table whose epochs all take 1 s (times replay.time_scale), so that a study's timing is
    set: 4 values of lambda_mi, 2 seeds, 15 epochs, 24 metrics, each point its own value."""
    rows = [{"mi.lambda_mi": lam, "seed": seed, "epoch": epoch, "step": 10 * epoch,
             "accuracy_hungarian": 0.1 + 0.05 * lam + 0.01 * epoch + 0.001 * seed, "mi_lower_bound": lam * epoch / 7,
             "kl_categorical": (1 + lam) * epoch / 13, "elbo": -100.0 - epoch - lam - seed,
             **{f"kl_z{i}": lam + i / 16 + epoch / 100 for i in range(19)}, "seconds": 1.0}
            for lam in (0.0, 1.0, 3.0, 10.0) for seed in (0, 1) for epoch in range(1, 16)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def replay_study(tmp_path: Path, uri: str | None, time_scale: float, name: str = "tiny", trials: int = 4) -> Path:
    """tiny.yaml replaying `curve_table`: trials of 15 epochs, 2 at a time, none stopped early; tmp_path/results
    (and its sqlite store unless `uri`) is the storage of every study made so."""
    table = curve_table(tmp_path / "curves.csv")
    return tiny_study(tmp_path, name, replay={"table": str(table), "time_scale": time_scale}, train__epochs=15,
                      search__space={"mi.lambda_mi": {"choice": [0.0, 1.0, 3.0, 10.0]}}, search__num_samples=trials,
                      search__scheduler__name="none", tracking={"uri": uri, "figures_every": 0, "log_model": False})


def started_study(tmp_path: Path, uri: str, time_scale: float, trials: int = 4) -> tuple[Path, Path, subprocess.Popen]:
    """replay_study started as a user starts it, handed back once its first epoch is reported: (the study file,
    its experiment folder, the driver, whose process group the caller stops)."""
    study = replay_study(tmp_path, uri, time_scale, trials=trials)
    experiment = tmp_path / "results" / "tiny"
    driver = start([PYTHON, "-m", "vmistudy.run", str(study)], tmp_path / "run.log")
    try:
        wait_for(lambda: results(experiment), 180, "the first epoch", driver)
    except BaseException:
        stop_group(driver.pid)
        raise
    return study, experiment, driver


def assert_every_point_once(uri: str, experiment: Path, name: str, trials: int) -> None:
    """One FINISHED run per trial; every metric the trial reported to Tune holds each of its epochs exactly once,
    with the reported value; the study's run FINISHED; nothing kept any more."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get(ROLE_TAG) == "study"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == trials
    children = {r.data.tags[TRIAL_TAG]: r for r in runs if TRIAL_TAG in r.data.tags}
    reported = {rows[0]["trial_id"]: rows for rows in results(experiment).values()}
    assert len(children) == len(reported) == trials
    for trial_id, rows in reported.items():
        run = children[trial_id]
        assert run.info.status == "FINISHED", (trial_id, run.info.status)
        keys = set(run.data.metrics) & set(rows[0])
        if len(rows) > 1 and rows[-1]["epoch"] == rows[-2]["epoch"]:
            # killed after its last epoch was saved, before Tune recorded the end: Tune restores the trial, which
            # reports that epoch again, the same numbers, and MLflow keeps it once
            assert all(rows[-1][key] == rows[-2][key] for key in keys), trial_id
            rows = rows[:-1]
        epochs = [r["epoch"] for r in rows]
        assert epochs == list(range(1, len(rows) + 1)), epochs
        assert {"epoch", "accuracy_hungarian", "mi_lower_bound", "kl_categorical", "elbo"} <= keys
        for key in keys:
            points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            expected = [(r["epoch"], float(r[key])) for r in rows]
            assert len(points) == len(expected) and all(
                p[0] == e[0] and (p[1] == e[1] or math.isnan(p[1]) and math.isnan(e[1]))
                for p, e in zip(points, expected)), f"{trial_id} {key}: {points} != {expected}"
    assert not list(experiment.rglob(KEPT)) and not list(experiment.rglob(KEPT_FILES))


def test_only_a_server_that_takes_connections_answers_and_a_store_always_does():
    assert not tracking.answers(f"http://127.0.0.1:{free_port()}", timeout=1)
    assert not tracking.answers("https://127.0.0.1:99999")  # no such port
    assert tracking.answers("sqlite:////nowhere/mlflow.db") and tracking.answers("postgresql://db/mlflow")


@pytest.mark.parametrize("content", [b"\xff\xfe binary", b'{"calls": [{"call": "_save"}]}', b"[1, 2]", b"{"])
def test_a_damaged_file_of_kept_calls_is_refused_naming_it(tmp_path, content):
    path = tmp_path / KEPT
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"^{path}: damaged .*; delete it to drop the MLflow calls it kept$"):
        tracking.Outbox(None, str(path), "1")  # refused before any call


@pytest.mark.subprocess
def test_a_tracking_uri_where_nothing_listens_is_refused_before_ray_starts(tmp_path):
    port = free_port()
    study = replay_study(tmp_path, f"http://127.0.0.1:{port}", 0.0)
    started = time.perf_counter()
    done = run_cli("run", study, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.splitlines() == [f"error: tracking.uri: nothing answers at http://127.0.0.1:{port} (no "
                                        "connection in 5 s); start the MLflow server, or correct the URI"]
    assert "Ray" not in done.stdout + done.stderr and time.perf_counter() - started < 60
    assert not (tmp_path / "results").exists()  # nothing written


@pytest.mark.server
def test_calls_the_server_did_not_take_are_kept_across_a_restart_and_logged_once_when_it_is_back(
        tmp_path, server, monkeypatch):
    """In process, without Ray: a trial logs 2 epochs, the server stops; epochs 3-4, figures and the model are kept
    in the trial's folder; the trial restarts (a new tracker reads what was kept) and re-runs epoch 4; the server
    comes back; the next epoch logs everything kept, once; the driver ends the run."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a retry budget of nothing: fail at once
    monkeypatch.setattr(tracking, "RETRY_EVERY", 0.0)
    spec = make_spec(name="outage", search={"storage": str(tmp_path / "results"),
                                            "space": {"mi.lambda_mi": {"choice": [1.0]}}},
                     tracking={"uri": server.uri})
    study = tracking.start_study(spec, write_study(tmp_path / "outage.yaml", {}), str(tmp_path / "results"))
    folder = tmp_path / "results" / "outage" / "trial_1"

    def epoch(n: int) -> dict:
        return {"epoch": n, "elbo": -100.0 - n, "mi_lower_bound": n / 10}

    def render(out: Path) -> dict[str, Path]:
        (out / "swaps.png").write_bytes(b"\x89PNG figure")
        return {"swaps": out / "swaps.png"}

    run = study.trial("t1", "trial_1", spec, node="node-a")
    run.log_epoch(epoch(1))
    run.log_epoch(epoch(2))
    server.stop()
    run.log_epoch(epoch(3))
    run.log_figures(render, 3, final=False)
    run.log_epoch(epoch(4))
    run.log_model(torch.nn.Linear(2, 3))
    assert run.kept == 4 and (folder / KEPT).is_file()
    assert len(list((folder / KEPT_FILES).iterdir())) == 2  # the figure and the model, copied out of scratch

    restarted = study.trial("t1", "trial_1", spec, node="node-b")  # the state it resumes from is at epoch 3
    assert restarted.kept == 5 and restarted.run_id == run.run_id
    restarted.log_epoch(epoch(4))
    server.start()
    restarted.log_epoch(epoch(5))
    assert restarted.kept == 0 and not (folder / KEPT).exists() and not (folder / KEPT_FILES).exists()
    study.end_trial("t1", "trial_1", "FINISHED", restarted.run_id)

    client = MlflowClient(server.uri)
    found = client.get_run(run.run_id)
    assert found.info.status == "FINISHED" and found.data.tags["node"] == "node-b"
    for key in ("epoch", "elbo", "mi_lower_bound"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, key))
        assert points == [(n, float(epoch(n)[key])) for n in range(1, 6)], (key, points)
    assert [f.path for f in client.list_artifacts(run.run_id, "figures/epoch_003")] == \
        ["figures/epoch_003/swaps.png"]
    assert len(client.search_logged_models([study.experiment_id])) == 1


@pytest.mark.ray
@pytest.mark.server
def test_a_server_restarted_in_mid_study_loses_no_metric_point(tmp_path, server):
    """The issue's case: stopped 30 s into the study (its trials' epochs 6 of 15; 75 s a trial, so that a driver
    that reports its first epoch late under load still has epochs to log), started again 60 s later; MLflow's
    retries (7, about 4 minutes by default) bridge the outage."""
    _, experiment, driver = started_study(tmp_path, server.uri, time_scale=5.0, trials=2)
    try:
        time.sleep(30)
        server.stop()
        assert driver.poll() is None, "the study ended before the outage"
        time.sleep(60)
        server.start()
        code = driver.wait(timeout=400)
    finally:
        stop_group(driver.pid)
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log[-3000:]
    assert_every_point_once(server.uri, experiment, "tiny", trials=2)


@pytest.mark.ray
@pytest.mark.server
def test_an_outage_beyond_the_retry_budget_keeps_the_data_through_a_trial_restart_until_resume(
        tmp_path, server, monkeypatch):
    """MLflow's retries set to none: the server stops 3 s into the study and stays away until the study has
    ended. Trials go on, keep what they cannot log in their folders (a worker killed meanwhile resumes with what
    its trial kept); the user is told once; --resume, with the server back, logs it all, once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    study, experiment, driver = started_study(tmp_path, server.uri, time_scale=0.6)
    try:
        time.sleep(3)
        server.stop()
        wait_for(lambda: list(experiment.glob(f"*/{KEPT}")), 60, "a trial keeping its calls", driver)
        workers = trial_workers(driver.pid)
        assert workers, "no trial worker to kill"
        os.kill(workers[0], signal.SIGKILL)
        code = driver.wait(timeout=300)
    finally:
        stop_group(driver.pid)
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log[-3000:]
    assert log.count(WARNING) == 1, log[-3000:]
    assert "--resume once it answers" in log
    kept = list(experiment.glob(f"*/{KEPT}"))
    assert kept and all(json.loads(p.read_text())["calls"] for p in kept)

    server.start()
    code, log = run_study(study, "--resume", log=tmp_path / "resume.log")
    assert code == 0, log[-3000:]
    assert WARNING not in log
    assert_every_point_once(server.uri, experiment, "tiny", trials=4)
