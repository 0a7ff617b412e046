"""A real two-node Ray cluster on 127.0.0.1 (token authentication on) and a study sent with `ray job submit`."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import PYTHON, REPO
from ray_support import ray_env, results, stop_group, tiny_study

pytestmark = pytest.mark.ray

RAY = str(Path(PYTHON).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(*args: str, log: Path, cpus: int = 1) -> int:
    """`ray start` in a session of its own; the daemons it leaves behind stay in that process group."""
    proc = subprocess.Popen([RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                             "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", *args],
                            env=ray_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    return proc.pid


@pytest.fixture
def two_nodes(tmp_path):
    gcs, dashboard = free_port(), free_port()
    short = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))  # Ray's unix sockets need paths < 108 bytes
    groups = []
    try:
        groups.append(ray_start("--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                                "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
                                "--temp-dir", str(short / "head"), log=tmp_path / "head.log"))
        # a temp dir of its own: nodes sharing one would delete each other's unpacked working_dir
        groups.append(ray_start("--address", f"127.0.0.1:{gcs}", "--temp-dir", str(short / "worker"),
                                log=tmp_path / "worker.log"))
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        for pgid in groups:
            stop_group(pgid)
        shutil.rmtree(short, ignore_errors=True)


def test_ray_job_submit_runs_a_study_on_both_nodes(tmp_path, two_nodes):
    # each trial waits for its own worker (no actor reuse), so the two concurrent trials hold one node each
    study = tiny_study(tmp_path, data__train_size=4096, search__reuse_actors=False, search__scheduler__name="none",
                       tracking={"enabled": False})
    submit = subprocess.run([RAY, "job", "submit", "--address", two_nodes, "--working-dir", str(REPO), "--",
                             "python", "-m", "vmistudy.run", str(study)],
                            cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    assert "succeeded" in submit.stdout + submit.stderr
    trials = results(tmp_path / "results" / "tiny")
    assert len(trials) == 4 and all(h[-1]["epoch"] == 3 for h in trials.values())
    nodes = {r["node_id"] for history in trials.values() for r in history}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s)"


def test_job_submit_without_the_token_is_refused(tmp_path, two_nodes):
    env = {k: v for k, v in ray_env().items() if k != "RAY_AUTH_TOKEN"}
    env["RAY_AUTH_TOKEN"] = "0" * 32
    submit = subprocess.run([RAY, "job", "list", "--address", two_nodes], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert submit.returncode != 0
    assert "auth" in (submit.stdout + submit.stderr).lower()


def test_fractional_gpus_place_four_trials_on_one_device(tmp_path):
    """A node that declares one GPU (Ray's resource; none is needed to schedule on it) and six trials of
    resources.gpu 0.25 with CPUs to spare: four at a time, all on GPU 0. The trials replay a table whose epochs
    sleep 12 s, so that they overlap although their workers start seconds apart on 2 cores (up to 24 s apart
    under load)."""
    table = tmp_path / "curves.csv.gz"
    pd.DataFrame([{"mi.lambda_mi": 1.0, "seed": seed, "epoch": epoch, "step": epoch, "mi_lower_bound": 0.1 * epoch,
                   "kl_categorical": 0.1, "seconds": 1.0} for seed in range(6) for epoch in (1, 2, 3)]
                 ).to_csv(table, index=False)
    study = tiny_study(tmp_path, "gpu", replay={"table": str(table), "time_scale": 12.0}, mi={"lambda_mi": 1.0},
                       search__metric="mi_lower_bound", search__space={}, search__replicates=6,
                       search__num_samples=1, search__max_concurrent=None, search__scheduler__name="none",
                       resources={"cpu": 0.5, "gpu": 0.25}, tracking={"enabled": False})
    gcs, short = free_port(), Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    head = ray_start("--head", "--port", str(gcs), "--num-gpus", "1", "--include-dashboard", "false",
                     "--temp-dir", str(short / "head"), log=tmp_path / "head.log", cpus=8)
    try:
        done = subprocess.run([PYTHON, "-m", "vmistudy.run", str(study), "--address", f"127.0.0.1:{gcs}"], cwd=REPO,
                              env=ray_env(), capture_output=True, text=True, timeout=300)
    finally:
        stop_group(head)
        shutil.rmtree(short, ignore_errors=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    trials = results(tmp_path / "results" / "gpu")
    assert len(trials) == 6 and all(h[-1]["epoch"] == 3 for h in trials.values())
    assert {r["gpu_ids"] for h in trials.values() for r in h} == {"0"}
    # when each trial certainly ran: from a second after its first epoch began to a second before its last ended
    # (Tune's timestamps are whole seconds)
    spans = [(h[0]["timestamp"] - h[0]["time_this_iter_s"] + 1, h[-1]["timestamp"] - 1) for h in trials.values()]
    most = max(sum(begin <= t <= end for begin, end in spans) for t, _ in spans)
    assert most == 4, spans
