"""MLflow adapter: one experiment per study, one parent run per study, one child run per trial (per member of a
bundle trial: study.py names them).

The driver creates the store, the experiment (absolute artifact location) and the parent run before any
trial starts: trials that race to create a fresh sqlite store crash, and an experiment created inside a
trial puts its artifacts in Ray's temporary folders. Two drivers starting at once on one sqlite store take
turns through a lock file beside it (both would run its migrations, and one would fail). A trial finds its
own run by its trial id, so a resumed trial continues the same run; epochs already logged are not logged
again. Runs are ended from the driver (study.py's Tune callback), since ASHA stops a trial inside
`tune.report` and no code after it runs. With tracking off the same calls go to `NullStudyTracker`,
which records nothing. This module knows nothing of Ray.

A tracking server may go away in mid-study. MLflow's client retries each call (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
about 4 minutes by default); what still fails is kept, never lost: every run's calls go through an `Outbox`,
which sends them in order and keeps those the server did not take in a file beside the run (the trial's
folder; the study's for the parent run), so that they survive a restart of the trial or the driver. They are
sent with the next call that finds the server back, when the study ends, or by --resume at the latest.
Training does not wait for an absent server: after a failure a process tries it again every RETRY_EVERY s.

A trial's run also gets the machine's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) through
MLflow's own monitor, sampled in a thread of the trial's process (`SystemMetrics`); what the server does not take
of those is dropped, not kept.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator, Sequence
from urllib.parse import urlsplit

import mlflow
import pyarrow.fs
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from .config import StudySpec, flatten
from .errors import InputError
from .layout import experiment_path, read_bytes, store_lock, write_bytes

STUDY_TAG, TRIAL_TAG, ROLE_TAG = "vmistudy.study", "vmistudy.trial_id", "vmistudy.role"
PARENT_TAG = "mlflow.parentRunId"
PARAM_LIMIT = 6000  # MLflow's longest param value
KEPT = "vmistudy-mlflow-kept.json"  # a run's calls the server did not take, in its trial's (or the study's) folder
KEPT_FILES = "vmistudy-mlflow-kept"  # beside it: the figures and models those calls log
RETRY_EVERY = 30.0  # seconds between tries of a server that did not answer
# MLflow's error codes for a server that does not answer (INTERNAL_ERROR: its client's retries ran out) or a
# store that is busy (TEMPORARILY_UNAVAILABLE: a sqlite store another process holds locked)
UNANSWERED = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
# how long to wait for a connection: before a study starts, and while it runs (not to hold up training)
PROBE_SECONDS, RETRY_PROBE_SECONDS = 5.0, 1.0
CALLS = ("open", "metrics", "artifacts", "model", "end")
SYSTEM_METRICS_EVERY = 10.0  # seconds between a trial's system metrics points: a few per epoch of a short trial

Render = Callable[[Path], dict[str, Path]]  # writes figures into a folder, returns {name: path}

_failed: dict[str, float] = {}  # tracking URI: when a call to it last failed, in this process
_told: set[str] = set()  # tracking URIs whose absence this process has told the user of
_monitor: SystemMetrics | None = None  # this process's system metrics monitor (a process runs one trial at a time)

logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not its start and no-GPU lines per trial


def tracking_uri(spec: StudySpec, storage: str) -> str:
    """tracking.uri, else a sqlite store beside the study folders (one store for every study there)."""
    return spec.tracking.uri or f"sqlite:///{storage}/mlflow.db"


def experiment_name(spec: StudySpec) -> str:
    return spec.tracking.experiment or spec.name


def served(uri: str) -> bool:
    """Whether `uri` names a tracking server (rather than a local store)."""
    return urlsplit(uri).scheme in ("http", "https")


def answers(uri: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a tracking server takes a connection (a local store always does)."""
    if not served(uri):
        return True
    parts = urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except (OSError, ValueError):  # refused, unreachable, timed out; a port out of range
        return False


