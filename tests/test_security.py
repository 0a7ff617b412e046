"""Security of the study service: where a study may write, which secrets a study file may hold (none), that a
study file cannot run code, and what a local study listens on."""
from __future__ import annotations

import os
import secrets
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import PYTHON, REPO, make_spec, run_cli, write_study
from ray_support import ray_env, start, stop_group, tiny_study, wait_for
from vmistudy import config, layout
from vmistudy.errors import InputError


def refused(tmp_path: Path, module: str, raw: dict | None = None, *overrides: str, text: str | None = None):
    """Run `python -m vmistudy.<module>` on a study (a dict or raw YAML text): it must exit 2 with one line."""
    path = tmp_path / "study.yaml"
    if text is not None:
        path.write_text(text)
    else:
        write_study(path, raw)
    args = [path, *[a for o in overrides for a in ("--set", o)]]
    if module == "train":
        args += ["--out", tmp_path / "out"]
    done = run_cli(module, *args, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# --- names and paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../../x", "a/b", "/abs", "..\\x", "x/../../y", ".hidden", "-x", "",
                                  "a b", "a\nb"])
def test_a_study_name_that_could_leave_its_storage_root_is_refused(name):
    with pytest.raises(InputError) as error:
        make_spec(name=name)
    assert str(error.value).startswith("test: name: ")


@pytest.mark.parametrize("name", ["a..", "a..b", "x.", "A-1_b.c", "9"])
def test_every_allowed_study_name_stays_one_folder_inside_the_storage_root(tmp_path, name):
    spec = make_spec(name=name, search={"storage": str(tmp_path / "root"), "space": {}})
    folder = Path(layout.experiment_path(spec)).resolve()
    assert folder.parent == (tmp_path / "root").resolve() and folder.name == name


@pytest.mark.parametrize("experiment", ["../../elsewhere", "a/b", "..", "/tmp/x"])
def test_an_experiment_name_that_could_leave_the_artifact_root_is_refused(experiment):
    with pytest.raises(InputError) as error:
        make_spec(tracking={"experiment": experiment})
    assert "tracking.experiment" in str(error.value)


@pytest.mark.subprocess
def test_the_run_command_refuses_a_traversing_name_before_starting_anything(tmp_path):
    raw = yaml.safe_load((REPO / "tests" / "studies" / "tiny.yaml").read_text())
    raw["search"]["storage"] = str(tmp_path / "results")
    line = refused(tmp_path, "run", raw, "name=../../escaped")
    assert "name:" in line and "'../../escaped'" in line
    assert not (tmp_path / "results").exists() and not (tmp_path.parent / "escaped").exists()


# --- secrets -----------------------------------------------------------------------------------------------

URIS_WITH_CREDENTIALS = ["http://alice:s3cr3t-Pw@mlflow:5000", "https://token-ABC123@mlflow.example.com",
                         "postgresql://mlflow:s3cr3t-Pw@db:5432/mlflow"]


def tiny_raw(tmp_path: Path) -> dict:
    raw = yaml.safe_load((REPO / "tests" / "studies" / "tiny.yaml").read_text())
    raw["search"]["storage"] = str(tmp_path / "results")
    return raw


def assert_credentials_message(line: str) -> None:
    assert "tracking.uri: remove the credentials" in line
    assert "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert "s3cr3t" not in line and "ABC123" not in line


@pytest.mark.parametrize("uri", URIS_WITH_CREDENTIALS)
def test_a_tracking_uri_with_credentials_is_refused_without_echoing_them(tmp_path, uri):
    path = write_study(tmp_path / "study.yaml", {**tiny_raw(tmp_path), "tracking": {"uri": uri}})
    for args in ((path,), (write_study(tmp_path / "plain.yaml", tiny_raw(tmp_path)), [f"tracking.uri={uri}"])):
        with pytest.raises(InputError) as error:
            config.load(*args)
        assert_credentials_message(str(error.value))


@pytest.mark.subprocess
def test_the_run_command_refuses_credentials_in_the_uri_with_one_line_and_exit_2(tmp_path):
    uri = URIS_WITH_CREDENTIALS[0]
    for line in (refused(tmp_path, "run", {**tiny_raw(tmp_path), "tracking": {"uri": uri}}),
                 refused(tmp_path, "run", tiny_raw(tmp_path), f"tracking.uri={uri}")):
        assert_credentials_message(line)
    assert not (tmp_path / "results").exists()


def test_a_storage_uri_with_keys_is_refused():
    with pytest.raises(InputError) as error:
        make_spec(search={"storage": "s3://AKIAEXAMPLE:wJalrSECRET@bucket/studies", "space": {}},
                  tracking={"uri": "http://mlflow:5000"})
    assert "search.storage: remove the credentials" in str(error.value)
    assert "wJalrSECRET" not in str(error.value)


def test_plain_server_and_file_uris_are_accepted():
    for uri in ("http://mlflow:5000", "https://mlflow.example.com/prefix", "sqlite:////tmp/x@y/mlflow.db",
                "http://10.0.0.5:5000/path@v1"):
        assert make_spec(tracking={"uri": uri}).tracking.uri == uri


# --- a study file cannot run code ------------------------------------------------------------------------

