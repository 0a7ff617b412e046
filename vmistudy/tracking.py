"""MLflow adapter: one experiment per study, one parent run per study, one child run per trial.

The driver creates the store, the experiment (absolute artifact location) and the parent run before any
trial starts: trials that race to create a fresh sqlite store crash, and an experiment created inside a
trial puts its artifacts in Ray's temporary folders. A trial finds its own run by its trial id, so a
resumed trial continues the same run; epochs already logged are not logged again. Runs are ended from
the driver (study.py's Tune callback), since ASHA stops a trial inside `tune.report` and no code after
it runs. With tracking off the same calls go to `NullStudyTracker`, which records nothing.
This module knows nothing of Ray.
"""
from __future__ import annotations

import importlib.metadata
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from .config import StudySpec, flatten
from .errors import InputError

STUDY_TAG, TRIAL_TAG, ROLE_TAG = "vmistudy.study", "vmistudy.trial_id", "vmistudy.role"
PARENT_TAG = "mlflow.parentRunId"
PARAM_LIMIT = 6000  # MLflow's longest param value

Render = Callable[[Path], dict[str, Path]]  # writes figures into a folder, returns {name: path}


def tracking_uri(spec: StudySpec, storage: str) -> str:
    """tracking.uri, else a sqlite store beside the study folders (one store for every study there)."""
    return spec.tracking.uri or f"sqlite:///{storage}/mlflow.db"


def experiment_name(spec: StudySpec) -> str:
    return spec.tracking.experiment or spec.name


@dataclass(frozen=True)
class StudyTracker:
    """Where a study's runs live; small and picklable, handed to every trial."""
    uri: str
    experiment_id: str
    parent_run_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def trial(self, trial_id: str, trial_name: str, spec: StudySpec, node: str) -> TrialTracker:
        return TrialTracker(self, trial_id, trial_name, spec, node)

    def trial_run_id(self, trial_id: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=2)
        return runs[0].info.run_id if runs else None

    def end_trial(self, trial_id: str, status: str, run_id: str | None = None) -> None:
        """End a trial's run FINISHED or FAILED (from the driver, which sees every trial end); the run is
        looked up by trial id unless its id is given (a trial reports it, sparing a search per trial)."""
        run_id = run_id or self.trial_run_id(trial_id)
        if run_id:
            self.client.set_terminated(run_id, status)

    def finish(self, summary: dict[str, float], failed: bool) -> None:
        client = self.client
        client.log_batch(self.parent_run_id, metrics=[Metric(k, v, _now(), 0) for k, v in summary.items()])
        client.set_terminated(self.parent_run_id, "FAILED" if failed else "FINISHED")

    def describe(self, spec: StudySpec) -> str:
        return (f"mlflow:  mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000"
                f"  (experiment {experiment_name(spec)})")


class TrialTracker:
    """The child run of one trial: found by trial id (a resumed trial continues it) or created.

    study: the study's tracker; trial_id, trial_name: Tune's, the run's tag and name; spec: the trial's
    full spec, logged as params when the run is created; node: the Ray node the trial runs on (a tag,
    rewritten at every start, since a resumed trial may land elsewhere).
    """

    def __init__(self, study: StudyTracker, trial_id: str, trial_name: str, spec: StudySpec, node: str):
        self.client = study.client
        self.run_id = study.trial_run_id(trial_id)
        if self.run_id is None:
            tags = {PARENT_TAG: study.parent_run_id, STUDY_TAG: spec.name, TRIAL_TAG: trial_id,
                    "seed": str(spec.train.seed), "node": node}
            self.run_id = self.client.create_run(study.experiment_id, run_name=trial_name, tags=tags).info.run_id
            self.client.log_batch(self.run_id, params=_params(flatten(spec)))
            self.logged_epoch = 0
        else:  # a resumed trial: its run goes on after the last epoch it logged
            history = self.client.get_metric_history(self.run_id, "epoch")
            self.logged_epoch = max((int(m.value) for m in history), default=0)
            self.client.log_batch(self.run_id, tags=[RunTag("node", node)])

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """All of one epoch's metrics in one call (each call costs tens of ms), once per epoch."""
        epoch = int(metrics["epoch"])
        if epoch <= self.logged_epoch:
            return  # a resumed trial re-running an epoch its first life had already logged
        stamp = _now()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items()])
        self.logged_epoch = epoch

    def log_figures(self, render: Render, epoch: int, final: bool) -> None:
        """Render the figures into a scratch folder and log them under figures/final or figures/epoch_NNN."""
        artifact_path = "figures/final" if final else f"figures/epoch_{epoch:03d}"
        with tempfile.TemporaryDirectory() as folder:
            for path in render(Path(folder)).values():
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, model) -> None:
        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                     pip_requirements=[f"torch=={importlib.metadata.version('torch')}"])