def check_answers(spec: StudySpec, storage: str) -> None:
    """InputError unless the study's tracking server takes connections: checked before Ray starts, since a
    study logging to nowhere would keep every trial's data aside until it answered."""
    uri = tracking_uri(spec, storage)
    if spec.tracking.enabled and not answers(uri):
        raise InputError(f"tracking.uri: nothing answers at {uri} (no connection in {PROBE_SECONDS:g} s); start "
                         "the MLflow server, or correct the URI")


class Outbox:
    """One run's MLflow calls, sent in order; those the server does not take are kept in `path` until it does.

    A call is a JSON dict: open (find the trial's run by trial id, else create it), metrics (one batch, with
    the time it was made), artifacts (a folder of figures), model (a saved model) and end. Sending again is
    harmless: a metric point keeps its first time stamp (MLflow drops an exact repeat), epochs the run already
    has are skipped, a run is looked for before it is created, and files are logged under the same names.
    """

    def __init__(self, client: MlflowClient, path: str, experiment_id: str, trial_id: str | None = None,
                 run_id: str | None = None, earlier_ids: Sequence[str] = ()):
        self.client, self.path = client, path
        saved = read_bytes(path)
        try:
            kept = json.loads(saved) if saved else {}
            if not all(call["call"] in CALLS for call in kept.get("calls", [])):
                raise ValueError("an unknown call")
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # not UTF-8, not JSON, not kept calls
            raise InputError(f"{path}: damaged ({e}); delete it to drop the MLflow calls it kept") from None
        self.experiment_id = kept.get("experiment_id", experiment_id)
        self.trial_id = kept.get("trial_id", trial_id)
        self.run_id = kept.get("run_id") or run_id
        self.earlier_ids = earlier_ids  # trial ids the run may still be tagged with: lost trials' it took over
        self.calls: list[dict] = kept.get("calls", [])
        self.saved = bool(saved)
        self.logged: int | None = None  # the run's last logged epoch, once read

    def send(self, *calls: dict, force: bool = False) -> bool:
        """Add `calls`, then send what is kept in order; keep (and save) the rest if the server does not take
        it. `force`: try even if it failed within RETRY_EVERY s. True when nothing is left."""
        self.calls += calls
        uri = self.client.tracking_uri
        if self.calls and _may_try(uri, force):
            try:
                while self.calls:
                    self._apply(self.calls[0])
                    self._drop_files(self.calls.pop(0))
                _failed.pop(uri, None)
            except MlflowException as e:
                if e.error_code not in UNANSWERED:
                    raise
                _failed[uri] = time.monotonic()
        self._save()
        return not self.calls

    def _apply(self, call: dict) -> None:
        getattr(self, f"_{call['call']}")(**{k: v for k, v in call.items() if k != "call"})

    def _find(self) -> str | None:
        for trial_id in dict.fromkeys([self.trial_id, *reversed(self.earlier_ids)]):  # the newest first
            if self.run_id is None and trial_id:
                runs = self.client.search_runs([self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial_id}'",
                                               max_results=1)
                self.run_id = runs[0].info.run_id if runs else None
        return self.run_id

    def _open(self, name: str, tags: dict[str, str], params: dict[str, str]) -> None:
        """The trial's run: found (a resumed trial continues it, on whatever node it now runs, under its present
        trial id and name) or created."""
        if self._find():
            tags = {**tags, "mlflow.runName": name}
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            return
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self.logged = 0

    def _metrics(self, stamp: int, values: dict[str, float]) -> None:
        """One batch, at its epoch's step (a study's summary has none: step 0)."""
        epoch = values.get("epoch")
        if epoch is not None and epoch <= self._logged_epoch():
            return  # a restarted trial re-running an epoch its run has
        step = int(epoch or 0)
        self.client.log_batch(self._find(), metrics=[Metric(k, v, stamp, step) for k, v in values.items()])
        if epoch is not None:
            self.logged = step

    def _logged_epoch(self) -> int:
        if self.logged is None:  # read once; then each batch sent moves it on
            history = self.client.get_metric_history(self._find(), "epoch")
            self.logged = max((int(m.value) for m in history), default=0)
        return self.logged

    def _artifacts(self, folder: str, artifact_path: str, files: list[str]) -> None:
        with _local(folder, files) as local:
            self.client.log_artifacts(self._find(), local, artifact_path)

    def _model(self, folder: str, files: list[str]) -> None:
        with _local(folder, files) as local:
            model = mlflow.pytorch.load_model(local, map_location="cpu")
        _log_model(self.client.tracking_uri, self._find(), model)

    def _end(self, status: str) -> None:
        if self._find():
            self.client.set_terminated(self.run_id, status)

    def _save(self) -> None:
        """Keep the calls left in `path` (with copies of the files they log beside it), or remove it if none."""
        if self.calls:
            for call in self.calls:
                self._keep_files(call)
            kept = {"experiment_id": self.experiment_id, "trial_id": self.trial_id, "run_id": self.run_id,
                    "calls": self.calls}
            write_bytes(self.path, json.dumps(kept).encode())
            self.saved = True
        elif self.saved:
            _delete(self.path)
            _delete(self._kept_folder(), folder=True)
            self.saved = False

    def _kept_folder(self) -> str:
        return f"{self.path.rsplit('/', 1)[0]}/{KEPT_FILES}"

    def _keep_files(self, call: dict) -> None:
        """A call's files are in a scratch folder until it is kept: copy them beside the kept calls."""
        if "folder" not in call or call["folder"].startswith(self._kept_folder()):
            return
        kept = f"{self._kept_folder()}/{uuid.uuid4().hex}"
        for name in call["files"]:
            write_bytes(f"{kept}/{name}", Path(call["folder"], name).read_bytes())
        call["folder"] = kept

    def _drop_files(self, call: dict) -> None:
        if "folder" in call and call["folder"].startswith(self._kept_folder()):
            _delete(call["folder"], folder=True)


