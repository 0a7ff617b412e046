"""A real MLflow server as cluster/k8s/mlflow.yaml runs it, on 127.0.0.1: PostgreSQL backend, an S3-compatible
artifact store, basic-auth on; a study logs to it with a login from the environment only.

PostgreSQL is a real server (Debian's binaries; `.ci/run` installs them), started in a temporary folder on a
free loopback port. The S3 side is moto's server (S3's API, in Python), standing in for MinIO, which has no
package on the registries this project installs from. The MLflow command line, the basic-auth file and the
bucket command are the manifests' own, with only the addresses changed.
"""
from __future__ import annotations

import base64
import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import psycopg
import psycopg.sql
import pytest
import yaml
from mlflow.server.auth.client import AuthServiceClient

from conftest import PYTHON, REPO
from ray_support import results, run_study, stop_group, tiny_study
from vmistudy.tracking import TRIAL_TAG

pytestmark = [pytest.mark.ray, pytest.mark.server]

BIN = Path(PYTHON).parent
MANIFEST = REPO / "cluster" / "k8s" / "mlflow.yaml"


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-4000:]
            time.sleep(0.5)


def deployment_container(name: str) -> dict:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


@pytest.fixture
def postgres():
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port; database `mlflow` owned by a
    role `mlflow` with a password. Yields (port, password). Stopped with pg_ctl, folder removed."""
    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are missing in CI: .ci/run should install postgresql")
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql); outside CI this test is skipped")
    root = Path(tempfile.mkdtemp(prefix="vmistudy-pg-", dir="/tmp"))
    data, sockets = root / "data", root / "sockets"
    data.mkdir()
    sockets.mkdir()
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    port, password = free_port(), secrets.token_hex(16)
    log = sockets / "postgres.log"  # a folder the server's user may write to
    started = False
    try:
        init = subprocess.run(as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                           "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
                              capture_output=True, text=True, timeout=120)
        assert init.returncode == 0, init.stdout + init.stderr
        start = subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets}", "start"]),
                               capture_output=True, text=True, timeout=120, start_new_session=True)
        started = True
        assert start.returncode == 0, start.stdout + start.stderr + (log.read_text() if log.exists() else "")
        with psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres",
                             autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("CREATE ROLE mlflow LOGIN PASSWORD {}").format(password))
            admin.execute("CREATE DATABASE mlflow OWNER mlflow")
        yield port, password
    finally:
        if started:
            subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3 server on 127.0.0.1 (its own process group, stopped at the end). Yields its URL."""
    port = free_port()
    log = tmp_path / "s3.log"
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, proc, log)
        yield url
    finally:
        stop_group(proc.pid)


def request(base: str, path: str, body: dict | None = None, login: tuple[str, str] | None = None):
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    req = urllib.request.Request(f"{base}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def test_study_logs_to_postgres_backed_mlflow_with_s3_artifacts_and_basic_auth(tmp_path, postgres, s3_server,
                                                                               monkeypatch):
    pg_port, pg_password = postgres
    s3_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    # the manifest's bucket command, against the S3 server (twice: it must be idempotent)
    bucket = deployment_container("bucket")
    script = bucket["command"][2].replace("http://minio:9000", s3_server)
    for _ in range(2):
        done = subprocess.run([PYTHON, "-c", script], env={**os.environ, **s3_env}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]

    # the manifest's server command and auth file, addresses moved to loopback
    port = free_port()
    command = [a.replace("postgres:5432", f"127.0.0.1:{pg_port}") for a in deployment_container("mlflow")["command"]]
    assert command[:2] == ["mlflow", "server"] and "--app-name" in command and "basic-auth" in command
    command[0] = str(BIN / "mlflow")
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text((REPO / "cluster" / "mlflow" / "basic_auth.ini").read_text()
                        .replace("postgres:5432", f"127.0.0.1:{pg_port}"))
    admin = ("admin", secrets.token_hex(16))
    server_env = {**os.environ, **s3_env, "PGPASSWORD": pg_password, "MLFLOW_S3_ENDPOINT_URL": s3_server,
                  "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
                  "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    log = tmp_path / "mlflow.log"
    server = subprocess.Popen(command, env=server_env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", server, log)

        # anonymous requests are refused; the admin creates the login the trials will use
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(base, "/api/2.0/mlflow/experiments/search", {"max_results": 10})
        assert refused.value.code == 401
        user = ("vmistudy", secrets.token_hex(16))
        with monkeypatch.context() as env:  # as cluster/README.md does it: MLflow's client, admin login from env
            env.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
            env.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
            AuthServiceClient(base).create_user(*user)

        # the study: login from the environment only (the study file has just the URL)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
        study = tiny_study(tmp_path, tracking={"uri": base, "figures_every": 0, "log_model": False})
        code, driver_log = run_study(study, log=tmp_path / "run.log")
        assert code == 0, driver_log[-3000:]

        experiment = request(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny", login=user)
        experiment_id = experiment["experiment"]["experiment_id"]
        runs = request(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 100},
                       login=user)["runs"]
        trials = {h[0]["trial_id"]: h for h in results(tmp_path / "results" / "tiny").values()}
        children = [r for r in runs if any(t["key"] == TRIAL_TAG for t in r["data"].get("tags", []))]
        assert len(children) == len(trials) == 4 and len(runs) == 5
        finished = 0
        for run in children:
            run_id = run["info"]["run_id"]
            trial_id = next(t["value"] for t in run["data"]["tags"] if t["key"] == TRIAL_TAG)
            history = request(base, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                                    "&metric_key=mi_lower_bound", login=user)["metrics"]
            assert sorted(int(m["step"]) for m in history) == [r["epoch"] for r in trials[trial_id]]
            assert run["info"]["status"] == "FINISHED"
            if len(trials[trial_id]) == 3:
                finished += 1
                listed = request(base, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=figures/final",
                                 login=user)
                assert any(f["path"].endswith(".png") for f in listed.get("files", []))
        assert finished >= 1

        # the rows are in PostgreSQL, the figures in the S3 bucket
        with psycopg.connect(host="127.0.0.1", port=pg_port, user="mlflow", password=pg_password,
                             dbname="mlflow") as db, db.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment_id),))
            assert cur.fetchone()[0] == 5
            cur.execute("SELECT count(*) FROM users WHERE username = %s", (user[0],))
            assert cur.fetchone()[0] == 1
        s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert sum(k.endswith(".png") and "/figures/final/" in k for k in keys) >= finished * 3, keys[:20]

        # no secret in any param or tag, nor in the study's files or the driver's output
        for run in runs:
            values = [kv.get("value", "") for kv in run["data"].get("params", []) + run["data"].get("tags", [])]
            assert not any(secret in v for v in values for secret in (user[1], admin[1], pg_password))
        for path in (tmp_path / "results").rglob("*"):
            if path.is_file() and path.suffix in {".json", ".csv", ".txt", ".yaml", ".log", ""}:
                assert user[1] not in path.read_text(errors="replace"), path
        assert user[1] not in driver_log
    finally:
        stop_group(server.pid)  # the server's whole group: its workers too
    assert server.poll() is not None
