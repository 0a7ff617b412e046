"""Start a study on Ray Tune once `vmistudy.run` has checked its input, and sum it up when it ends.

Apart from run.py because of what it imports (torch, Ray, MLflow: seconds), so that bad input is refused at once.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import tune

from . import config, console, history, layout, study, tracking
from .cli import EXIT_INTERRUPTED

CONFIGURATIONS_SHOWN = 5  # in the summary: the best, each beside its twins
# the study's end, as the MLflow status of its parent run and the command's exit status (Ctrl-C, which Tune
# catches to save the study's state and return, exits as any command ended by Ctrl-C does)
EXIT_STATUS = {"FINISHED": 0, "FAILED": 1, "KILLED": EXIT_INTERRUPTED}


def run(spec: config.StudySpec, args: argparse.Namespace) -> None:
    """Start (or resume) the study, print its summary and what to do next; exit with its status."""
    tracker = _start(spec, Path(args.study), args)
    if not args.verbose:
        console.quiet_tune()
    if args.resume:
        tuner = study.restore(spec, tracker)
    else:
        layout.write_spec(spec)
        callbacks = (console.Progress(spec), study.OptunaHistory(spec))
        tuner = study.tuner(spec, tracker, callbacks=callbacks, verbose=1 if args.verbose else 0)
    results = tuner.fit()
    status = _summarize(results, spec)
    tracker.finish(_summary_metrics(results, spec), status)
    print(f"\nnext:\n  report:  {command_line('vmistudy.report', args)}  (pairs, curves, figures)\n"
          f"  {tracker.describe(spec)}\n{_optuna_line(spec)}  results: {layout.experiment_path(spec)}\n"
          f"  resume:  {command_line('vmistudy.run', args, '--resume')}  (after a crash or Ctrl-C)")
    sys.exit(EXIT_STATUS[status])


def command_line(module: str, args: argparse.Namespace, *extra: str) -> str:
    """The command that runs `module` on this study, its --set overrides and `extra`, quoted for a POSIX shell:
    an override such as search.space={...} holds spaces and braces, and the line is meant to be pasted."""
    return shlex.join(["python", "-m", module, args.study, *(w for item in args.set for w in ("--set", item)), *extra])


def _start(spec: config.StudySpec, study_file: Path,
           args: argparse.Namespace) -> tracking.StudyTracker | tracking.NullStudyTracker:
    """Start Ray and the study's MLflow runs at once: a new sqlite store's migrations take seconds, as does
    Ray's start. A tracking server that does not answer is refused first, before Ray starts."""
    storage = layout.storage_path(spec)
    tracking.check_answers(spec, storage)
    with ThreadPoolExecutor(1) as other:
        started = other.submit(tracking.start_study, spec, study_file, storage)
        study.connect(args.address, args.verbose)
        return started.result()


def _summarize(results: tune.ResultGrid, spec: config.StudySpec) -> str:
    """Print each configuration beside its lambda_mi = 0 twins (the best CONFIGURATIONS_SHOWN), the errored
    trials and the unfinished ones; return how the study ended (a key of EXIT_STATUS)."""
    search = spec.search
    rows = [row for result in results for row in study.member_rows(result.config or {}, result.metrics or {}, search)]
    lines = console.comparison(rows, spec)
    shown = [i for i, line in enumerate(lines) if not line.startswith(" ")][CONFIGURATIONS_SHOWN:]
    twins = " beside its lambda_mi = 0 twins (same seeds and initial weights)" if search.paired_baseline else ""
    bundles = f" (in {len(results)} bundles)" if search.bundle else ""
    print(f"\n{len(rows)} trials{bundles} of study {spec.name}: each configuration{twins}, mean +- 95% interval over "
          f"seeds, test split; best {search.metric} ({search.mode}) first")
    print("\n".join(lines[:shown[0]] if shown else lines))
    if shown:
        print(f"... and {len(shown)} more configurations (python -m vmistudy.report lists them all)")
    for result in results:
        if result.error:
            reason = str(result.error).strip().splitlines()[-1]
            print(f"errored: {result.path}: {reason}")
    unfinished = layout.unended_trials(spec)  # on Ctrl-C (or SIGUSR1) Tune saves the study and returns
    if unfinished:
        planned = study.configurations(search) * study.trials_per_configuration(search)
        print(f"interrupted: {len(unfinished)} of the {len(results)} trials started are unfinished ({planned} "
              "planned); --resume continues the study where it stopped")
        return "KILLED"
    return "FAILED" if results.errors else "FINISHED"


def _optuna_line(spec: config.StudySpec) -> str:
    if history.storage_url(spec) is None:
        return ""
    return f"  optuna:  {history.dashboard_command(spec)}  (the search's history)\n"


def _summary_metrics(results: tune.ResultGrid, spec: config.StudySpec) -> dict[str, float]:
    search = spec.search
    values = [r.metrics[search.metric] for r in results if r.metrics and search.metric in r.metrics]
    summary = {"trials": len(results), "errored_trials": len(results.errors)}
    if values:
        summary[f"best_{search.metric}"] = (max if search.mode == "max" else min)(values)
    return summary
