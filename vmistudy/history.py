"""Optuna's views of a study: its configurations as an Optuna study, for optuna-dashboard and the report.

The driver-side `OptunaHistory` callback records each sampled configuration, once all its trials have ended, as
one trial of the Optuna study `spec.name` in a sqlite store beside the MLflow one (<search.storage>/optuna.db):
its sampled values, and the value the searcher was told (`Replicates`: the mean of the final search.metric over
its replicates, the lambda_mi = 0 twins left out). The twins' values are user attrs of the trial. optuna-dashboard
serves the store while the study runs (`dashboard_command`); `draw` writes Optuna's four matplotlib views for
the report. A configuration is recorded once, across driver kills, takeovers of lost trials and --resume: by its
number in the order sampled, which Tune keeps, and its values.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning, OptunaError
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as views
from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX
from sqlalchemy.exc import SQLAlchemyError

from . import layout
from .config import ParamSpec, StudySpec
from .tracking import store_lock

# user attrs: the configuration's number in the order sampled (Replicates made its trials one after another, so
# Tune numbered them together), and its trials' Tune ids (their MLflow runs' tracking.TRIAL_TAG), by TRIAL_INDEX
CONFIGURATION, TRIAL_IDS = "configuration", "tune_trial_ids"
STORE_ERRORS = (OptunaError, SQLAlchemyError, OSError)  # a store that is locked, full or gone
VIEWS = {"importances": views.plot_param_importances, "history": views.plot_optimization_history,
         "parallel_coordinate": views.plot_parallel_coordinate, "slice": views.plot_slice}
IMPORTANCE_TRIALS = 4  # PED-ANOVA, Optuna's default, compares the best configurations with the rest: needs a few


def storage_url(spec: StudySpec) -> str | None:
    """The Optuna store beside the default MLflow one; None for a storage URI (s3://), where sqlite cannot live."""
    storage = layout.storage_path(spec)
    return None if "://" in storage else f"sqlite:///{storage}/optuna.db"


def dashboard_command(spec: StudySpec) -> str:
    return f"optuna-dashboard {storage_url(spec)} --host 127.0.0.1 --port 8080"


def distribution(param: ParamSpec) -> BaseDistribution:
    """The parameter's distribution, as study.SearchSpace samples it."""
    if param.kind == "choice":
        return CategoricalDistribution(param.choice)
    if param.kind == "int":
        return IntDistribution(*param.int)
    return FloatDistribution(*getattr(param, param.kind), log=param.kind == "loguniform")


def load(spec: StudySpec) -> optuna.Study | None:
    """The study's Optuna history, or None where it has none. It only reads: opening a missing sqlite file would
    create it, and a store without tables would get them, racing a driver that creates them."""
    url = storage_url(spec)
    if url is None or not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    try:
        return optuna.load_study(study_name=spec.name,
                                 storage=optuna.storages.RDBStorage(url, skip_table_creation=True))
    except KeyError:  # the store holds other studies only
        return None


class OptunaHistory(tune.Callback):
    """Driver side: each configuration whose trials have all ended, once, as a trial of the Optuna history.

    Every event sweeps all of Tune's trials, so a configuration the store could not take (locked, gone) is
    recorded at a later one, and one that ended in an earlier life of the driver at the first event of this one.
    """

    def __init__(self, spec: StudySpec):
        self.spec, self.url = spec, storage_url(spec)
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
                key = (number, _values(group[0].config))
                if key not in self.recorded:
                    study.add_trial(self._frozen(number, group))
                    self.recorded.add(key)
                self.swept.add(number)
        except STORE_ERRORS as e:  # the history must not fail a trial (Tune errors the trial a callback raises on)
            if not self.warned:
                self.warned = True
                print(f"warning: the Optuna history at {self.url} cannot be written ({type(e).__name__}: {e}); "
                      "the study goes on, and its configurations are recorded once it can be",
                      file=sys.stderr, flush=True)

    def _open(self) -> optuna.Study:
        if self.study is None:
            with store_lock(self.url):  # two drivers creating one sqlite store's tables at once: one fails
                study = optuna.create_study(storage=self.url, study_name=self.spec.name, load_if_exists=True,
                                            direction="maximize" if self.spec.search.mode == "max" else "minimize")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.set_metric_names([self.spec.search.metric])  # the dashboard's and the views' axis label
            self.recorded = {(t.user_attrs[CONFIGURATION], _values(t.params)) for t in study.get_trials(deepcopy=False)
                             if CONFIGURATION in t.user_attrs}
            self.study = study
        return self.study

    def _ended(self, trials: list, ending) -> dict[int, list]:
        """The configurations not swept yet whose trials have all ended, by number, each a list of its trials by
        TRIAL_INDEX."""
        from .study import trials_per_configuration  # here: the driver has it loaded, the report needs none of it

        size = trials_per_configuration(self.spec.search)
        groups: dict[int, list] = {}
        for trial in trials:
            groups.setdefault(_number(trial) // size, []).append(trial)
        return {number: sorted(group, key=lambda t: t.config.get(TRIAL_INDEX, 0))
                for number, group in groups.items() if number not in self.swept and len(group) == size
                and all(t is ending or t.status in ("TERMINATED", "ERROR") for t in group)}

    def _frozen(self, number: int, group: list) -> FrozenTrial:
        from .study import is_twin  # as in _ended

        search = self.spec.search
        finals = {t.trial_id: _final(t, search.metric) for t in group}
        values = [finals[t.trial_id] for t in group if not is_twin(t.config, search)]
        scored = [v for v in values if v is not None]
        params = {k: v for k, v in group[0].config.items() if k != TRIAL_INDEX}
        attrs = {CONFIGURATION: number, TRIAL_IDS: [t.trial_id for t in group], "values": values,
                 "epochs": [(t.last_result or {}).get("epoch") for t in group]}
        if search.paired_baseline:
            attrs["twin_values"] = [finals[t.trial_id] for t in group if is_twin(t.config, search)]
        distributions = {k: distribution(search.space[k]) for k in params}
        if not scored:  # no replicate reported (all errored): the searcher is told NaN, a failed trial
            return optuna.trial.create_trial(state=TrialState.FAIL, params=params, distributions=distributions,
                                             user_attrs=attrs)
        return optuna.trial.create_trial(value=sum(scored) / len(scored), params=params, distributions=distributions,
                                         user_attrs=attrs)


def _number(trial) -> int:
    """The trial's number, from 0, in the order Tune created the trials: its experiment tag's prefix, kept across
    --resume; a lost trial created again (study.ContinueTrials) has its number again. Tune's list of restored
    trials is in no such order."""
    return int(trial.experiment_tag.split("_", 1)[0]) - 1


def _values(params: dict) -> str:
    """A configuration's sampled values as text, to tell configurations of one number apart."""
    return json.dumps({k: v for k, v in params.items() if k != TRIAL_INDEX}, sort_keys=True, default=str)


def _final(trial, metric: str) -> float | None:
    """The metric of the trial's last report, as Tune tells the searcher; None where it tells none (an errored
    trial, one that never reported) and for NaN, which JSON user attrs cannot hold."""
    value = None if trial.status == "ERROR" else (trial.last_result or {}).get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def draw(study: optuna.Study, folder: Path) -> dict[str, Path | str]:
    """Optuna's matplotlib views of the study, each as folder/optuna-<view>.png or the reason it is not drawn."""
    reasons = _undrawable(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    target = (study.metric_names or ["value"])[0]
    return {name: reasons.get(name) or _save(plot, study, target, folder / f"optuna-{name}.png")
            for name, plot in VIEWS.items()}


def _undrawable(complete: list[FrozenTrial]) -> dict[str, str]:
    """Why views cannot be drawn from these completed configurations, for those that cannot."""
    trials, params = len(complete), len({p for t in complete for p in t.params})
    if trials == 0:
        return dict.fromkeys(VIEWS, "no configuration has completed")
    if params == 0:
        return dict.fromkeys(("importances", "parallel_coordinate", "slice"), "nothing is searched")
    reasons = {}
    if trials == 1:
        reasons = dict.fromkeys(("parallel_coordinate", "slice"), "one completed configuration: nothing to compare")
    if params == 1:
        reasons["importances"] = "one searched parameter: its importance is 1"
    elif trials < IMPORTANCE_TRIALS:
        reasons["importances"] = f"{trials} completed configurations; ranking parameters takes {IMPORTANCE_TRIALS}"
    elif len({t.value for t in complete}) == 1:
        reasons["importances"] = "every configuration has the same value: no parameter matters"
    return reasons


def _save(plot, study: optuna.Study, target: str, path: Path) -> Path:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna's matplotlib views are all experimental
        axes = plot(study, target_name=target)
    figure = np.ravel(axes)[0].figure  # the slice view has one axes per parameter
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
