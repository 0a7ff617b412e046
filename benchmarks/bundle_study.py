"""A study trained in trial bundles against the same study trained trial by trial: wall time and models per hour.

    python -m benchmarks.bundle_study [STUDY] [--set key=value ...]      (default: studies/quick.yaml)

Runs STUDY twice as a user does (`python -m vmistudy.run`, a fresh name and storage under a temporary folder
each, one after the other on the same cores): with search.bundle false, each seed and twin a Tune trial of its
own, then true, each configuration one Tune trial that trains its members as one vectorized model. Prints
each run's wall time, the models it trained and the models per hour, the ratio, and how far each bundle member's
final metrics are from those of the same model trained as a trial of its own (float rounding apart, they are
the same model). The study needs more than one member per configuration (replicates, paired_baseline), the mlp
backbone, and a sampler that proposes the same configurations both times (random, grid, or TPE within its
startup_trials).
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.overhead import REPO, run_study
from vmistudy import study as service
from vmistudy.cli import ArgumentParser, command, load_study
from vmistudy.errors import InputError

COMPARED = ("mi_lower_bound", "accuracy_hungarian", "elbo")


def models(rows: list[dict], spec) -> dict[tuple, dict]:
    """The final metrics of each model a study trained, by (its sampled values, seed, lambda_mi)."""
    last: dict[str, dict] = {}
    for row in rows:
        if row["epoch"] >= last.get(row["trial_id"], {}).get("epoch", 0):
            last[row["trial_id"]] = row
    found = {}
    for row in last.values():
        sampled = tuple(sorted((k, v) for k, v in row["config"].items() if k in spec.search.space))
        for member in service.member_rows(row["config"], row, spec.search):
            metrics = member["metrics"]
            found[(sampled, metrics["seed"], metrics["lambda_mi"])] = metrics
    return found


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.bundle_study", description=__doc__.split("\n\n")[0],
                            examples=["python -m benchmarks.bundle_study      # studies/quick.yaml",
                                      "python -m benchmarks.bundle_study studies/quick.yaml --set train.epochs=3"])
    parser.add_argument("study", nargs="?", type=Path, default=REPO / "studies" / "quick.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to both runs")
    args = parser.parse_args(argv)
    results = {}
    for bundle in (False, True):
        overrides = [*args.set, f"search.bundle={str(bundle).lower()}"]
        spec = load_study(args.study, overrides, service=True)
        if service.members_per_configuration(spec.search) < 2:
            raise InputError("search.replicates: a bundle needs 2 or more members per configuration (replicates "
                             "above 1, or paired_baseline: true)")
        wall, rows = run_study(args.study, overrides, "bundled" if bundle else "trial-by-trial")
        results[bundle] = (wall, models(rows, spec))
        print(f"{'bundles' if bundle else 'trial by trial':15s} {wall:7.1f} s  {len(results[bundle][1]):4d} models  "
              f"{3600 * len(results[bundle][1]) / wall:7.0f} models/hour", flush=True)
    (solo_wall, solo), (bundle_wall, bundled) = results[False], results[True]
    speedup = (len(bundled) / bundle_wall) / (len(solo) / solo_wall)
    print(f"ratio: bundles train {speedup:.2f}x the models per hour of trial by trial, same study, same cores")
    shared = solo.keys() & bundled.keys()
    if not shared:
        print("members against their solo trials: the two runs sampled different configurations; nothing to compare")
        return
    for metric in COMPARED:
        worst = max(abs(bundled[key][metric] - solo[key][metric]) for key in shared)
        print(f"members against their solo trials ({len(shared)} models): largest |difference| of {metric} {worst:.2g}")


if __name__ == "__main__":
    main()
