"""Ray Tune adapter: the study's search space, searcher, scheduler and trainable.

Every algorithm runs through OptunaSearch with a define-by-run space (TPE, Gaussian-process, random or grid sampler), as
`TriedOnce` (a configuration proposed again is told its outcome, not trained again), wrapped by
`Replicates`, which turns each sampled configuration into `replicates` seeds and, with `paired_baseline`, a
lambda_mi = 0 twin of each seed (same seed, so same initial weights): its members.
Twins are spared by ASHA and do not count toward the score the searcher sees. With `bundle`, a
configuration's members are one Tune trial instead, trained as one vectorized model (bundle.py), each
member with its own MLflow run; Tune, ASHA and the searcher see the mean of its members with lambda_mi > 0.
Trials log to MLflow through tracking.py's trackers; the driver-side `EndTrialRuns` callback ends their runs
(the Tune side of the bridge), and `ContinueTrials` lets a trial go on from what it saved whatever instant the
driver died at.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
import ray
import torch
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.result import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX

from . import data as datasets
from . import figures, history, layout, replay
from .bundle import Bundle
from .config import SUBSET_PATH, SearchSpec, StudySpec, rung_ranking, validate
from .layout import experiment_path, read_bytes, storage_path, write_bytes
from .tracking import NullStudyTracker, StudyTracker, TrialTracker
from .trainer import Epoch, Trainer, save_checkpoint

CHECKPOINT = "checkpoint.pt"
RUN_ID = "mlflow_run_id"  # reported with every epoch, so that the driver ends the run without searching for it
KEPT = "mlflow_kept"  # reported with every epoch: the trial's MLflow calls the server has not taken yet


class SearchSpace:
    """Optuna define-by-run function; a parameter with `when` is sampled only if earlier ones match it."""

    def __init__(self, search: SearchSpec):
        self.params = search.space

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for path, p in self.params.items():
            if p.when and any(chosen.get(k) != v for k, v in p.when.items()):
                continue
            if p.kind == "choice":
                chosen[path] = trial.suggest_categorical(path, p.choice)
            elif p.kind == "int":
                chosen[path] = trial.suggest_int(path, *p.int)
            else:
                chosen[path] = trial.suggest_float(path, *getattr(p, p.kind), log=p.kind == "loguniform")


class TriedOnce(OptunaSearch):
    """OptunaSearch that trains a configuration once. Where the space is discrete its sampler proposes
    configurations already tried (18% of what TPE trained on the learning-curve table), which would train
    again with the same seeds to the same numbers: such a proposal is told the outcome the configuration
    already had (or will have) and the sampler is asked again. After PATIENCE proposals in a row that were all
    tried, the space is exhausted or the sampler has converged, and the search ends."""

    PATIENCE = 50

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tried: dict[str, tuple | None] = {}  # configuration -> (result, error) told, None while it trains
        self._waiting: dict[str, list[str]] = {}  # configuration -> proposals waiting for its outcome
        self._proposal: dict[str, tuple[str, str]] = {}  # trial id -> (Optuna's id for it, configuration)

    def suggest(self, trial_id: str):
        for attempt in range(self.PATIENCE):
            proposal = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            config = super().suggest(proposal)
            if not isinstance(config, dict):
                return config
            key = json.dumps(config, sort_keys=True, default=str)
            if key not in self._tried:
                self._tried[key] = None
                self._proposal[trial_id] = proposal, key
                return config
            self._waiting.setdefault(key, []).append(proposal)
            if self._tried[key] is not None:
                self._tell(key)
        print(f"note: the last {self.PATIENCE} configurations the searcher proposed had all been tried: the space "
              f"is exhausted or the search has converged; it ends after {len(self._tried)}", flush=True)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        proposal, key = self._proposal[trial_id]
        super().on_trial_complete(proposal, result, error)
        self._tried[key] = result, error
        self._tell(key)

    def _tell(self, key: str) -> None:
        result, error = self._tried[key]
        for proposal in self._waiting.pop(key, []):
            super().on_trial_complete(proposal, result, error)


MEMBERS = "members"  # in a bundle trial's report: each member's metrics, with its seed and lambda_mi


def members_per_configuration(search: SearchSpec) -> int:
    """The models a configuration trains: its seeds, and their twins."""
    return search.replicates * (2 if search.paired_baseline else 1)


def trials_per_configuration(search: SearchSpec) -> int:
    """The Tune trials of a configuration: a bundle trains its members in one."""
    return 1 if search.bundle else members_per_configuration(search)


def configurations(search: SearchSpec) -> int:
    if search.algorithm == "grid":
        return math.prod(len(p.choice) for p in search.space.values())
    return search.num_samples


class Replicates(Repeater):
    """Ray's Repeater, except that lambda_mi = 0 twins are left out of the mean the searcher is told."""

    def __init__(self, searcher, search: SearchSpec):
        super().__init__(searcher, repeat=trials_per_configuration(search), set_index=True)
        self.paired = search.paired_baseline
        self.twins: set[str] = set()

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict) and self.paired and config[TRIAL_INDEX] % 2:
            self.twins.add(trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs):
        super().on_trial_complete(trial_id, None if trial_id in self.twins else result, **kwargs)


