"""What a user sees of a trial in MLflow: its system metrics beside its own, and the MLflow UI (a real
`mlflow server` on 127.0.0.1, rendered by a real headless Chromium) showing the trial's run and metrics.

Trials are logged in process through tracking.py's trackers, without Ray. Chromium is Debian's package
(`.ci/run` installs it); outside CI a test that needs it is skipped when it is missing.
"""
from __future__ import annotations

import html
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import make_spec, write_study
from ray_support import stop_group, wait_for
from test_tracking import free_port
from test_tracking_outages import MlflowServer
from vmistudy import config, tracking

CPU = "system/cpu_utilization_percentage"


def study_spec(storage: Path, **tracking_section) -> config.StudySpec:
    """A study of one configuration; its trials' too (the study is the trial's base)."""
    return make_spec(name="ui", search={"storage": str(storage), "space": {"mi.lambda_mi": {"choice": [2.0]}}},
                     tracking=tracking_section)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tracking.StudyTracker:
    """One study's tracker over a sqlite store, for the tests that need one (a store takes seconds to create)."""
    folder = tmp_path_factory.mktemp("ui")
    return tracking.start_study(study_spec(folder), write_study(folder / "ui.yaml", {}), str(folder))


@pytest.fixture
def fast_system_metrics(monkeypatch):
    monkeypatch.setattr(tracking, "SYSTEM_METRICS_EVERY", 0.2)
    monkeypatch.setattr(tracking, "_failed", {})


def system_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, CPU))


@pytest.mark.slow  # the study's sqlite store takes seconds to create
def test_a_trial_run_gets_system_metrics_until_it_ends(study, fast_system_metrics):
    run = study.trial("t1", "trial_1", study_spec(Path(study.folder).parent), node="node-a")
    client = MlflowClient(study.uri)
    wait_for(lambda: len(system_steps(client, run.run_id)) >= 3, 30, "3 points of system metrics")
    study.end_trial("t1", "trial_1", "FINISHED", run.run_id)
    run.monitor._process.join(timeout=10)  # it stops by itself once the run has ended
    assert not run.monitor._process.is_alive()
    metrics = client.get_run(run.run_id).data.metrics
    assert {CPU, "system/system_memory_usage_megabytes", "system/system_memory_usage_percentage"} <= set(metrics)
    assert system_steps(client, run.run_id) == list(range(len(system_steps(client, run.run_id))))
    assert 0 <= metrics[CPU] <= 100


@pytest.mark.slow  # the study's sqlite store takes seconds to create
def test_a_resumed_trial_continues_the_steps_of_its_system_metrics(study, fast_system_metrics):
    spec = study_spec(Path(study.folder).parent)
    run = study.trial("t2", "trial_2", spec, node="node-a")
    client = MlflowClient(study.uri)
    wait_for(lambda: system_steps(client, run.run_id), 30, "a point of system metrics")
    run.close()
    run.monitor._process.join(timeout=10)
    before = len(system_steps(client, run.run_id))
    resumed = study.trial("t2", "trial_2", spec, node="node-b")
    assert resumed.run_id == run.run_id
    wait_for(lambda: len(system_steps(client, run.run_id)) > before, 30, "a point after the resume")
    resumed.close()
    assert system_steps(client, run.run_id) == list(range(len(system_steps(client, run.run_id))))


def test_system_metrics_ride_out_a_server_that_does_not_answer_quietly(fast_system_metrics, monkeypatch):
    """No warning (MLflow's own loop warns and stops for good at the first failure), and it goes on sampling."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(tracking, "RETRY_EVERY", 0.5)
    uri = f"http://127.0.0.1:{free_port()}"
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger(), logging.getLogger("mlflow")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        monitor = tracking.SystemMetrics("a-run", uri)
        monitor.start()
        time.sleep(1.5)  # 7 samples
        assert monitor._process.is_alive() and uri in tracking._failed
        monitor.stop()
        monitor._process.join(timeout=10)
        assert not monitor._process.is_alive()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]


@pytest.mark.slow  # the study's sqlite store takes seconds to create
def test_tracking_system_metrics_false_starts_no_monitor(study, fast_system_metrics):
    spec = study_spec(Path(study.folder).parent, system_metrics=False)
    assert study.trial("t3", "trial_3", spec, node="node-a").monitor is None


def chromium() -> str:
    """Debian's chromium."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: .ci/run should install it (apt-get install chromium)")
        pytest.skip("chromium not found (apt-get install chromium); outside CI this test is skipped")
    return found


def rendered_text(url: str, profile: Path) -> str:
    """The text of a page once its scripts have rendered it: headless Chromium's DOM after 20 s of virtual time
    (which waits for the page's requests), without tags, scripts and styles."""
    # --no-sandbox: Chromium's sandbox refuses root and needs user namespaces, which containers often lack
    browser = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                                "--virtual-time-budget=20000", "--dump-dom", url],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        dom, _ = browser.communicate(timeout=120)
    finally:
        stop_group(browser.pid)
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "\n", dom))


@pytest.mark.server
@pytest.mark.subprocess
def test_the_mlflow_ui_shows_a_trial_run_with_its_metrics_and_system_metrics(tmp_path, fast_system_metrics):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        spec = study_spec(tmp_path / "results", uri=server.uri)
        study = tracking.start_study(spec, write_study(tmp_path / "ui.yaml", {}), str(tmp_path / "results"))
        run = study.trial("t1", "train_trial_t1", spec, node="node-a")
        for epoch in (1, 2):
            run.log_epoch({"epoch": epoch, "mi_lower_bound": 0.125 * epoch, "accuracy_hungarian": 0.5 + epoch / 8})
        wait_for(lambda: system_steps(MlflowClient(server.uri), run.run_id), 60, "a point of system metrics")
        study.end_trial("t1", "train_trial_t1", "FINISHED", run.run_id)
        text = rendered_text(f"{server.uri}/#/experiments/{study.experiment_id}/runs/{run.run_id}", tmp_path / "chrome")
    finally:
        server.stop()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert "train_trial_t1" in lines, lines[:80]
    for name, value in (("mi_lower_bound", "0.25"), ("accuracy_hungarian", "0.75")):
        assert lines[lines.index(name) + 1] == value, lines
    assert CPU in lines and "System metrics" in lines, lines
