"""MLflow adapter: one experiment per study, one parent run per study, one child run per trial.

The driver creates the store, the experiment (absolute artifact location) and the parent run before any
trial starts: trials that race to create a fresh sqlite store crash, and an experiment created inside a
trial puts its artifacts in Ray's temporary folders. A trial finds its own run by its trial id, so a
resumed trial continues the same run; epochs already logged are not logged again. The driver's
`RunStatus` callback ends each run FINISHED or FAILED, since ASHA stops a trial inside `tune.report`
and no code after it runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray import tune

from .config import StudySpec, flatten

STUDY_TAG, TRIAL_TAG, ROLE_TAG = "vmistudy.study", "vmistudy.trial_id", "vmistudy.role"
PARENT_TAG = "mlflow.parentRunId"
PARAM_LIMIT = 6000  # MLflow's longest param value


def tracking_uri(spec: StudySpec, storage: str) -> str:
    """tracking.uri, else a sqlite store beside the study folders (one store for every study there)."""
    return spec.tracking.uri or f"sqlite:///{storage}/mlflow.db"


def experiment_name(spec: StudySpec) -> str:
    return spec.tracking.experiment or spec.name


@dataclass(frozen=True)
class StudyRun:
    """Where a study's runs live; small and picklable, handed to every trial."""
    uri: str
    experiment_id: str
    parent_run_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def trial_run_id(self, trial_id: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=2)
        return runs[0].info.run_id if runs else None


def start_study(spec: StudySpec, study_file: Path, storage: str) -> StudyRun:
    """Create (or find, on resume) the experiment and the study's parent run, from the driver."""
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
        return StudyRun(uri, experiment_id, parents[0].info.run_id)
    run = client.create_run(experiment_id, run_name=spec.name, tags={ROLE_TAG: "study", STUDY_TAG: spec.name})
    base = {k: v for k, v in flatten(spec).items() if k != "search"}
    settings = {f"search.{k}": v for k, v in spec.search.model_dump(exclude={"space"}).items()}
    space = {f"search.space.{k}": json.dumps(v.model_dump(exclude_none=True)) for k, v in spec.search.space.items()}
    client.log_batch(run.info.run_id, params=params({**base, **settings, **space}))
    client.log_artifact(run.info.run_id, str(study_file))
    return StudyRun(uri, experiment_id, run.info.run_id)


def params(values: dict) -> list[Param]:
    return [Param(k, str(v)[:PARAM_LIMIT]) for k, v in values.items()]


def finish_study(study: StudyRun, summary: dict[str, float], failed: bool) -> None:
    client = study.client
    client.log_batch(study.parent_run_id, metrics=[Metric(k, v, now(), 0) for k, v in summary.items()])
    client.set_terminated(study.parent_run_id, "FAILED" if failed else "FINISHED")


def now() -> int:
    return int(time.time() * 1000)


class TrialRun:
    """The child run of one trial: found by trial id, or created with the trial's spec as params."""

    def __init__(self, study: StudyRun, trial_id: str, trial_name: str, spec: StudySpec, node: str):
        self.client = study.client
        run_id = study.trial_run_id(trial_id)
        if run_id is None:
            tags = {PARENT_TAG: study.parent_run_id, STUDY_TAG: spec.name, TRIAL_TAG: trial_id,
                    "seed": str(spec.train.seed), "node": node}
            run_id = self.client.create_run(study.experiment_id, run_name=trial_name, tags=tags).info.run_id
            self.client.log_batch(run_id, params=params(flatten(spec)))
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, "epoch")
        self.logged_epoch = max((int(m.value) for m in history), default=0)
        self.client.log_batch(run_id, tags=[RunTag("node", node)])

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """All of one epoch's metrics in one call (each call costs tens of ms), once per epoch."""
        epoch = int(metrics["epoch"])
        if epoch <= self.logged_epoch:
            return  # a resumed trial re-running an epoch its first life had already logged
        stamp = now()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, epoch) for k, v in metrics.items()])
        self.logged_epoch = epoch

    def log_figures(self, figures: dict[str, Path], folder: str) -> None:
        for path in figures.values():
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_model(self, model) -> None:
        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


class RunStatus(tune.Callback):
    """Driver side: end each trial's run FINISHED (including ASHA-stopped trials) or FAILED."""

    def __init__(self, study: StudyRun):
        self.study = study

    def _end(self, trial, status: str) -> None:
        run_id = self.study.trial_run_id(trial.trial_id)
        if run_id:
            self.study.client.set_terminated(run_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

