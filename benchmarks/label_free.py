"""Choosing without labels, measured on a learning-curve table: restarts and configurations.

    python -m benchmarks.label_free [--table benchmarks/curves/curves.csv.gz | --study STUDY.yaml] [--metric M]

Two questions of Results II, answered from every configuration's final epoch at each of the table's seeds:

  restarts        Train a configuration at every seed and keep the run a label-free score prefers (the
                  categorical MI bound; the ELBO; the code's invariance, where the table has it). Against the
                  mean seed, what does it gain, and how much of the seed lottery (the best seed, chosen with
                  labels) does it recover? Paired per configuration: mean difference +- 95% t interval,
                  lambda_mi > 0 and = 0 apart.
  early restarts  Train every seed only to epoch k, keep the one the categorical MI bound prefers there, train
                  it on: its final metric against the mean seed's, for each k, beside what it costs in
                  trial-epochs (seeds x k + the rest of one run) against restarts trained to the end.
  configurations  The configuration a label-free score picks (its mean over seeds, among lambda_mi > 0)
                  against the one the labels pick: the gap in the metric. Goal: within 2 points. Then the
                  same among the configurations of each lambda_mi: the MI bound grows with lambda_mi, so a
                  label-free study might fix lambda_mi and let the bound choose the rest.

The table's runs are short (benchmarks.curves: MNIST subset, 15 epochs, mlp), so this measures the rule on
that regime; it costs seconds and trains nothing. `--study` asks the same of a study that has run, its trials
read back from MLflow as a table (their per-epoch histories): real runs of any length, as few as it has.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vmistudy import replay, report
from vmistudy.cli import ArgumentParser, command, load_study
from vmistudy.errors import InputError
from vmistudy.report import t_half_width

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "curves" / "curves.csv.gz"
SCORES = {"mi_lower_bound_categorical": "the categorical MI bound", "elbo": "the ELBO",  # higher is better
          "invariance_mi": "the code's invariance I(c; c')"}  # tables made before it was a metric lack it
GOAL = 0.02  # the label-free pick within 2 points of the labelled one


def study_table(study: str, metric: str) -> replay.CurveTable:
    """A study's trials as a learning-curve table: the fields its configurations vary, lambda_mi, seed, epoch, and
    per epoch the metric and the label-free scores, from each trial's MLflow history."""
    spec = load_study(study, [], service=True)
    tracker = report.open_study(spec, study)
    runs = report.trial_runs(tracker, spec.search.trial_fields())
    fields = [*report.configuration_columns(runs), "params.mi.lambda_mi"]
    names = [m for m in (metric, *SCORES) if f"metrics.{m}" in runs]
    histories = report.fetched(tracker.client.get_metric_history, [(r, m) for r in runs.run_id for m in names])
    records = []
    for _, run in runs.iterrows():
        history = {m: {p.step: p.value for p in histories[run.run_id, m]} for m in names}
        records += [{**{f.removeprefix("params."): run[f] for f in fields}, "seed": run.seed, "epoch": epoch,
                     **{m: history[m].get(epoch, np.nan) for m in names}} for epoch in sorted(history[names[0]])]
    return replay.CurveTable(pd.DataFrame.from_records(records), source=study)


def check_whole_runs(table: replay.CurveTable, source: str) -> None:
    """InputError unless every run has the same number of epochs: restarts compare whole runs, and a trial that a
    scheduler stopped early has no final epoch to compare."""
    lengths = {(point, seed): len(curve) for point, by_seed in table.curves.items() for seed, curve in by_seed.items()}
    longest = max(lengths.values())
    (point, seed), epochs = min(lengths.items(), key=lambda item: item[1])
    if epochs < longest:
        raise InputError(f"{source}: the run of {describe(table, point)} at seed {seed} has {epochs} epochs, others "
                         f"{longest} (stopped early?); the restart questions compare whole runs")


def scores(table: replay.CurveTable) -> dict[str, str]:
    """The label-free scores the table holds."""
    return {name: said for name, said in SCORES.items() if name in table.metrics}


def finals(table: replay.CurveTable, metric: str) -> dict[tuple, dict[str, np.ndarray]]:
    """Per configuration point: the metric and each label-free score at the last epoch, one entry per seed."""
    names = [metric, *scores(table)]
    return {point: {n: np.array([table.curves[point][s][-1][n] for s in table.seeds]) for n in names}
            for point in table.points}


def restarts(runs: dict[tuple, dict[str, np.ndarray]], metric: str) -> dict[str, np.ndarray]:
    """Per configuration, the metric of the seed each score keeps, and of the best seed, minus the mean seed's."""
    held = [score for score in SCORES if score in next(iter(runs.values()))]  # those finals() found in the table
    gains = {score: [] for score in [*held, "best seed (labels)"]}
    for values in runs.values():
        mean = values[metric].mean()
        for score in held:
            gains[score].append(values[metric][values[score].argmax()] - mean)
        gains["best seed (labels)"].append(values[metric].max() - mean)
    return {k: np.array(v) for k, v in gains.items()}


def interval(values: np.ndarray) -> str:
    """The mean over configurations +- its 95% t half-width, in points; one configuration's value as it is."""
    if len(values) < 2:
        return f"{100 * values.mean():+.2f} points (one configuration: no interval)"
    return f"{100 * values.mean():+.2f} +- {100 * t_half_width(values.tolist()):.2f} points"


def counted(configurations: dict) -> str:
    return f"{len(configurations)} configuration{'' if len(configurations) == 1 else 's'}"


