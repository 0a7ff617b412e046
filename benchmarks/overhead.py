"""The part of a real study's wall time that is not training, and where it goes.

    python -m benchmarks.overhead [STUDY ...] [--set key=value ...]      (default: studies/quick.yaml)

Runs each study as a user does, `python -m vmistudy.run STUDY` in a process of its own (a fresh name and
storage under a temporary folder), and times the command. Training is what the trainer itself measures per
epoch (`epoch_seconds`: the training pass and the test-split evaluation). With C trials at a time (the
study's max_concurrent, or the cores over resources.cpu), the overhead is 1 - sum(epoch_seconds) / (C * wall).
Printed beside it, in wall seconds (trial-seconds / C): the work done inside trials between epochs (MLflow
logging, figures, the model, saving the resume state: Tune's time_this_iter_s minus epoch_seconds), and
everything outside trials (Ray and MLflow start-up, starting workers, idle slots, the summary).
Goal: at most 5%.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmistudy import config
from vmistudy.cli import ArgumentParser, command, load_study

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.05


def run_study(study: Path, overrides: list[str], name: str) -> tuple[float, list[dict]]:
    """`python -m vmistudy.run STUDY` with a fresh name and storage under a temporary folder: its wall seconds
    and every Tune result it left (each trial's result.json lines)."""
    with tempfile.TemporaryDirectory() as storage:
        sets = [*overrides, f"search.storage={storage}", f"name={name}-{int(time.time())}"]
        args = [sys.executable, "-m", "vmistudy.run", str(study), *(a for s in sets for a in ("--set", s))]
        start = time.perf_counter()
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"error: {study}: the study failed ({done.returncode}):\n{done.stdout[-3000:]}")
        return wall, [json.loads(line) for path in Path(storage).glob("*/*/result.json")
                      for line in path.read_text().splitlines()]


def measure(study: Path, overrides: list[str], spec: config.StudySpec) -> dict:
    cores = os.cpu_count()
    concurrent = min(spec.search.max_concurrent or cores, int(cores / spec.resources.cpu))
    wall, rows = run_study(study, overrides, "overhead")
    training = sum(r["epoch_seconds"] for r in rows)
    in_trials = sum(r["time_this_iter_s"] for r in rows)
    return {"study": study.name, "trials": len({r["trial_id"] for r in rows}), "epochs": len(rows),
            "concurrent": concurrent, "wall_s": wall, "training_s": training / concurrent,
            "between_epochs_s": (in_trials - training) / concurrent,
            "outside_trials_s": wall - in_trials / concurrent, "overhead": 1 - training / (concurrent * wall)}


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0], examples=[
        "python -m benchmarks.overhead                              # studies/quick.yaml",
        "python -m benchmarks.overhead studies/quick.yaml --set data.subset=null --set data.test_subset=null"])
    parser.add_argument("studies", nargs="*", type=Path, default=[REPO / "studies" / "quick.yaml"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every study")
    args = parser.parse_args(argv)
    specs = [load_study(study, args.set, service=True) for study in args.studies]  # all, before any runs
    rows = [measure(study, args.set, spec) for study, spec in zip(args.studies, specs)]
    print(f"{'study':22s}{'trials':>7s}{'epochs':>7s}{'C':>3s}{'wall s':>8s}{'training':>10s}{'between epochs':>16s}"
          f"{'outside trials':>16s}{'overhead':>10s}")
    for r in rows:
        print(f"{r['study']:22s}{r['trials']:7d}{r['epochs']:7d}{r['concurrent']:3d}{r['wall_s']:8.1f}"
              f"{r['training_s']:10.1f}{r['between_epochs_s']:16.1f}{r['outside_trials_s']:16.1f}{r['overhead']:10.1%}")
    worst = max(r["overhead"] for r in rows)
    print(f"goal: overhead <= {GOAL:.0%}: {'met' if worst <= GOAL else 'not met'} (worst {worst:.1%})")


if __name__ == "__main__":
    main()