class SystemMetrics(SystemMetricsMonitor):
    """MLflow's system metrics monitor of one run, made to ride out a server that does not answer.

    MLflow's own loop asks the server for the run's status at every sample, with the client's retries (minutes),
    and warns and stops for good at the first failure. This one logs a point (under system/, at the next step)
    every SYSTEM_METRICS_EVERY s while the run is RUNNING, calls no server this process knows absent (`_may_try`),
    drops quietly the points a server (or a busy sqlite store) does not take, and stops when the run ends or is gone.
    """

    def __init__(self, run_id: str, uri: str):
        # resume_logging: a resumed trial's points go on from the last step of its run
        super().__init__(run_id, sampling_interval=SYSTEM_METRICS_EVERY, resume_logging=True, tracking_uri=uri)

    def monitor(self) -> None:
        self.collect_metrics()  # psutil's first CPU reading means nothing: each point covers the time since the last
        self._drop()
        while not self._shutdown_event.wait(self.sampling_interval) and self._log():
            pass

    def stop(self) -> None:
        """Stop after the call under way, without waiting for it (MLflow's `finish` would, retries and all)."""
        self._shutdown_event.set()

    def _log(self) -> bool:
        """Log what was sampled since the last point; False when the run is over."""
        uri = self._tracking_uri
        self.collect_metrics()
        if not _may_try(uri, force=False):
            self._drop()
            return True
        try:
            if MlflowClient(uri).get_run(self._run_id).info.status != "RUNNING":
                return False
            self.publish_metrics(self.aggregate_metrics())
            _failed.pop(uri, None)
        except MlflowException as e:
            if e.error_code not in UNANSWERED:
                return False  # the run or its experiment is gone
            if not answers(uri, timeout=RETRY_PROBE_SECONDS):  # absent, not busy: the trial's calls need not try
                _failed[uri] = time.monotonic()
            self._drop()
        return True

    def _drop(self) -> None:
        self.mlflow_logger.data.clear()
        for monitor in self.monitors:
            monitor.clear_metrics()


def _watch(run_id: str, uri: str) -> SystemMetrics:
    """Start logging system metrics to a run, stopping this process's last monitor (a reused Ray worker has
    moved on to another trial)."""
    global _monitor
    if _monitor is not None:
        _monitor.stop()
    _monitor = SystemMetrics(run_id, uri)
    _monitor.start()
    return _monitor