def groups(table: replay.CurveTable, runs: dict) -> dict[str, dict]:
    """The configurations with lambda_mi > 0 and the lambda_mi = 0 twins apart (all as one without the field)."""
    if "mi.lambda_mi" not in table.fields:
        return {"all configurations": runs}
    lam = table.fields.index("mi.lambda_mi")
    return {"lambda_mi > 0": {p: v for p, v in runs.items() if p[lam] > 0},
            "lambda_mi = 0": {p: v for p, v in runs.items() if p[lam] == 0}}


def print_restarts(table: replay.CurveTable, runs: dict, metric: str) -> None:
    print(f"restarts: keep 1 of {len(table.seeds)} seeds by a label-free score; {metric} against the mean seed")
    for name, chosen in groups(table, runs).items():
        if not chosen:
            continue
        gains = restarts(chosen, metric)
        print(f"  {name} ({counted(chosen)}):")
        for score, gain in gains.items():
            print(f"    {SCORES.get(score, score):<33s}{interval(gain)}; better than the mean seed in "
                  f"{(gain > 0).mean():.0%}")


def early_restarts(table: replay.CurveTable, metric: str) -> dict[tuple, np.ndarray]:
    """Per configuration point, for each epoch k: the final metric of the seed the categorical MI bound prefers
    at epoch k, minus the mean seed's."""
    gains = {}
    for point, by_seed in table.curves.items():
        curves = [by_seed[seed] for seed in table.seeds]
        final = np.array([curve[-1][metric] for curve in curves])
        bound = np.array([[row["mi_lower_bound_categorical"] for row in curve] for curve in curves])  # seeds x epochs
        gains[point] = final[bound.argmax(0)] - final.mean()
    return gains


def print_early_restarts(table: replay.CurveTable, metric: str) -> None:
    seeds, epochs = len(table.seeds), len(table.curves[table.points[0]][table.seeds[0]])  # all alike (main)
    print(f"early restarts: {seeds} seeds to epoch k, the one the categorical MI bound prefers then trained to epoch "
          f"{epochs}; its final {metric} against the mean seed")
    for name, chosen in groups(table, early_restarts(table, metric)).items():
        if not chosen:
            continue
        gains = np.array(list(chosen.values()))  # configurations x epochs
        final = gains[:, -1]
        print(f"  {name} ({counted(chosen)}):")
        for k in range(1, epochs + 1):
            same = (gains[:, k - 1] == final).mean()
            print(f"    epoch {k:2d}: {interval(gains[:, k - 1])}; {seeds * k + epochs - k} trial-epochs of "
                  f"{seeds * epochs}; the same final metric as the last epoch's pick in {same:.0%}")


def print_picks(table: replay.CurveTable, runs: dict, metric: str) -> None:
    candidates = groups(table, runs).get("lambda_mi > 0") or runs  # the twins are the comparison, not candidates
    print_pick(table, candidates, metric, "configurations")
    if "mi.lambda_mi" not in table.fields:
        return
    lam = table.fields.index("mi.lambda_mi")  # the bound grows with lambda_mi: does it pick the rest at a fixed one?
    for value in sorted({p[lam] for p in candidates}):
        at = {p: v for p, v in candidates.items() if p[lam] == value}
        if len(at) > 1:
            print_pick(table, at, metric, f"configurations at lambda_mi={value:g} ({len(at)})")


def print_pick(table: replay.CurveTable, candidates: dict, metric: str, title: str) -> None:
    """The configuration each label-free score picks among `candidates` (mean over seeds) against the labels'."""
    means = {p: {k: v.mean() for k, v in values.items()} for p, values in candidates.items()}
    labelled = max(means, key=lambda p: means[p][metric])
    print(f"{title}: the labels pick {describe(table, labelled)}: {metric} {means[labelled][metric]:.4f}")
    for score, name in scores(table).items():
        pick = max(means, key=lambda p: means[p][score])
        gap = means[labelled][metric] - means[pick][metric]
        print(f"  {name} picks {describe(table, pick)}: {metric} {means[pick][metric]:.4f}, "
              f"{100 * gap:.1f} points below (goal {100 * GOAL:.0f}: {'met' if gap <= GOAL else 'not met'})")


def describe(table: replay.CurveTable, point: tuple) -> str:
    return " ".join(f"{f.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{f.split('.')[-1]}={v}"
                    for f, v in zip(table.fields, point))


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.label_free", description=__doc__.split("\n\n")[0],
                            examples=["python -m benchmarks.label_free",
                                      "python -m benchmarks.label_free --study studies/invariance_mnist.yaml",
                                      "python -m benchmarks.label_free --metric nmi"])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--table", type=Path, default=TABLE)
    source.add_argument("--study", help="a study file whose study has run: its MLflow runs instead of a table")
    parser.add_argument("--metric", default="accuracy_hungarian", help="what the labels score (default %(default)s)")
    args = parser.parse_args(argv)
    if args.study:
        table = study_table(args.study, args.metric)
    elif not args.table.is_file():
        raise InputError(f"--table {args.table}: no such file; write it with python -m benchmarks.curves")
    else:
        table = replay.read(str(args.table.resolve()))
    missing = [m for m in (args.metric, "mi_lower_bound_categorical", "elbo") if m not in table.metrics]
    if missing:
        raise InputError(f"--metric: the table has no {missing[0]} column (it has {', '.join(table.metrics)})")
    source = f"--study {args.study}" if args.study else f"--table {args.table}"
    if len(table.seeds) < 2:
        raise InputError(f"{source}: one seed per configuration; restarts need two or more")
    check_whole_runs(table, source)
    runs = finals(table, args.metric)
    print_restarts(table, runs, args.metric)
    print_early_restarts(table, args.metric)
    print_picks(table, runs, args.metric)


if __name__ == "__main__":
    main()