PYTHON_TAGS = ["!!python/object/apply:os.system", "!!python/object/new:subprocess.Popen", "!!python/name:os.system",
               "!!python/object/apply:builtins.exec"]


@pytest.mark.parametrize("tag", PYTHON_TAGS)
def test_a_python_tag_in_a_study_file_or_override_is_refused_and_nothing_runs(tmp_path, tag):
    marker = tmp_path / "pwned"
    payload = f'{tag} ["touch {marker}"]'
    study = tmp_path / "study.yaml"
    study.write_text(f"name: {payload}\ndata: {{name: synthetic}}\n")
    with pytest.raises(InputError) as error:
        config.load(study)
    assert "YAML syntax error" in str(error.value) and tag.removeprefix("!!") in str(error.value)
    with pytest.raises(InputError) as error:
        config.load(write_study(tmp_path / "plain.yaml", {"data": {"name": "synthetic"}}), [f"name={payload}"])
    assert "not valid YAML" in str(error.value)
    assert not marker.exists()


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ["run", "train"])
def test_the_commands_refuse_a_python_tag_with_exit_2_and_nothing_runs(tmp_path, module):
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    text = (REPO / "tests" / "studies" / "tiny.yaml").read_text().replace("name: tiny", f"name: {payload}")
    line = refused(tmp_path, module, text=text)
    assert "YAML syntax error" in line and "python/object/apply:os.system" in line
    if module == "run":
        assert "not valid YAML" in refused(tmp_path, module, tiny_raw(tmp_path), f"name={payload}")
    time.sleep(1)
    assert not marker.exists()


# --- what a local study listens on and writes ------------------------------------------------------------

def listeners(session: int) -> list[tuple[str, int, str, int]]:
    """(address, port, process name, pid) of every listening TCP socket of the processes in a session."""
    pids = {p.pid: p.name() for p in psutil.process_iter(["name"]) if _sid(p.pid) == session}
    return [(c.laddr.ip, c.laddr.port, pids[c.pid], c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def http_get(url: str, headers: dict | None = None) -> tuple[int | None, str]:
    """(status, start of the body); status None when the port does not speak HTTP (Ray's gRPC servers)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read(4000).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:
        return None, ""


@pytest.mark.ray
def test_a_local_study_serves_no_job_api_refuses_tokenless_http_and_logs_no_secret(tmp_path, monkeypatch):
    """connect() without an address: ray.init(address="local", include_dashboard=False, _node_ip_address=127.0.0.1).

    What that gives in Ray 2.60 (measured here, documented in cluster/README.md): no job API and no dashboard
    UI at all (Ray still runs its dashboard process headless, without its HTTP server); Ray's gRPC servers
    listen on every interface (token-checked by Ray, not probed here); every HTTP endpoint answers 401 without
    the token, except
    Ray's Prometheus metrics exporters (read-only counters). Secrets in the environment end up in no param,
    tag, result file or log."""
    planted = {"MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(12)}
    for var, value in planted.items():
        monkeypatch.setenv(var, value)
    spec = tiny_study(tmp_path, data__train_size=8192, train__epochs=4, search__scheduler__name="none",
                      tracking={"figures_every": 0, "log_model": False})
    driver = start([PYTHON, "-m", "vmistudy.run", str(spec)], tmp_path / "run.log")
    try:
        experiment = tmp_path / "results" / "tiny"
        wait_for(lambda: any(experiment.glob("*/result.json")), 300, "a trial to report", driver)
        found = listeners(driver.pid)
        names = {name for _, _, name, _ in found}
        assert "raylet" in names and "gcs_server" in names, found
        token = ray_env()["RAY_AUTH_TOKEN"]
        protected, metrics = [], []
        for address, port, name, _ in found:
            host = "127.0.0.1" if address in ("0.0.0.0", "::", "::ffff:127.0.0.1") else address
            url = f"http://{f'[{host}]' if ':' in host else host}:{port}/api/jobs/"
            status, body = http_get(url)
            if status is None:
                continue  # not HTTP: Ray's gRPC servers
            if "# TYPE " in body or "# HELP " in body:
                metrics.append((address, port, name))  # Prometheus text, no token (Ray's design)
                continue
            assert status == 401, (address, port, name, status, body[:200])
            with_token, body = http_get(url, {"Authorization": f"Bearer {token}"})
            assert with_token != 401, (address, port, name)
            assert not (with_token == 200 and body.lstrip()[:1] in "[{"), f"a job API answers on {address}:{port}"
            protected.append((address, port, name))
        assert protected, found
        code = driver.wait(timeout=400)
        assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        stop_group(driver.pid)

    with sqlite3.connect(tmp_path / "results" / "mlflow.db") as db:
        stored = [v for (v,) in db.execute("SELECT value FROM params UNION ALL SELECT value FROM tags")]
    assert len(stored) > 50
    for value in planted.values():
        assert not any(value in v for v in stored)
        for path in (tmp_path / "results").rglob("*"):
            if path.is_file() and path.suffix in {".json", ".csv", ".txt", ".yaml", ""}:
                assert value not in path.read_text(errors="replace"), path
        assert value not in (tmp_path / "run.log").read_text()
