"""Optuna's views of a study: its configurations as an Optuna study, for optuna-dashboard and the report.

The driver-side `study.OptunaHistory` callback records each sampled configuration, once all its trials have ended,
as one trial of the Optuna study `spec.name` in a sqlite store beside the MLflow one (<search.storage>/optuna.db):
its sampled values, and the value the searcher was told (`Replicates`: the mean of the final search.metric over
its replicates, the lambda_mi = 0 twins left out). The twins' values are user attrs of the trial. A configuration
stopped before the last epoch (ASHA) is a PRUNED trial with that value at the epoch it reached: the views draw
completed trials, which then all ran every epoch. optuna-dashboard
serves the store while the study runs (`dashboard_command`); `draw` writes Optuna's four matplotlib views for
the report. A configuration is recorded once, across driver kills, takeovers of lost trials and --resume: by its
number in the order sampled, which Tune keeps, and its values. No Ray here: the report reads it.
"""
from __future__ import annotations

import importlib
import json
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
from sqlalchemy.exc import SQLAlchemyError

from . import layout
from .config import ParamSpec, StudySpec

# user attrs: the configuration's number in the order sampled (Replicates made its trials one after another, so
# Tune numbered them together), and its trials' Tune ids (their MLflow runs' tracking.TRIAL_TAG; a bundle member's
# run has `<id>-m`), by TRIAL_INDEX
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


def open_study(spec: StudySpec, url: str) -> tuple[optuna.Study, set[tuple[int, str]]]:
    """The study's Optuna history in the store at `url`, created if new, and the (configuration number, sampled
    values) of the configurations it holds."""
    with layout.store_lock(url):  # two drivers creating one sqlite store's tables at once: one fails
        study = optuna.create_study(storage=url, study_name=spec.name, load_if_exists=True,
                                    direction="maximize" if spec.search.mode == "max" else "minimize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names([spec.search.metric])  # the dashboard's and the views' axis label
    held = {(t.user_attrs[CONFIGURATION], values_key(t.params)) for t in study.get_trials(deepcopy=False)
            if CONFIGURATION in t.user_attrs}
    return study, held


def values_key(params: dict) -> str:
    """A configuration's values as text (sorted JSON), to compare configurations: those of one number here, a
    lost trial's and a new one's in study.ContinueTrials."""
    return json.dumps(params, sort_keys=True, default=str)


def draw(study: optuna.Study, folder: Path) -> dict[str, Path | str]:
    """Optuna's matplotlib views of the study, each as folder/optuna-<view>.png or the reason it is not drawn."""
    _import_importance_without_forests()
    reasons = _undrawable(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    target = (study.metric_names or ["value"])[0]
    return {name: reasons.get(name) or _save(plot, study, target, folder / f"optuna-{name}.png")
            for name, plot in VIEWS.items()}


def _import_importance_without_forests() -> None:
    """Import Optuna's importance package without scikit-learn's random forests. The package imports them as it
    loads, for its fANOVA evaluator (1.2 s, a third of the report's Optuna side at 1,000 trials); the importance
    view ranks with PED-ANOVA, Optuna's default, which needs none of it. None in sys.modules makes that one
    import fail, which Optuna's own try_import expects; a process that has imported either keeps them."""
    if "optuna.importance" in sys.modules or "sklearn.ensemble" in sys.modules:
        return
    sys.modules["sklearn.ensemble"] = None
    try:
        importlib.import_module("optuna.importance")
    finally:
        del sys.modules["sklearn.ensemble"]


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
