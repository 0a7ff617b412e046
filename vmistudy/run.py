"""Run a study on Ray Tune.

    python -m vmistudy.run STUDY.yaml [--resume] [--set key=value ...] [--address ADDRESS]

Without --address (and without $RAY_ADDRESS, which `ray job submit` sets) it starts a local Ray sized to
this machine on 127.0.0.1. A study lives in <search.storage>/<name>; running a study whose folder already
holds one is refused unless --resume is given, which continues it where it stopped: the searcher's
state, the trial count, and unfinished or errored trials from their last checkpoints.
Exit status: 0 when every trial ended well, 1 when some trial errored (listed), 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from ray import tune

from . import config, layout, replay, study, tracking
from .cli import command, load_study
from .errors import InputError

MAY_CHANGE_ON_RESUME = {"resources.cpu", "resources.gpu", "train.threads", "train.device", "search.max_failures"}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vmistudy.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study file (YAML) with a search section")
    parser.add_argument("--resume", action="store_true", help="continue the study where it stopped")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set search.num_samples=8 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    spec = load_study(args.study, args.set, service=True)
    if spec.replay.table:
        replay.read(spec.replay.table).check(spec)
    check_start(spec, args.resume)
    tracker = tracking.start_study(spec, Path(args.study), layout.storage_path(spec))
    study.connect(args.address)
    if args.resume:
        tuner = study.restore(spec, tracker)
    else:
        layout.write_spec(spec)
        tuner = study.tuner(spec, tracker)
    results = tuner.fit()
    status = _summarize(results, spec, " ".join([args.study, *(f"--set {item}" for item in args.set)]))
    tracker.finish(_summary_metrics(results, spec), failed=status != 0)
    print(tracker.describe(spec))
    sys.exit(status)


def check_start(spec: config.StudySpec, resume: bool) -> None:
    """A new study must not exist yet; a resumed one must exist and be the study that was started."""
    path = layout.experiment_path(spec)
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise InputError(f"--resume: no study named {spec.name} in {layout.storage_path(spec)}")
    if exists and not resume:
        raise InputError(f"name: a study named {spec.name} already exists in {path}; continue it with --resume, "
                         f"or start another with --set name=NEW")
    saved = layout.saved_spec(spec) if resume else None  # None too for a study that predates the saved spec
    change = config.first_change(saved, spec, MAY_CHANGE_ON_RESUME) if saved else None
    if change:
        raise InputError(f"--resume: {change} of {spec.name}")


def _summarize(results: tune.ResultGrid, spec: config.StudySpec, invocation: str) -> int:
    """Print the best trials and the errored ones; return the exit status."""
    search = spec.search
    rows = []
    for result in results:
        metrics = result.metrics or {}
        rows.append({"trial": metrics.get("trial_id", result.path.rsplit("_", 1)[-1]),
                     "status": "ERROR" if result.error else "ok",
                     "epoch": metrics.get("epoch"), "seed": metrics.get("seed"),
                     "lambda_mi": metrics.get("lambda_mi"),
                     **{k: v for k, v in (result.config or {}).items() if k in search.space},
                     search.metric: metrics.get(search.metric)})
    table = pd.DataFrame(rows).sort_values(search.metric, ascending=search.mode == "min", na_position="last")
    print(f"\n{len(table)} trials of study {spec.name} ({search.metric}, {search.mode}; test split):")
    print(table.head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for result in results:
        if result.error:
            reason = str(result.error).strip().splitlines()[-1]
            print(f"errored: {result.path}: {reason}")
    print(f"\nresults: {layout.experiment_path(spec)}\nresume:  python -m vmistudy.run {invocation} --resume")
    return 1 if results.errors else 0


def _summary_metrics(results: tune.ResultGrid, spec: config.StudySpec) -> dict[str, float]:
    search = spec.search
    values = [r.metrics[search.metric] for r in results if r.metrics and search.metric in r.metrics]
    summary = {"trials": len(results), "errored_trials": len(results.errors)}
    if values:
        summary[f"best_{search.metric}"] = (max if search.mode == "max" else min)(values)
    return summary


if __name__ == "__main__":
    main()
