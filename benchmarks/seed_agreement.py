"""Seed agreement as a label-free score, measured on studies that trained their seeds apart.

    python -m benchmarks.seed_agreement EXPERIMENT [EXPERIMENT ...]

A bundled study scores how far a configuration's seeds agree as it trains (`seed_agreement`). A study of solo
trials holds the same models in its trials' final checkpoints (EXPERIMENT is `<search.storage>/<name>`, whose
`train_trial_*/checkpoint_*/checkpoint.pt` it reads). This loads each, takes its code argmax q(c|x) on the test
split, pools the runs of all the experiments given into configurations (specs equal but for train.seed) and
prints, per configuration, the mean accuracy over its seeds beside their agreement; the configuration each picks
and the gap (goal: the label-free pick within 2 points of the labels'); Spearman's rank correlation over
configurations; and of each configuration's seeds, the restart the agreement keeps against the mean seed. The
categorical MI bound (each run's last epoch) is scored the same way beside it. Last, the consensus of each
configuration's seeds (metrics.consensus: their categories matched, then a vote per image; no labels read) against
its mean seed and its best one: whether restarts pooled, rather than one restart kept, remove the seed lottery.
With `--ensemble K`, each configuration's seeds are also split, in seed order, into disjoint ensembles of K, and
their consensus is a distribution: mean and 95% interval over the ensembles, each beside its lambda_mi = 0 twins'
ensemble of the same seeds where the experiments hold the twins (paired difference, 95% interval).
Pass experiments trained alike (data, epochs): their configurations are ranked together.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vmistudy import config, data
from vmistudy.cli import ArgumentParser, command, quiet
from vmistudy.errors import InputError
from vmistudy.metrics import accuracy_hungarian, consensus, seed_agreement
from vmistudy.report import markdown, spearman, t_half_width
from vmistudy.trainer import Trainer, load_checkpoint

GOAL = 0.02  # the label-free pick within 2 points of the labelled one
SCORES = {"seed_agreement": "seed agreement", "mi_lower_bound_categorical": "the categorical MI bound"}


def final_models(experiment: Path) -> list[Trainer]:
    """The experiment's trials at their last epoch, each as a Trainer."""
    paths = sorted(experiment.glob("train_trial_*/checkpoint_*/checkpoint.pt"))
    if not paths:
        raise InputError(f"{experiment}: no train_trial_*/checkpoint_*/checkpoint.pt; give <search.storage>/<name> "
                         "of a study of solo trials that has run")
    loaded: dict[str, data.ImageData] = {}
    models = []
    for path in paths:
        state = load_checkpoint(path)
        recipe = config.validate(state["spec"], source=str(path)).recipe
        if recipe.model.categories is None:
            raise InputError(f"{path}: the model has no categorical code to agree on")
        key = recipe.data.model_dump_json()
        images = loaded.setdefault(key, data.load(recipe.data))
        trainer = Trainer(recipe, images)
        trainer.load_state_dict(state)
        models.append(trainer)
    return models


def configuration(trainer: Trainer) -> str:
    """What a run's configuration is: its recipe without the seed."""
    dump = trainer.recipe.model_dump()
    del dump["train"]["seed"]
    return json.dumps(dump, sort_keys=True, default=str)


def varied(keys: list[str]) -> list[dict]:
    """Each configuration as the fields in which the configurations differ."""
    flat = [pd.json_normalize(json.loads(k), sep=".").iloc[0].to_dict() for k in keys]
    fields = [f for f in flat[0] if len({json.dumps(d.get(f), default=str) for d in flat}) > 1]
    return [{f: d.get(f) for f in fields} for d in flat]


def table(models: list[Trainer]) -> pd.DataFrame:
    """One row per run: its configuration, seed, test accuracy, agreement with its configuration's other seeds and
    final categorical MI bound."""
    groups: dict[str, list[Trainer]] = {}
    for trainer in models:
        groups.setdefault(configuration(trainer), []).append(trainer)
    rows = []
    for (key, group), fields in zip(groups.items(), varied(list(groups))):
        codes = [t.clusters(t.data.test_images).numpy() for t in group]
        labels = group[0].data.test_labels.numpy()
        agreement = seed_agreement(codes) if len(group) > 1 else [float("nan")]
        together = accuracy_hungarian(labels, consensus(codes)) if len(group) > 1 else float("nan")
        for trainer, code, score in zip(group, codes, agreement):
            rows.append({**fields, "configuration": key, "seed": trainer.recipe.train.seed, "epoch": trainer.epoch,
                         "accuracy_hungarian": accuracy_hungarian(labels, code), "consensus": together,
                         "seed_agreement": score,
                         "mi_lower_bound_categorical": trainer.history[-1]["mi_lower_bound_categorical"],
                         "code": code, "labels": labels})
    return pd.DataFrame(rows)


def field_columns(runs: pd.DataFrame) -> list[str]:
    """The columns of `table` that say how its configurations differ."""
    measured = ("configuration", "seed", "epoch", "accuracy_hungarian", "consensus", "code", "labels", *SCORES)
    return [c for c in runs.columns if c not in measured]