def is_twin(config: dict, search: SearchSpec) -> bool:
    return search.paired_baseline and config.get(TRIAL_INDEX, 0) % 2 == 1


class SparingASHA(AsyncHyperBandScheduler):
    """ASHA that decides at its first `rungs` milestones only and lets lambda_mi = 0 twins run to the end, so
    every pair is complete."""

    def __init__(self, search: SearchSpec, rungs: int | None, **kwargs):
        super().__init__(**kwargs)
        self.search = search
        # Tune has no setting for this (a smaller max_t would also end every trial there): keep the first rungs
        for bracket in self._brackets:  # one bracket; its rungs run from the last milestone down to the first
            bracket._rungs = bracket._rungs[-rungs:] if rungs else bracket._rungs

    def on_trial_result(self, tune_controller, trial, result):
        if is_twin(trial.config, self.search):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if not is_twin(trial.config, self.search):
            super().on_trial_complete(tune_controller, trial, result)


class GPThenTPE(optuna.samplers.BaseSampler):
    """Optuna's Gaussian-process sampler for the study's first `switch` trials, TPE after. On the learning-curve
    table GP found a target configuration in 0.56x random search's trial-epochs, TPE in 0.72x (docs/STUDY_LAYER.md);
    but a GP's fit grows with the cube of its trials, to about a second a suggestion past a few hundred on 2 cores
    (a 1,000-trial study on GP alone: 60 ms of driver time per result, over the goal of 50). TPE, told the same
    history, takes over from there."""

    def __init__(self, gp: optuna.samplers.BaseSampler, tpe: optuna.samplers.BaseSampler, switch: int = 100):
        self._gp, self._tpe, self._switch = gp, tpe, switch

    def _at(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        return self._gp if trial.number < self._switch else self._tpe

    def infer_relative_search_space(self, study, trial):
        return self._at(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._at(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._at(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._at(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._at(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._gp.reseed_rng()
        self._tpe.reseed_rng()


def _search_algorithm(spec: StudySpec) -> Replicates:
    search = spec.search

    def tpe(multivariate: bool = search.multivariate):
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials,
                                          multivariate=multivariate)

    def gp():  # a parameter outside the GP's joint space (a conditional one) goes to TPE, not to random draws
        return optuna.samplers.GPSampler(seed=search.seed, n_startup_trials=search.startup_trials,
                                         independent_sampler=tpe(multivariate=False), warn_independent_sampling=False)

    sampler = {"auto": lambda: GPThenTPE(gp(), tpe()), "gp": gp, "optuna": tpe,
               "random": lambda: optuna.samplers.RandomSampler(seed=search.seed),
               "grid": lambda: optuna.samplers.GridSampler(
                   {path: p.choice for path, p in search.space.items()}, seed=search.seed)}[search.algorithm]()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = TriedOnce(space=SearchSpace(search), metric=search.metric, mode=search.mode, sampler=sampler)
    return Replicates(searcher, search)


def _scheduler(spec: StudySpec) -> TrialScheduler:
    search = spec.search
    if search.scheduler.name == "none":
        return FIFOScheduler()
    scheduler = search.scheduler
    metric, mode = rung_ranking(spec)
    return SparingASHA(search, scheduler.rungs, metric=metric, mode=mode, time_attr="epoch",
                       max_t=spec.train.epochs, grace_period=scheduler.grace_period,
                       reduction_factor=scheduler.reduction_factor)


def trial_spec(spec: StudySpec, config: dict) -> StudySpec:
    """The study's spec with one trial's sampled values, seed offset and twin rule applied."""
    raw = spec.model_dump()
    raw["search"] = None
    for path, value in config.items():
        if path == TRIAL_INDEX:
            continue
        if path == SUBSET_PATH:
            raw["mi"].update(spec.search.subsets[value].model_dump())
            continue
        *parents, leaf = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    index = config.get(TRIAL_INDEX, 0)
    replicate = index // 2 if spec.search.paired_baseline else index
    raw["train"]["seed"] = spec.train.seed + replicate
    if is_twin(config, spec.search):
        raw["mi"]["lambda_mi"] = 0.0
    return validate(raw, source="trial")


def member_configs(config: dict, search: SearchSpec) -> list[dict]:
    """The configurations (TRIAL_INDEX: seed offset and twin) of a Tune trial's members: the trial's own, or
    one per member of its configuration in a bundle."""
    if not search.bundle:
        return [config]
    return [{**config, TRIAL_INDEX: m} for m in range(members_per_configuration(search))]


def member_rows(config: dict, result: dict, search: SearchSpec) -> list[dict]:
    """A Tune trial's members, as {"config": ..., "metrics": ...} each: the trial, or its bundle's members (with
    no metrics before its first report)."""
    if not search.bundle:
        return [{"config": config, "metrics": result}]
    reported = result.get(MEMBERS, [])
    return [{"config": c, "metrics": reported[m] if m < len(reported) else {}}
            for m, c in enumerate(member_configs(config, search))]


def _member_runs(search: SearchSpec, trial_id: str, name: str, earlier_ids: Sequence[str] = ()
                 ) -> list[tuple[str, str, list[str]]]:
    """Each member's MLflow run as the tracker knows it: (trial id tag, run name, the tags of the lost trials
    whose run it took over). A bundle's member m is `<id>-m`, named `<name>/member_m`: its kept calls are in the
    trial's folder's member_m/."""
    if not search.bundle:
        return [(trial_id, name, list(earlier_ids))]
    return [(f"{trial_id}-{m}", f"{name}/member_{m}", [f"{e}-{m}" for e in earlier_ids])
            for m in range(members_per_configuration(search))]


def _end_runs(tracker: StudyTracker | NullStudyTracker, search: SearchSpec, trial_id: str, name: str, status: str,
              run_ids: list | None = None, earlier_ids: Sequence[str] = ()) -> None:
    """End the MLflow runs of a Tune trial's members (by their ids, where the trial reported them)."""
    run_ids = run_ids or []
    for m, (tag, run_name, earlier) in enumerate(_member_runs(search, trial_id, name, earlier_ids)):
        tracker.end_trial(tag, run_name, status, run_ids[m] if m < len(run_ids) else None, earlier)


def _train_trial(config: dict, spec_dump: dict, tracker: StudyTracker | NullStudyTracker) -> None:
    """One Tune trial: its model (or with search.bundle, its configuration's models as one bundle) continued
    from the trial's saved state if any, then trained epoch by epoch, each member's epoch logged to its MLflow
    run, and the epoch reported to Tune."""
    trial = _Trial.start(config, spec_dump, tracker)
    spec = trial.spec
    torch.set_num_threads(spec.train.threads or max(1, int(spec.resources.cpu)))
    members, epochs, state_dict = _models(trial, datasets.load(spec.data), trial.restored_state())
    if members[0].epoch == spec.train.epochs:  # it ended, but the driver died before Tune recorded the end
        trial.report([m.history[-1] for m in members], state_dict())
    for epoch in epochs:
        for run, member, member_epoch, member_spec in zip(trial.runs, members, epoch, trial.members):
            _record(run, member, member_epoch, member_spec)
        trial.report([e.metrics for e in epoch], state_dict())


def _models(trial: _Trial, data: datasets.ImageData, state: dict | None
            ) -> tuple[list[Trainer], Iterator[list[Epoch]], Callable[[], dict]]:
    """The trial's models, continued from `state` if any: the members' trainers, their epochs to come (each a
    list, one per member), and the state to save after each."""
    recipes, figures_every = [member.recipe for member in trial.members], trial.spec.tracking.figures_every
    if trial.bundled:
        bundle = Bundle.resume(recipes, data, state[MEMBERS]) if state else Bundle.fresh(recipes, data)
        return (bundle.members, bundle.epochs(figures_every),
                lambda: {"epoch": bundle.epoch, MEMBERS: bundle.state_dicts()})
    trainer = Trainer(recipes[0], data)
    if state:
        trainer.load_state_dict(state)
    return [trainer], ([epoch] for epoch in trainer.epochs(figures_every)), trainer.state_dict


def _replay_trial(config: dict, spec_dump: dict, tracker: StudyTracker | NullStudyTracker) -> None:
    """A trial that replays its configuration's recorded curve (replay.table) instead of training: the same
    start, MLflow run, saved state and reports as `_train_trial`, with epochs that cost their recorded
    seconds times replay.time_scale."""
    trial = _Trial.start(config, spec_dump, tracker)
    spec = trial.spec
    curve, seconds = replay.read(spec.replay.table).curve(spec)
    done = (trial.restored_state() or {"epoch": 0})["epoch"]
    if done == spec.train.epochs:  # it ended, but the driver died before Tune recorded the end
        trial.report([curve[done - 1]], {"epoch": done})
    for metrics, wall in zip(curve[done:spec.train.epochs], seconds[done:]):
        time.sleep(wall * spec.replay.time_scale)
        trial.runs[0].log_epoch(metrics)
        trial.report([metrics], {"epoch": int(metrics["epoch"])})


@dataclass
class _Trial:
    """What every trainable shares: its members' specs and MLflow runs (one of each, or a bundle's), where its
    state is kept, how it reports.

    The state that resumes a trial is saved after every epoch in the trial's own folder (layout.TRIAL_STATE),
    replacing the last, rather than as a Tune checkpoint: Tune writes its whole experiment state (every
    trial, the searcher) whenever a trial checkpoints, which at a thousand trials costs more than the trials.
    Tune gets one checkpoint, at the last epoch, so a finished trial is in the experiment state at once.
    """
    members: list[StudySpec]
    twins: list[bool]
    runs: list[TrialTracker]
    bundled: bool
    node: str
    gpus: str  # the ids of the GPUs Ray gave the trial, "0,1"; a fraction of one (resources.gpu < 1) shares it
    state_path: str

    @classmethod
    def start(cls, config: dict, spec_dump: dict, tracker: StudyTracker | NullStudyTracker) -> _Trial:
        study = StudySpec.model_validate(spec_dump)
        configs = member_configs(config, study.search)
        members = [trial_spec(study, c) for c in configs]
        node = ray.get_runtime_context().get_node_id()
        context = tune.get_context()
        name = context.get_trial_name()
        marker = layout.read_marker(study, name) or {}  # ContinueTrials writes it before the trial starts
        fields = study.search.trial_fields()  # a run's params: the rest is on the study's run
        runs = [tracker.trial(tag, run_name, spec, node, earlier, fields) for spec, (tag, run_name, earlier) in
                zip(members, _member_runs(study.search, context.get_trial_id(), name, marker.get("owners", [])))]
        return cls(members, [is_twin(c, study.search) for c in configs], runs, study.search.bundle, node,
                   ",".join(map(str, ray.get_gpu_ids())), layout.trial_state_path(study, name))

    @property
    def spec(self) -> StudySpec:
        """What the members share (train.epochs, tracking, resources): the first's spec."""
        return self.members[0]

    def restored_state(self) -> dict | None:
        data = read_bytes(self.state_path)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True) if data else None

    def report(self, members: list[dict], state: dict) -> None:
        """Save the state to resume from after this epoch, then report the epoch (each member's metrics) to
        Tune, where a scheduler may stop the trial."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(self.state_path, buffer.getvalue())
        metrics = {**self._result(members), "node_id": self.node, "gpu_ids": self.gpus,
                   RUN_ID: [run.run_id for run in self.runs], KEPT: sum(run.kept for run in self.runs)}
        if metrics["epoch"] < self.spec.train.epochs or tune.get_checkpoint():
            # a trial Tune restored from its last-epoch checkpoint reports that epoch again without a new one: with
            # one checkpoint kept, Tune would delete the one its saved experiment state names
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state, Path(folder) / CHECKPOINT)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def _result(self, members: list[dict]) -> dict:
        """What Tune is told: the member's metrics, its seed and lambda_mi; of a bundle, the mean of the members
        that are not twins (what the searcher and ASHA score), and each member's under MEMBERS."""
        rows = [{**metrics, "seed": spec.train.seed, "lambda_mi": spec.mi.lambda_mi}
                for metrics, spec in zip(members, self.members)]
        if not self.bundled:
            return rows[0]
        scored = [row for row, twin in zip(rows, self.twins) if not twin]
        mean = {key: _mean([row[key] for row in scored]) for key in scored[0] if key != "seed"}
        return {**mean, MEMBERS: rows}


def _mean(values: list[float]) -> float:
    """Their mean; what all members share (epoch, step, temperature) as it is, an int staying one."""
    return values[0] if len(set(values)) == 1 else statistics.fmean(values)


def _record(run: TrialTracker, trainer: Trainer, epoch: Epoch, spec: StudySpec) -> None:
    """Log an epoch to MLflow, its figures when due, and the final model.

    All of it before the report to Tune: a scheduler may stop the trial inside that call, the last one included.
    """
    run.log_epoch(epoch.metrics)
    if epoch.figures:
        run.log_figures(lambda folder: figures.thesis_figures(trainer.vae, spec.mi, trainer.data, folder),
                        epoch.number, epoch.last)
    if epoch.last and spec.tracking.log_model:
        run.log_model(trainer.vae)


class EndTrialRuns(tune.Callback):
    """Driver side: end each trial's MLflow run FINISHED (ASHA-stopped trials included) or FAILED, and tell the
    user once when trials keep what the tracking server does not take (trials print nothing of it)."""

    def __init__(self, spec: StudySpec, tracker: StudyTracker | NullStudyTracker):
        self.search, self.tracker = spec.search, tracker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(KEPT):
            self.tracker.tell_kept()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def _end(self, trial, status: str) -> None:
        _end_runs(self.tracker, self.search, trial.trial_id, _short_name(trial), status,
                  (trial.last_result or {}).get(RUN_ID))


class OptunaHistory(tune.Callback):
    """Driver side: each configuration whose trials have all ended, once, as a trial of the Optuna history.

    Every event sweeps all of Tune's trials, so a configuration the store could not take (locked, gone) is
    recorded at a later one, and one that ended in an earlier life of the driver at the first event of this one.
    """

    def __init__(self, spec: StudySpec):
        self.spec, self.url = spec, history.storage_url(spec)
        self.study: optuna.Study | None = None  # opened at setup, after the Tuner pickled this (tuner.pkl)
        self.recorded: set[tuple[int, str]] = set()  # (configuration number, sampled values) of those in the store
        self.swept: set[int] = set()  # numbers of the configurations this driver found in the store or put there
        self.warned = False

    def setup(self, **info):
        if self.url is None:
            print(f"note: search.storage {self.spec.search.storage} is a URI: no Optuna history is kept (it is a "
                  "sqlite file beside a local storage)", file=sys.stderr, flush=True)
        self._sweep([])  # creates the study: the dashboard shows it from the start

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._sweep(trials, trial)  # Tune marks the trial TERMINATED after its callbacks

    def on_trial_error(self, iteration, trials, trial, **info):
        self._sweep(trials, trial)

    def _sweep(self, trials: list, ending=None) -> None:
        if self.url is None:
            return
        try:
            study = self._open()
            for number, group in self._ended(trials, ending).items():
                key = (number, history.values_key(_sampled(group[0].config)))
                if key not in self.recorded:
                    study.add_trial(self._frozen(number, group))
                    self.recorded.add(key)
                self.swept.add(number)
        except history.STORE_ERRORS as e:  # must not fail a trial: Tune errors the trial a callback raises on
            if not self.warned:
                self.warned = True
                print(f"warning: the Optuna history at {self.url} cannot be written ({type(e).__name__}: {e}); "
                      "the study goes on, and its configurations are recorded once it can be",
                      file=sys.stderr, flush=True)

    def _open(self) -> optuna.Study:
        if self.study is None:
            self.study, self.recorded = history.open_study(self.spec, self.url)
        return self.study

    def _ended(self, trials: list, ending) -> dict[int, list]:
        """The configurations not swept yet whose trials have all ended, by number, each a list of its trials by
        TRIAL_INDEX."""
        size = trials_per_configuration(self.spec.search)
        groups: dict[int, list] = {}
        for trial in trials:
            groups.setdefault(_number(trial) // size, []).append(trial)
        return {number: sorted(group, key=lambda t: t.config.get(TRIAL_INDEX, 0))
                for number, group in groups.items() if number not in self.swept and len(group) == size
                and all(t is ending or t.status in ("TERMINATED", "ERROR") for t in group)}

    def _frozen(self, number: int, group: list) -> FrozenTrial:
        search = self.spec.search
        finals = [(is_twin(config, search), value) for t in group for config, value in _finals(t, search)]
        values = [value for twin, value in finals if not twin]
        scored = [v for v in values if v is not None]
        params = _sampled(group[0].config)
        epochs = [(t.last_result or {}).get("epoch") for t in group]
        attrs = {history.CONFIGURATION: number, history.TRIAL_IDS: [t.trial_id for t in group], "values": values,
                 "epochs": epochs}
        if search.paired_baseline:
            attrs["twin_values"] = [value for twin, value in finals if twin]
        distributions = {k: history.distribution(search.space[k]) for k in params}
        if not scored:  # no replicate reported (all errored): the searcher is told NaN, a failed trial
            return optuna.trial.create_trial(state=TrialState.FAIL, params=params, distributions=distributions,
                                             user_attrs=attrs)
        value = sum(scored) / len(scored)
        shortest = min((e for t, e in zip(group, epochs) if t.status != "ERROR" and e is not None),
                       default=self.spec.train.epochs)
        if shortest < self.spec.train.epochs:  # stopped early (ASHA): its value is no final one, as Optuna's pruned
            return optuna.trial.create_trial(state=TrialState.PRUNED, params=params, distributions=distributions,
                                             user_attrs=attrs, intermediate_values={shortest: value})
        return optuna.trial.create_trial(value=value, params=params, distributions=distributions, user_attrs=attrs)


def _number(trial) -> int:
    """The trial's number, from 0, in the order Tune created the trials: its experiment tag's prefix, kept across
    --resume; a lost trial created again (study.ContinueTrials) has its number again. Tune's list of restored
    trials is in no such order."""
    return int(trial.experiment_tag.split("_", 1)[0]) - 1


def _sampled(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != TRIAL_INDEX}


def _finals(trial, search: SearchSpec) -> list[tuple[dict, float | None]]:
    """Each member's configuration and the metric of its last report (for a solo trial, as Tune tells the
    searcher); None where there is none (an errored trial, one that never reported) and for NaN, which JSON
    user attrs cannot hold."""
    result = {} if trial.status == "ERROR" else trial.last_result or {}
    rows = member_rows(trial.config, result, search)
    return [(row["config"], _finite(row["metrics"].get(search.metric))) for row in rows]


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class ContinueTrials(tune.Callback):
    """Driver side: a trial goes on from what it saved, its logs included, even where Tune lost it.

    Tune snapshots its experiment state (trials, searcher) every few seconds. A trial started after the last
    snapshot before the driver died is unknown to the resumed study, whose searcher, restored from that
    snapshot, suggests the same configuration again as a new trial. So each trial is marked at its first start
    (layout.TRIAL_MARKER: its configuration, and the ids of the trials that had its folder), before it can
    save anything; at its first start a trial takes over the folder (saved state, MLflow run, logs) of such a
    lost trial with its configuration. The runs of lost trials nobody took over end KILLED with the study.

    Tune also starts a restored trial's result.json and progress.csv afresh, as if the trial started over
    (unless it has a Tune checkpoint); this copies the stored ones back into the trial's fresh local folder
    before Tune's loggers open them, without the last epoch's rows, which a trial that ended before Tune
    recorded it reports again.
    """

    def __init__(self, spec: StudySpec, tracker: StudyTracker | NullStudyTracker):
        self.spec, self.tracker = spec, tracker
        self.lost: dict[str, dict] | None = None  # the markers of lost trials, by folder name

    def on_trial_start(self, iteration, trials, trial, **info):
        name = trial.storage.trial_dir_name
        if self.lost is None:  # the first start of this driver: every trial it restored is known by now
            lost = layout.unknown_trials(self.spec, {t.storage.trial_dir_name for t in trials})
            self.lost = {folder: marker for folder, marker in lost.items() if not marker.get("ended")}
        if layout.read_marker(self.spec, name) is None:
            self._first_start(trial, name)
        self._keep_logs(trial)

    def _first_start(self, trial, name: str) -> None:
        config = history.values_key(trial.config)  # its replicate index included
        lost = next((folder for folder, marker in self.lost.items() if marker["config"] == config), None)
        owners = self.lost.pop(lost)["owners"] if lost else []
        if lost:
            layout.move_trial(self.spec, lost, name)
        layout.write_marker(self.spec, name, {"config": config, "owners": [*owners, trial.trial_id]})

    def _keep_logs(self, trial) -> None:
        """Put the trial's stored logs, less its last epoch's rows, in its local folder and in storage (whence Tune
        copies them itself when the trial has a Tune checkpoint)."""
        for name in (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE):
            local = Path(trial.local_path, name)
            if local.exists():  # the same driver restarting a trial: the logs are already here
                continue
            stored = f"{experiment_path(self.spec)}/{trial.storage.trial_dir_name}/{name}"
            text = (read_bytes(stored) or b"").decode()
            if not text:  # a trial's first start: nothing stored yet
                continue
            epochs = trial_spec(self.spec, trial.config).train.epochs
            kept = _without_epoch(text, epochs, name == EXPR_RESULT_FILE)
            if kept != text:
                write_bytes(stored, kept.encode())
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(kept)

    def on_experiment_end(self, trials, **info):
        for folder, marker in (self.lost or {}).items():
            *earlier, last = marker["owners"]
            _end_runs(self.tracker, self.spec.search, last, folder, "KILLED", earlier_ids=earlier)
            layout.write_marker(self.spec, folder, {**marker, "ended": True})


def _without_epoch(text: str, epoch: int, is_json: bool) -> str:
    """A result.json's (JSON lines) or progress.csv's text without the rows of `epoch`."""
    lines = text.splitlines(keepends=True)
    if is_json:
        return "".join(line for line in lines if line.strip() and json.loads(line).get("epoch") != epoch)
    if not lines:
        return text
    column = next(csv.reader(lines[:1])).index("epoch")
    return "".join([lines[0], *(line for line, row in zip(lines[1:], csv.reader(lines[1:]))
                                 if row[column] != str(epoch))])


def _short_name(trial) -> str:
    return f"{trial.trainable_name.lstrip('_')}_{trial.trial_id}"  # also the run's name: matplotlib hides _labels


def _bound_trainable(spec: StudySpec, tracker: StudyTracker | NullStudyTracker):
    trainable = _replay_trial if spec.replay.table else _train_trial
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(trainable, spec_dump=spec.model_dump(), tracker=tracker),
                               resources)


def tuner(spec: StudySpec, tracker: StudyTracker | NullStudyTracker, callbacks: tuple[tune.Callback, ...] = (),
          stop: tune.Stopper | None = None, verbose: int = 1) -> tune.Tuner:
    """The study's Tuner; `callbacks`, `stop` and `verbose` are Tune's, for whoever watches the study (the
    benchmarks)."""
    search = spec.search
    _without_tensorboard()
    return tune.Tuner(
        _bound_trainable(spec, tracker),
        tune_config=tune.TuneConfig(
            search_alg=_search_algorithm(spec), scheduler=_scheduler(spec),
            num_samples=configurations(search) * trials_per_configuration(search),
            max_concurrent_trials=search.max_concurrent, reuse_actors=search.reuse_actors,
            trial_name_creator=_short_name, trial_dirname_creator=_short_name),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=storage_path(spec),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            # a trial's last-epoch checkpoint (its only one, see _Trial) makes Tune save the experiment state
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=verbose, stop=stop,
            callbacks=[ContinueTrials(spec, tracker), EndTrialRuns(spec, tracker), *callbacks,
                       JsonLoggerCallback(), CSVLoggerCallback()]),
    )


def _without_tensorboard() -> None:
    """Tune's own loggers off: the Tuner is given the two the study reads (each trial's result.json and
    progress.csv), not TensorBoard's, whose event files nothing reads (the study tracks in MLflow) and which took
    a third of the driver's CPU at 1,000 trials. Tune reads the variable when the study starts (fit)."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def restore(spec: StudySpec, tracker: StudyTracker | NullStudyTracker) -> tune.Tuner:
    """Continue a stopped study: searcher state, trial count, unfinished and errored trials from checkpoints."""
    _without_tensorboard()  # the restored Tuner has the loggers it was given
    return tune.Tuner.restore(experiment_path(spec), _bound_trainable(spec, tracker),
                              resume_unfinished=True, resume_errored=True)


def connect(address: str | None, verbose: bool = False) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS, which `ray job submit` sets), else start a local Ray.
    `verbose`: Ray's log lines and the trials' own output on the console too (the study's view is console.py)."""
    address = address or os.environ.get("RAY_ADDRESS")
    level = logging.INFO if verbose else logging.ERROR  # quiet: not even its notes on token authentication
    if address:
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=verbose, logging_level=level)
