"""Learning-curve tables, for trials that replay recorded curves instead of training.

A table (written by `python -m benchmarks.curves`) has one row per configuration, seed and epoch: the
configuration's fields (dotted spec paths such as `mi.lambda_mi`) are the columns before `seed`, then
`epoch`, every per-epoch metric and the epoch's wall `seconds`. With `replay.table` set, a study's trials
look up their configuration at the table's nearest point and report its curve epoch by epoch (study.py),
through the same Tuner, searchers, ASHA, checkpoints, resume and MLflow logging as a study that trains.
That makes the study layer measurable in seconds. The core never learns that a curve can be replayed.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import pandas as pd

from .config import StudySpec, flatten, rung_ranking
from .errors import InputError

Curve = list[dict[str, float]]


class CurveTable:
    """The curves of a table, by configuration point and seed."""

    def __init__(self, frame: pd.DataFrame, source: str = "table"):
        if "seed" not in frame or "epoch" not in frame or frame.columns.get_loc("seed") == 0:
            raise InputError(f"{source}: not a learning-curve table (needs configuration columns, seed, epoch)")
        self.fields = list(frame.columns[:frame.columns.get_loc("seed")])
        self.metrics = [c for c in frame.columns[frame.columns.get_loc("epoch"):] if c != "seconds"]
        self.curves: dict[tuple, dict[int, Curve]] = {}
        self.seconds: dict[tuple, dict[int, list[float]]] = {}
        seconds = frame["seconds"] if "seconds" in frame else pd.Series(0.0, index=frame.index)
        points = [tuple(_key(v) for v in row) for row in frame[self.fields].itertuples(index=False)]
        for (point, seed), rows in frame.assign(_point=points).groupby(["_point", "seed"], sort=False):
            rows = rows.sort_values("epoch")
            self.curves.setdefault(point, {})[int(seed)] = rows[self.metrics].to_dict("records")
            self.seconds.setdefault(point, {})[int(seed)] = seconds[rows.index].tolist()
        self.points = list(self.curves)
        self.seeds = sorted(set.intersection(*(set(c) for c in self.curves.values())))  # every point has these
        self._scales = [_Scale([p[i] for p in self.points]) for i in range(len(self.fields))]

    def nearest(self, values: dict[str, Any]) -> tuple:
        """The table point closest to `values` (each field scaled to its range, log where it spans decades)."""
        wanted = [_key(values[f]) for f in self.fields]
        return min(self.points, key=lambda p: sum(s.distance(a, b) for s, a, b in zip(self._scales, wanted, p)))

    def curve(self, spec: StudySpec) -> tuple[Curve, list[float]]:
        """The metrics and wall seconds, epoch by epoch, of the spec's nearest point at its seed."""
        point = self.nearest(flatten(spec))
        seed = spec.train.seed
        return self.curves[point][seed], self.seconds[point][seed]

    def check(self, spec: StudySpec) -> None:
        """InputError unless every trial of the study finds its curve: fields, seeds and epochs in the table."""
        search = spec.search
        unknown = [p for p in search.space if p not in self.fields]
        if unknown:
            raise InputError(f"search.space.{unknown[0]}: the replayed table has no such field "
                             f"(it varies {', '.join(self.fields)})")
        wanted = set(range(spec.train.seed, spec.train.seed + search.replicates))
        if not wanted <= set(self.seeds):
            raise InputError(f"train.seed: the replayed table has seeds {self.seeds}; this study needs "
                             f"{sorted(wanted)} (train.seed + replicates)")
        ranked_on = {"search.metric": search.metric}
        if search.scheduler.name == "asha":
            ranked_on["search.scheduler.metric"] = rung_ranking(spec)[0]
        for field, metric in ranked_on.items():
            if metric not in self.metrics:
                raise InputError(f"{field}: the replayed table has no {metric} column (it has "
                                 f"{', '.join(m for m in self.metrics if m != 'epoch')})")
        epochs = min(len(c) for curves in self.curves.values() for c in curves.values())
        if spec.train.epochs > epochs:
            raise InputError(f"train.epochs: the replayed table has {epochs} epochs per run, got {spec.train.epochs}")


@functools.cache
def read(path: str) -> CurveTable:
    """The table at `path` (a CSV, gzipped or not), read once per process."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"replay.table: cannot read {path} as a learning-curve table ({e})") from None
    return CurveTable(frame, source=f"replay.table: {path}")


def _key(value: Any) -> Any:
    """A hashable, comparable form of a field's value; None and NaN (a null such as 'no cap') are one value."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class _Scale:
    """Distance along one field: 0 to 1 across the table's range (in logs where positive values span decades);
    a categorical or null value ("no cap") is 0 away when equal and 2, farther than any number in range, when not."""

    def __init__(self, values: list):
        numbers = sorted({v for v in values if isinstance(v, float)})
        self.log = bool(numbers) and numbers[0] > 0 and numbers[-1] / numbers[0] >= 10
        ends = [self._t(numbers[0]), self._t(numbers[-1])] if numbers else [0.0, 1.0]
        self.span = (ends[1] - ends[0]) or max(abs(ends[0]), 1.0)

    def _t(self, v: float) -> float:
        return math.log(max(v, 1e-300)) if self.log else v

    def distance(self, a: Any, b: Any) -> float:
        if isinstance(a, float) and isinstance(b, float):
            return abs(self._t(a) - self._t(b)) / self.span
        return 0.0 if a == b else 2.0