def summary(runs: pd.DataFrame) -> list[str]:
    """The configurations' means, and for each label-free score its pick, rank correlation and restarts."""
    fields = field_columns(runs)
    means = runs.groupby("configuration", sort=False).agg(
        **{f: (f, "first") for f in fields}, seeds=("seed", "size"),
        **{m: (m, "mean") for m in ("accuracy_hungarian", *SCORES)},
        best_seed=("accuracy_hungarian", "max"), consensus=("consensus", "first"))
    means = means[means.seeds > 1]
    if len(means) < 2:
        raise InputError("fewer than 2 configurations with 2 or more seeds: nothing to choose between")
    by_labels = means.loc[means.accuracy_hungarian.idxmax()]
    lines = [markdown(means.reset_index(drop=True).round(4)), "",
             f"the labels pick {describe(by_labels, fields)}: accuracy_hungarian {by_labels.accuracy_hungarian:.4f}"]
    for score, name in SCORES.items():
        chosen = means.loc[means[score].idxmax()]
        gap = by_labels.accuracy_hungarian - chosen.accuracy_hungarian
        kept = runs.loc[runs.groupby("configuration", sort=False)[score].idxmax().dropna()]
        gains = (kept.set_index("configuration").accuracy_hungarian - means.accuracy_hungarian).dropna()
        lines += [f"{name} picks {describe(chosen, fields)}: accuracy_hungarian {chosen.accuracy_hungarian:.4f}, "
                  f"{100 * gap:.1f} points below (goal {100 * GOAL:.0f}: {'met' if gap <= GOAL else 'not met'}); "
                  f"rank correlation (Spearman) with accuracy over the {len(means)} configurations "
                  f"{spearman(means[score], means.accuracy_hungarian):+.2f}; the seed it keeps of each "
                  f"configuration {100 * gains.mean():+.1f} points over the mean seed on average (positive in "
                  f"{(gains > 0).sum()} of {len(gains)})"]
    return lines + [consensus_line(means)]


def consensus_line(means: pd.DataFrame) -> str:
    """What a vote of each configuration's seeds is worth against its mean seed and its best one."""
    over_mean, over_best = means.consensus - means.accuracy_hungarian, means.consensus - means.best_seed
    return (f"the consensus of each configuration's seeds (a vote after matching their categories, no labels): "
            f"{100 * over_mean.mean():+.1f} points over the mean seed on average (positive in {(over_mean > 0).sum()} "
            f"of {len(means)}), {100 * over_best.mean():+.1f} over the best seed (positive in {(over_best > 0).sum()})")


def ensembles(runs: pd.DataFrame, size: int) -> pd.DataFrame:
    """Each configuration's seeds in disjoint ensembles of `size`, in seed order (a remainder left out): the
    consensus accuracy of each beside its mean and best seed."""
    rows = []
    for key, group in runs.sort_values("seed").groupby("configuration", sort=False):
        for start in range(0, len(group) - size + 1, size):
            members = group.iloc[start:start + size]
            labels = members.labels.iloc[0]
            rows.append({"configuration": key, "seeds": tuple(members.seed),
                         "consensus": accuracy_hungarian(labels, consensus(list(members.code))),
                         "mean_seed": members.accuracy_hungarian.mean(), "best_seed": members.accuracy_hungarian.max()})
    return pd.DataFrame(rows, columns=["configuration", "seeds", "consensus", "mean_seed", "best_seed"])


def twin_of(key: str) -> str | None:
    """The configuration of `key`'s lambda_mi = 0 twins, or None where `key` is one itself."""
    recipe = json.loads(key)
    if not recipe["mi"]["lambda_mi"]:
        return None
    recipe["mi"]["lambda_mi"] = 0.0
    return json.dumps(recipe, sort_keys=True, default=str)


def ensemble_lines(runs: pd.DataFrame, size: int) -> list[str]:
    """Per configuration, its ensembles' consensus as mean +- 95% interval, and against its twins' ensembles."""
    table = ensembles(runs, size)
    fields, first = field_columns(runs), runs.drop_duplicates("configuration").set_index("configuration")
    lines = [f"ensembles of {size} seeds (disjoint, in seed order), each voted into one code without labels:"]
    for key, group in table.groupby("configuration", sort=False):
        lines.append(f"  {describe(first.loc[key], fields)}: {len(group)} ensemble(s), consensus "
                     f"{interval(group.consensus)} (their mean seed {interval(group.mean_seed)}, best seed "
                     f"{interval(group.best_seed)})")
        twins = table[table.configuration == twin_of(key)]
        paired = group.merge(twins, on="seeds", suffixes=("", "_twin"))
        if len(paired):
            diff = paired.consensus - paired.consensus_twin
            lines.append(f"    against the lambda_mi = 0 twins' ensembles of the same seeds: {interval(diff)} points, "
                         f"higher in {(diff > 0).sum()} of {len(diff)}")
    return lines


def interval(values: pd.Series) -> str:
    """Percent points as mean +- half-width of the 95% t interval (the mean alone for one value)."""
    if len(values) < 2:
        return f"{100 * values.mean():.1f} (n=1)"
    return f"{100 * values.mean():.1f} +- {100 * t_half_width(values.tolist()):.1f} (n={len(values)})"


def describe(row: pd.Series, fields: list[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in fields) or "the one configuration"


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.seed_agreement", description=__doc__.split("\n\n")[0],
                            examples=["python -m benchmarks.seed_agreement ~/vmistudy-results/best-mnist"])
    parser.add_argument("experiments", type=Path, nargs="+", help="<search.storage>/<name> of studies that have run")
    parser.add_argument("--ensemble", type=int, metavar="K",
                        help="also split each configuration's seeds into disjoint ensembles of K and vote each")
    parser.add_verbose()
    args = parser.parse_args(argv)
    if args.ensemble is not None and args.ensemble < 2:
        parser.error(f"--ensemble: {args.ensemble} is not allowed; an ensemble is 2 or more seeds")
    quiet(args.verbose)
    models = [trainer for experiment in args.experiments for trainer in final_models(experiment)]
    print(f"{len(models)} runs from {len(args.experiments)} experiment(s)")
    runs = table(models)
    print("\n".join(summary(runs)))
    if args.ensemble:
        print("\n".join(ensemble_lines(runs, args.ensemble)))


if __name__ == "__main__":
    main()