class NullStudyTracker:
    """Tracking off: takes the calls a `StudyTracker` takes and records nothing."""

    def trial(self, trial_id: str, trial_name: str, spec: StudySpec, node: str) -> NullTrialTracker:
        return NullTrialTracker()

    def end_trial(self, trial_id: str, status: str, run_id: str | None = None) -> None:
        pass

    def finish(self, summary: dict[str, float], failed: bool) -> None:
        pass

    def describe(self, spec: StudySpec) -> str:
        return "mlflow:  off (tracking.enabled: false)"


class NullTrialTracker:
    """Tracking off for one trial: nothing logged, and figures never rendered."""
    run_id = None

    def log_epoch(self, metrics: dict[str, float]) -> None:
        pass

    def log_figures(self, render: Render, epoch: int, final: bool) -> None:
        pass

    def log_model(self, model) -> None:
        pass


def start_study(spec: StudySpec, study_file: Path, storage: str) -> StudyTracker | NullStudyTracker:
    """Create (or find, on resume) the experiment and the study's parent run, from the driver."""
    if not spec.tracking.enabled:
        return NullStudyTracker()
    uri = tracking_uri(spec, storage)
    if not spec.tracking.uri:
        Path(storage).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    name = experiment_name(spec)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifacts = None if spec.tracking.uri else f"{storage}/mlartifacts/{name}"
        experiment_id = client.create_experiment(name, artifact_location=artifacts, tags={STUDY_TAG: spec.name})
    else:
        experiment_id = experiment.experiment_id
    parents = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
    if parents:
        return StudyTracker(uri, experiment_id, parents[0].info.run_id)
    run = client.create_run(experiment_id, run_name=spec.name, tags={ROLE_TAG: "study", STUDY_TAG: spec.name})
    base = {k: v for k, v in flatten(spec).items() if k != "search"}
    settings = {f"search.{k}": v for k, v in spec.search.model_dump(exclude={"space"}).items()}
    space = {f"search.space.{k}": json.dumps(v.model_dump(exclude_none=True)) for k, v in spec.search.space.items()}
    client.log_batch(run.info.run_id, params=_params({**base, **settings, **space}))
    client.log_artifact(run.info.run_id, str(study_file))
    return StudyTracker(uri, experiment_id, run.info.run_id)


def find_study(spec: StudySpec, storage: str) -> StudyTracker:
    """The tracker of a study that has run (for the report); InputError if there is none."""
    if not spec.tracking.enabled:
        raise InputError("tracking.enabled: false; the report reads a tracked study's MLflow runs")
    uri = tracking_uri(spec, storage)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(spec))
    if experiment is None:
        raise InputError(f"name: no MLflow experiment {experiment_name(spec)} at {uri}; run the study first")
    parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
    if not parents:
        raise InputError(f"name: the experiment {experiment.name} has no study run")
    return StudyTracker(uri, experiment.experiment_id, parents[0].info.run_id)


def _params(values: dict) -> list[Param]:
    return [Param(k, str(v)[:PARAM_LIMIT]) for k, v in values.items()]


def _now() -> int:
    return int(time.time() * 1000)
