"""Running real studies from the tests: a local Ray on 127.0.0.1 with token authentication on.

Every process a test starts gets its own session (process group); the test stops that group, and nothing else.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import yaml

from benchmarks import kills
from conftest import PYTHON, REPO

TOKEN = secrets.token_hex(16)
# What a study left, read as the driver-kill benchmark reads it: every trial's result.json lines, in order, and the
# epoch of its saved resume state (layout.TRIAL_STATE), by trial folder
results, saved_epochs = kills.results, kills.saved_epochs


def ray_env() -> dict:
    # the project's environment first on PATH, as on a cluster node set up for it (`python` in job entrypoints)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, OMP_NUM_THREADS="1",
               RAY_DEDUP_LOGS="0",
               PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    return env


def tiny_study(tmp_path: Path, name: str = "tiny", **overrides) -> Path:
    """tests/studies/tiny.yaml with its storage under tmp_path and dotted-path overrides applied."""
    raw = yaml.safe_load((REPO / "tests" / "studies" / "tiny.yaml").read_text())
    raw["name"] = name
    raw["search"]["storage"] = str(tmp_path / "results")
    for path, value in overrides.items():
        *parents, leaf = path.split("__")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A command in its own session, output to `log`, `env` added to its environment."""
    return subprocess.Popen(args, cwd=REPO, env={**ray_env(), **env}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


# Tune copies its trials' logs (result.json) to storage when it snapshots the experiment: every 10 s or more, and
# at a trial's checkpoint. A test that waits for a trial half-way through its epochs in storage asks for a snapshot
# every second, or trials of a few seconds may be seen only before and after.
SNAPSHOT_EVERY_SECOND = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}


def run_study(study: Path, *args: str, log: Path, timeout: float = 400) -> tuple[int, str]:
    proc = start([PYTHON, "-m", "vmistudy.run", str(study), *args], log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop_group(proc.pid)
    return code, log.read_text()


def stop_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, the process group this test started, each given 2 s to end it (an unreaped
    leader counts as alive: its Popen's wait reaps it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)  # signal 0: is any process of the group left?
            except ProcessLookupError:
                return
            time.sleep(0.05)


def trial_workers(session: int) -> list[int]:
    """PIDs of the Tune trial workers (Ray names their processes after the trainable's actor) in a session."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "ImplicitFunc" in " ".join(proc.info["cmdline"] or ()) and os.getsid(proc.info["pid"]) == session:
                found.append(proc.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the study ended (status {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
