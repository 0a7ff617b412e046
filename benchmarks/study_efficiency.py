"""Optuna (TPE) + ASHA against random search without early stopping, on one small search space.

    python -m benchmarks.study_efficiency [--samples 8] [--asha-samples 16] [--epochs 6] [--subset 6000]

Both studies run in this process on a local Ray over the same space. Random search trains every one of its
`--samples` configurations to the end; Optuna + ASHA gets `--asha-samples` configurations, since stopping
weak ones early is what lets it afford more in the same number of trial-epochs. Printed:
the best metric of each; the trial-epochs each needed (counted in the order results arrived) to first
reach random search's best, and their ratio; and each study's overhead, the part of the wall time the
trials were not training: 1 - sum(trial training time) / (wall time * concurrent trials).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import ray

from vmistudy import config, study
from vmistudy.tracking import NullStudyTracker

SPACE = {"mi.lambda_mi": {"loguniform": [0.5, 20.0]},
         "train.temperature.start": {"uniform": [0.5, 2.0]},
         "train.temperature.rate": {"loguniform": [1.0e-5, 1.0e-3]},
         "train.beta": {"uniform": [0.5, 4.0]}}


def spec(name: str, algorithm: str, scheduler: str, samples: int, args, storage: str) -> config.StudySpec:
    return config.validate({
        "name": name,
        "data": {"name": "mnist", "subset": args.subset, "test_subset": 2000},
        "model": {"backbone": "mlp", "gaussian_dims": 16, "categories": 10},
        "train": {"epochs": args.epochs, "batch_size": 128},
        "mi": {"lambda_mi": 5.0},
        "search": {"metric": "accuracy_hungarian", "mode": "max", "algorithm": algorithm, "seed": args.seed,
                   "num_samples": samples, "max_concurrent": args.concurrent, "space": SPACE,
                   "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 2},
                   "storage": storage}}, source="benchmark")


def run(s: config.StudySpec) -> dict:
    start = time.perf_counter()
    grid = study.tuner(s, NullStudyTracker()).fit()
    wall = time.perf_counter() - start
    reports = []  # (timestamp, metric) of every epoch of every trial
    training = 0.0
    for result in grid:
        frame = result.metrics_dataframe
        reports += list(zip(frame["timestamp"], frame[s.search.metric]))
        training += float(frame["time_this_iter_s"].sum())
    values = [value for _, value in sorted(reports, key=lambda r: r[0])]
    return {"wall": wall, "training": training, "epochs": len(values), "values": values, "best": max(values)}


def epochs_to_reach(values: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8, help="configurations of random search")
    parser.add_argument("--asha-samples", type=int, default=16, help="configurations of optuna + asha")
    parser.add_argument("--epochs", type=int, default=6, help="max epochs per trial")
    parser.add_argument("--subset", type=int, default=6000, help="MNIST training images")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ray.init(address="local", num_cpus=args.concurrent, include_dashboard=False, _node_ip_address="127.0.0.1")
    with tempfile.TemporaryDirectory() as storage:
        tpe = run(spec("tpe-asha", "optuna", "asha", args.asha_samples, args, storage))
        rnd = run(spec("random", "random", "none", args.samples, args, storage))
    ray.shutdown()

    target = rnd["best"]
    need = {name: epochs_to_reach(r["values"], target) for name, r in (("tpe", tpe), ("random", rnd))}
    print(f"\n{args.asha_samples} (optuna+asha) and {args.samples} (random) configurations x up to {args.epochs} "
          f"epochs, MNIST subset {args.subset}, "
          f"metric accuracy_hungarian (test split, 2000 images), {args.concurrent} trials at a time")
    print(f"{'':22s}{'best':>8s}{'trial-epochs run':>18s}{'to reach random best':>22s}{'overhead':>10s}")
    for name, r in (("optuna+asha", tpe), ("random, no stopping", rnd)):
        overhead = 1 - r["training"] / (r["wall"] * args.concurrent)
        reached = need["tpe" if r is tpe else "random"]
        print(f"{name:22s}{r['best']:8.4f}{r['epochs']:18d}{reached if reached else 'never':>22}{overhead:10.1%}")
    if need["tpe"]:
        print(f"ratio of trial-epochs to reach random search's best (optuna+asha / random): "
              f"{need['tpe'] / need['random']:.2f}")
    else:
        print("optuna+asha did not reach random search's best within its budget")
    print(f"wall time: optuna+asha {tpe['wall']:.0f} s, random {rnd['wall']:.0f} s")


if __name__ == "__main__":
    main()