@dataclass(frozen=True)
class StudyTracker:
    """Where a study's runs live; small and picklable, handed to every trial. `folder`: the study's folder,
    where a run's kept calls are (its trial's folder, or the study's own for the parent run)."""
    uri: str
    experiment_id: str
    parent_run_id: str
    folder: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def trial(self, trial_id: str, trial_name: str, spec: StudySpec, node: str,
              earlier_ids: Sequence[str] = (), fields: Collection[str] | None = None) -> TrialTracker:
        return TrialTracker(self, trial_id, trial_name, spec, node, earlier_ids, fields)

    def outbox(self, trial_name: str | None = None, trial_id: str | None = None,
               run_id: str | None = None, earlier_ids: Sequence[str] = ()) -> Outbox:
        """The outbox of a trial's run, in the trial's folder (of the study's parent run without a trial)."""
        if trial_name is None:
            return Outbox(self.client, f"{self.folder}/{KEPT}", self.experiment_id, run_id=self.parent_run_id)
        return Outbox(self.client, f"{self.folder}/{trial_name}/{KEPT}", self.experiment_id, trial_id, run_id,
                      earlier_ids)

    def end_trial(self, trial_id: str, trial_name: str, status: str, run_id: str | None = None,
                  earlier_ids: Sequence[str] = ()) -> None:
        """End a trial's run FINISHED or FAILED (from the driver, which sees every trial end), after what the
        trial kept; the run is looked up by trial id (or `earlier_ids`) unless its id is given (a trial reports
        it, sparing a search per trial)."""
        if not self.outbox(trial_name, trial_id, run_id, earlier_ids).send({"call": "end", "status": status}):
            self.tell_kept()

    def finish(self, summary: dict[str, float], status: str) -> None:
        """End the study's run with its summary; status: FINISHED, FAILED or KILLED (interrupted)."""
        if self.uri in _told:  # some trial's run kept calls: send those of trials that ended before it was back
            self.send_kept()
        end = {"call": "end", "status": status}
        if not self.outbox().send({"call": "metrics", "stamp": _now(), "values": summary}, end, force=True):
            self.tell_kept()

    def send_kept(self) -> bool:
        """Send what the study's runs kept while the server was away (their trials ended, or the driver stopped,
        before it was back); True when nothing is left."""
        for trial_name in _kept_files(self.folder):
            if not self.outbox(trial_name).send(force=True):
                return False  # the server does not answer: the others wait too
        return True

    def tell_kept(self) -> None:
        """Tell the user, once, that the server does not answer and what becomes of the runs' data."""
        if self.uri not in _told:
            _told.add(self.uri)
            print(f"warning: MLflow at {self.uri} does not answer; the study goes on, and what its runs cannot log "
                  f"is kept beside them ({KEPT} in the trial folders under {self.folder}) and logged when it "
                  "answers again (by --resume at the latest)", file=sys.stderr, flush=True)

    def describe(self, spec: StudySpec) -> str:
        line = (f"mlflow:  mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000"
                f"  (experiment {experiment_name(spec)})")
        kept = _kept_files(self.folder) if self.uri in _told else []
        if kept:
            line += (f"\nmlflow:  {len(kept)} runs kept what {self.uri} did not take ({KEPT} under {self.folder}); "
                     "run the study with --resume once it answers to log it")
        return line


