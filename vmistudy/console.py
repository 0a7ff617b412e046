"""What a study prints while it runs and when it ends: a line per finished trial, a status line with the study's
progress and time left, and a plain comparison of each configuration with its lambda_mi = 0 twins.

Tune's own output (a table after every result, its warnings) is for `--verbose`; this is the view that fits a
terminal. A Tune callback on the driver; the trials print nothing.
"""
from __future__ import annotations

import logging
import math
import os
import statistics
import time

from ray import tune

from .config import StudySpec
from .report import t_half_width
from .study import MEMBERS, is_twin

STATUS_EVERY = 30.0  # s between status lines while no trial ends
SHOWN = ("mi_lower_bound", "accuracy_hungarian")  # beside the study's metric, in the comparison


def quiet_tune() -> None:
    """Tune's output off: its new output engine prints a configuration box and a TensorBoard hint even when
    silent (its older one, silent, prints nothing), and its warnings about snapshotting its state often are
    about a thousand-trial study's cost, which this study layer measures itself (benchmarks.overhead)."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # read by Tune as the study starts
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)


def configuration(config: dict, spec: StudySpec) -> str:
    """The sampled values of a trial, its seed and twin left out: `lambda_mi=3.1 temperature.rate=0.001`."""
    values = [f"{path.split('.', 1)[-1]}={_number(config[path])}" for path in spec.search.space if path in config]
    return " ".join(values) or "(the study's configuration)"


class Progress(tune.Callback):
    """Driver side: one line per trial that ends, a status line at most every STATUS_EVERY s (and at each end)
    with the trials and epochs done, the best value so far and the time left at this life's pace.

    Read from Tune's trials at each call, so that a resumed study (this callback is restored with it) counts
    what its earlier lives did."""

    def __init__(self, spec: StudySpec):
        self.spec = spec

    def setup(self, total_num_samples: int = 0, **info):
        self.total, self.began, self.last_status, self.first_done = total_num_samples, time.monotonic(), 0.0, None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.monotonic() - self.last_status >= STATUS_EVERY:
            self._status(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, trials, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, trials, "errored")

    def _ended(self, trial, trials, how: str) -> None:
        result, epochs = trial.last_result or {}, self.spec.train.epochs
        epoch = result.get("epoch", 0)
        stopped = " (stopped by ASHA)" if how == "done" and epoch < epochs else ""
        twin = "lambda_mi = 0 twin of " if is_twin(trial.config, self.spec.search) else ""
        metrics = "  ".join(f"{key} {_number(result[key])}" for key in self._shown() if key in result)
        seeds = sorted({member["seed"] for member in result.get(MEMBERS, [])}) or [result.get("seed", "?")]
        bundle = f" (a bundle of {len(result[MEMBERS])}: its mean)" if MEMBERS in result else ""
        _print(f"trial {trial.trial_id} {how}{stopped}: {twin}{configuration(trial.config, self.spec)}, "
               f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, epoch {epoch}/{epochs}{bundle}"
               f"  {metrics}")
        self._status(trials, trial)

    def _status(self, trials, ending=None) -> None:
        """`ending`: a trial Tune is ending (its status is set after the callbacks)."""
        self.last_status = now = time.monotonic()
        epochs = self.spec.train.epochs
        done = sum((t.last_result or {}).get("epoch", 0) for t in trials)
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is ending]
        # what is left if no trial is stopped early: an upper bound under ASHA
        left = sum(epochs - (t.last_result or {}).get("epoch", 0) for t in trials if t not in ended)
        left += (self.total - len(trials)) * epochs
        self.first_done = done if self.first_done is None else self.first_done
        pace = (done - self.first_done) / (now - self.began)  # epochs a second in this life
        eta = f", at most {_duration(left / pace)} left" if pace > 0 and left > 0 else ""
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        _print(f"[{_duration(now - self.began)}] {len(ended)}/{self.total} trials ended, {running} running, "
               f"{done} epochs done{eta}{self._best(ended)}")

    def _best(self, ended) -> str:
        search = self.spec.search
        scored = [(t.last_result[search.metric], t) for t in ended
                  if search.metric in (t.last_result or {}) and not is_twin(t.config, search)]
        if not scored:
            return ""
        value, trial = (max if search.mode == "max" else min)(scored, key=lambda pair: pair[0])
        return f" | best {search.metric} {_number(value)}: {configuration(trial.config, self.spec)}"

    def _shown(self) -> list[str]:
        return list(dict.fromkeys([self.spec.search.metric, *SHOWN]))


def comparison(rows: list[dict], spec: StudySpec) -> list[str]:
    """Each configuration's MI trials beside its lambda_mi = 0 twins (same seeds, same initial weights): mean
    +- 95% interval over the replicates of the study's metric and SHOWN, and the mean paired difference.

    `rows`: one per trial, {"config": ..., "metrics": last result}. Without twins: each configuration's mean."""
    search = spec.search
    keys = list(dict.fromkeys([search.metric, *SHOWN]))
    groups: dict[str, dict[str, dict[int, dict]]] = {}
    for row in rows:
        side = "twin" if is_twin(row["config"], search) else "mi"
        seed = row["metrics"].get("seed")
        groups.setdefault(configuration(row["config"], spec), {"mi": {}, "twin": {}})[side][seed] = row["metrics"]
    ranked = sorted(groups.items(), key=lambda kv: _mean([m.get(search.metric) for m in kv[1]["mi"].values()]),
                    reverse=search.mode == "max")
    lines = []
    for name, sides in ranked:
        seeds = len(sides["mi"])
        lines.append(f"{name}  ({seeds} seed{'s' if seeds > 1 else ''})")
        for key in keys:
            mi = [m.get(key) for m in sides["mi"].values()]
            line = f"  {key:<20} {_interval(mi)}"
            if sides["twin"]:
                twin = [m.get(key) for m in sides["twin"].values()]
                pairs = [sides["mi"][s].get(key) - sides["twin"][s].get(key) for s in sides["mi"]
                         if s in sides["twin"] and None not in (sides["mi"][s].get(key), sides["twin"][s].get(key))]
                line += f"   twin {_interval(twin)}   difference {_interval(pairs, signed=True)}"
            lines.append(line)
    return lines


def _mean(values: list) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else -math.inf


def _interval(values: list, signed: bool = False) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    text = f"{mean:+.3g}" if signed else f"{mean:.3g}"
    if len(values) > 1:
        text += f" +- {t_half_width(values):.2g}"
    return text


def _print(line: str) -> None:
    print(line, flush=True)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
