"""Studies that share a storage folder and its sqlite MLflow store, started at the same moment: creating the store
(tables, migrations), the experiments and the parent runs must not race, and every run of both is complete."""
from __future__ import annotations

import subprocess
import time

import pytest

from conftest import PYTHON, REPO
from ray_support import ray_env, start, stop_group
from test_tracking_outages import assert_every_point_once, replay_study

pytestmark = pytest.mark.ray

# Creates the study's experiment and parent run at a given instant, as the driver does before Ray starts.
START_AT = """
import sys, time
from pathlib import Path
from vmistudy import cli, layout, tracking
spec = cli.load_study(sys.argv[1], [], service=True)
at = float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
tracker = tracking.start_study(spec, Path(sys.argv[1]), layout.storage_path(spec))
print(tracker.experiment_id, tracker.parent_run_id)
"""


@pytest.mark.subprocess
def test_drivers_creating_a_fresh_sqlite_store_at_the_same_instant_all_get_their_experiment_and_run(tmp_path):
    """Without the lock beside the store, two of them both run its migrations and one fails (alembic: "expected to
    match one row")."""
    studies = [replay_study(tmp_path, None, 0.0, name=f"study{i}") for i in range(4)]  # one storage, one store
    at = time.time() + 15  # after every interpreter has imported MLflow
    procs = [subprocess.Popen([PYTHON, "-c", START_AT, str(study), str(at)], cwd=REPO, env=ray_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for study in studies]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-2000:] for _, err in outputs]
    experiments = {out.split()[0] for out, _ in outputs}
    assert len(experiments) == 4 and len({out.split()[1] for out, _ in outputs}) == 4


def test_two_studies_started_at_once_on_one_storage_and_store_both_complete_with_all_their_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    studies = [replay_study(tmp_path, None, time_scale=0.2, name=name) for name in ("first", "second")]
    drivers = [start([PYTHON, "-m", "vmistudy.run", str(study)], tmp_path / f"{study.stem}.log") for study in studies]
    try:
        codes = [driver.wait(timeout=400) for driver in drivers]
    finally:
        for driver in drivers:
            stop_group(driver.pid)
    logs = [(tmp_path / f"{study.stem}.log").read_text() for study in studies]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    for name in ("first", "second"):
        assert_every_point_once(uri, tmp_path / "results" / name, name, trials=4)