class TrialTracker:
    """The child run of one trial: found by trial id (a resumed trial continues it) or created.

    study: the study's tracker; trial_id, trial_name: Tune's, the run's tag and name; spec: the trial's
    full spec, whose `fields` (all by default; a study's trials log the fields they vary, SearchSpec.trial_fields,
    the study's run has the rest) are logged as params when the run is created; node: the Ray node the trial runs
    on (a tag, rewritten at every start, since a resumed trial may land elsewhere); earlier_ids: the lost trials
    whose folder and run the trial took over, the oldest first (study.ContinueTrials). The trial's calls go through
    its outbox; `kept` counts those the server has not taken yet. With tracking.system_metrics, the run gets
    system metrics from when the server has taken its calls (the run exists) until the run ends, the trial's
    process ends, or the process starts another trial.
    """

    def __init__(self, study: StudyTracker, trial_id: str, trial_name: str, spec: StudySpec, node: str,
                 earlier_ids: Sequence[str] = (), fields: Collection[str] | None = None):
        self.outbox = study.outbox(trial_name, trial_id, earlier_ids=earlier_ids)
        tags = {PARENT_TAG: study.parent_run_id, STUDY_TAG: spec.name, TRIAL_TAG: trial_id,
                "seed": str(spec.train.seed), "node": node}
        params = {k: str(v)[:PARAM_LIMIT] for k, v in flatten(spec).items() if fields is None or k in fields}
        self.outbox.send({"call": "open", "name": trial_name, "tags": tags, "params": params})
        self.monitor: SystemMetrics | None = None
        self.system_metrics = spec.tracking.system_metrics
        self._watch()

    @property
    def run_id(self) -> str | None:
        return self.outbox.run_id

    @property
    def kept(self) -> int:
        return len(self.outbox.calls)

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """All of one epoch's metrics in one call (each call costs tens of ms), once per epoch."""
        self.outbox.send({"call": "metrics", "stamp": _now(), "values": {k: float(v) for k, v in metrics.items()}})
        self._watch()

    def log_figures(self, render: Render, epoch: int, final: bool) -> None:
        """Render the figures into a scratch folder and log them under figures/final or figures/epoch_NNN."""
        artifact_path = "figures/final" if final else f"figures/epoch_{epoch:03d}"
        with tempfile.TemporaryDirectory() as folder:
            files = [path.name for path in render(Path(folder)).values()]
            self.outbox.send({"call": "artifacts", "folder": folder, "artifact_path": artifact_path, "files": files})

    def log_model(self, model) -> None:
        """Saved first, so that it can be kept like a figure if the server does not take it; the outbox logs it."""
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch, "model")
            mlflow.pytorch.save_model(model, str(folder), serialization_format="pickle",
                                      pip_requirements=_requirements())
            files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
            self.outbox.send({"call": "model", "folder": str(folder), "files": files})

    def close(self) -> None:
        """Stop the run's system metrics now (the end of the run or of the process stops them too)."""
        if self.monitor is not None:
            self.monitor.stop()

    def _watch(self) -> None:
        """Start the system metrics once the server has taken every call: the run exists, and it answers."""
        if self.system_metrics and self.monitor is None and not self.outbox.calls:
            self.monitor = _watch(self.run_id, self.outbox.client.tracking_uri)


class NullStudyTracker:
    """Tracking off: takes the calls a `StudyTracker` takes and records nothing."""

    def trial(self, trial_id: str, trial_name: str, spec: StudySpec, node: str,
              earlier_ids: Sequence[str] = (), fields: Collection[str] | None = None) -> NullTrialTracker:
        return NullTrialTracker()

    def end_trial(self, trial_id: str, trial_name: str, status: str, run_id: str | None = None,
                  earlier_ids: Sequence[str] = ()) -> None:
        pass

    def finish(self, summary: dict[str, float], status: str) -> None:
        pass

    def tell_kept(self) -> None:
        pass

    def describe(self, spec: StudySpec) -> str:
        return "mlflow:  off (tracking.enabled: false)"


class NullTrialTracker:
    """Tracking off for one trial: nothing logged, and figures never rendered."""
    run_id = None
    kept = 0

    def log_epoch(self, metrics: dict[str, float]) -> None:
        pass

    def log_figures(self, render: Render, epoch: int, final: bool) -> None:
        pass

    def log_model(self, model) -> None:
        pass


def start_study(spec: StudySpec, study_file: Path, storage: str) -> StudyTracker | NullStudyTracker:
    """Create (or find, on resume) the experiment and the study's parent run, from the driver; on resume, log
    what the runs kept while the server was away."""
    if not spec.tracking.enabled:
        return NullStudyTracker()
    check_answers(spec, storage)
    uri = tracking_uri(spec, storage)
    with store_lock(uri):
        client = MlflowClient(uri)  # creates a sqlite store's tables
        experiment_id = _experiment(client, spec, storage)
        parent = _parent_run(client, experiment_id, spec)
        if parent is None:
            parent = _create_parent_run(client, experiment_id, spec, study_file)
        else:  # resumed: running again, whatever its last driver left (KILLED by Ctrl-C, RUNNING after a crash)
            client.update_run(parent, "RUNNING")
    tracker = StudyTracker(uri, experiment_id, parent, experiment_path(spec))
    if not tracker.send_kept():
        tracker.tell_kept()
    return tracker


