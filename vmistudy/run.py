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
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow.fs
from ray import tune

from . import config, study, tracking
from .cli import fail

SPEC_FILE = "vmistudy-spec.json"
MAY_CHANGE_ON_RESUME = {"resources.cpu", "resources.gpu", "train.threads", "train.device", "search.max_failures"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vmistudy.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study file (YAML) with a search section")
    parser.add_argument("--resume", action="store_true", help="continue the study where it stopped")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set search.num_samples=8 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = checked_study(args)
    storage = study.storage_path(spec)
    tracked = tracking.start_study(spec, Path(args.study), storage) if spec.tracking.enabled else None
    study.connect(args.address)
    if args.resume:
        tuner = study.restore(spec, tracked)
    else:
        write_spec(spec, study.experiment_path(spec))
        tuner = study.tuner(spec, tracked)
    results = tuner.fit()
    status = summarize(results, spec, " ".join([args.study, *(f"--set {item}" for item in args.set)]))
    if tracked:
        tracking.finish_study(tracked, summary_metrics(results, spec), failed=status != 0)
        print(f"mlflow:  mlflow ui --backend-store-uri {tracked.uri} --host 127.0.0.1 --port 5000"
              f"  (experiment {tracking.experiment_name(spec)})")
    sys.exit(status)


def checked_study(args: argparse.Namespace) -> config.StudySpec:
    """The validated study; bad input, a missing study to resume or one that would be started over exit 2."""
    try:
        spec = config.load(args.study, args.set)
    except config.ConfigError as e:
        fail(str(e))
    if spec.search is None:
        fail(f"{args.study}: search: required for a study (to train one model: python -m vmistudy.train)")
    path = study.experiment_path(spec)
    exists = tune.Tuner.can_restore(path)
    if args.resume and not exists:
        fail(f"--resume: no study named {spec.name} in {study.storage_path(spec)}")
    if exists and not args.resume:
        fail(f"name: a study named {spec.name} already exists in {path}; continue it with --resume, "
             f"or start another with --set name=NEW")
    if args.resume:
        check_unchanged(spec, path)
    return spec


def write_spec(spec: config.StudySpec, path: str) -> None:
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{SPEC_FILE}") as f:
        f.write(spec.model_dump_json(indent=2).encode())


def check_unchanged(spec: config.StudySpec, path: str) -> None:
    """A resumed study must be the study that was started: refuse a changed study file, naming the field."""
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    try:
        with fs.open_input_stream(f"{root}/{SPEC_FILE}") as f:
            saved = config.validate(json.loads(f.read()), source=f"{path}/{SPEC_FILE}")
    except FileNotFoundError:
        return
    change = config.first_change(saved, spec, MAY_CHANGE_ON_RESUME)
    if change:
        fail(f"--resume: {change} of {spec.name}")


def summarize(results: tune.ResultGrid, spec: config.StudySpec, command: str) -> int:
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
    print(f"\nresults: {study.experiment_path(spec)}\nresume:  python -m vmistudy.run {command} --resume")
    return 1 if results.errors else 0


def summary_metrics(results: tune.ResultGrid, spec: config.StudySpec) -> dict[str, float]:
    search = spec.search
    values = [r.metrics[search.metric] for r in results if r.metrics and search.metric in r.metrics]
    summary = {"trials": len(results), "errored_trials": len(results.errors)}
    if values:
        summary[f"best_{search.metric}"] = (max if search.mode == "max" else min)(values)
    return summary


if __name__ == "__main__":
    main()