def find_study(spec: StudySpec, storage: str) -> StudyTracker:
    """The tracker of a study that has run (for the report); InputError if there is none."""
    if not spec.tracking.enabled:
        raise InputError("tracking.enabled: false; the report reads a tracked study's MLflow runs")
    check_answers(spec, storage)
    uri = tracking_uri(spec, storage)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(spec))
    if experiment is None:
        raise InputError(f"name: no MLflow experiment {experiment_name(spec)} at {uri}; run the study first")
    parent = _parent_run(client, experiment.experiment_id, spec)
    if parent is None:
        raise InputError(f"name: the experiment {experiment.name} has no study run of {spec.name}")
    return StudyTracker(uri, experiment.experiment_id, parent, experiment_path(spec))


def _experiment(client: MlflowClient, spec: StudySpec, storage: str) -> str:
    """The study's experiment, created if new (by another study's driver too, if both start at once)."""
    name = experiment_name(spec)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None if spec.tracking.uri else f"{storage}/mlartifacts/{name}"
    try:
        return client.create_experiment(name, artifact_location=artifacts, tags={STUDY_TAG: spec.name})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _parent_run(client: MlflowClient, experiment_id: str, spec: StudySpec) -> str | None:
    """The study's parent run (by its study tag too: studies may share an experiment), or None."""
    runs = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{spec.name}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def _create_parent_run(client: MlflowClient, experiment_id: str, spec: StudySpec, study_file: Path) -> str:
    run_id = client.create_run(experiment_id, run_name=spec.name,
                               tags={ROLE_TAG: "study", STUDY_TAG: spec.name}).info.run_id
    base = {k: v for k, v in flatten(spec).items() if k != "search"}
    settings = {f"search.{k}": v for k, v in spec.search.model_dump(exclude={"space"}).items()}
    space = {f"search.space.{k}": json.dumps(v.model_dump(exclude_none=True)) for k, v in spec.search.space.items()}
    client.log_batch(run_id, params=_params({**base, **settings, **space}))
    client.log_artifact(run_id, str(study_file))
    return run_id


def _may_try(uri: str, force: bool) -> bool:
    """Whether to call a server now: always, unless a call failed lately (within RETRY_EVERY s, unless
    `force`) or it takes no connection."""
    failed = _failed.get(uri)
    if failed is None:
        return True
    if not force and time.monotonic() - failed < RETRY_EVERY:
        return False
    if answers(uri, timeout=RETRY_PROBE_SECONDS):
        return True
    _failed[uri] = time.monotonic()
    return False


def _log_model(uri: str, run_id: str, model) -> None:
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=_requirements())


def _requirements() -> list[str]:
    return [f"torch=={importlib.metadata.version('torch')}"]


@contextlib.contextmanager
def _local(folder: str, files: list[str]) -> Iterator[str]:
    """`folder` as a local folder: itself, or a scratch copy of the files of one in an object store."""
    if "://" not in folder:
        yield folder
        return
    with tempfile.TemporaryDirectory() as scratch:
        for name in files:
            Path(scratch, name).parent.mkdir(parents=True, exist_ok=True)
            Path(scratch, name).write_bytes(read_bytes(f"{folder}/{name}"))
        yield scratch


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))


def _kept_files(folder: str) -> list[str | None]:
    """Where a study folder holds kept calls: the names of its trials' runs (`trial`, or `trial/member_m` in a
    bundle trial's folder), None for the study's own."""
    fs, root = _filesystem(folder)
    found = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True, recursive=True)):
        *run, name = info.path[len(root):].strip("/").split("/")
        if name == KEPT and len(run) <= 2:
            found.append("/".join(run) or None)
    return found


def _delete(path: str, folder: bool = False) -> None:
    fs, root = _filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(root) if folder else fs.delete_file(root)


def _params(values: dict) -> list[Param]:
    return [Param(k, str(v)[:PARAM_LIMIT]) for k, v in values.items()]


def _now() -> int:
    return int(time.time() * 1000)
