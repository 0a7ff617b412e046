"""How good a start does VaDE's pretraining give? The k-means partition a mixture prior would start from, scored
after each of several pretraining lengths.

    python -m benchmarks.pretrain_start [STUDY] [--seeds 0,1] [--epochs 3,8,16] [--set KEY=VALUE ...]

STUDY (default studies/kmeans_mnist.yaml) is pretrained as its trials are (the ELBO alone, the mixture's means at
the origin), one seed at a time, up to the longest of --epochs. After each listed epoch it takes the centres the
trainer would start the prior from had train.pretrain_epochs been that epoch (`Trainer.start_centres`: k-means of
the training split's z means, drawn from the seed) and prints the Hungarian accuracy of that partition on the
training split, beside the ELBO; then per epoch the mean and 95% interval over the seeds. The labels score the
partition only; a study's own metrics start one epoch later, when q(c|x) has taken the partition up.
"""
from __future__ import annotations

import statistics

import torch

from vmistudy import data
from vmistudy.cli import ArgumentParser, command, load_study, quiet
from vmistudy.errors import InputError
from vmistudy.metrics import accuracy_hungarian
from vmistudy.report import t_half_width
from vmistudy.trainer import Trainer

STUDY = "studies/kmeans_mnist.yaml"


def integers(text: str, field: str, least: int) -> list[int]:
    """The distinct integers of a comma-separated option, each `least` or more, in order."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < least:
        raise InputError(f"{field}: {text!r} is not allowed; give integers separated by commas, {least} or more")
    return sorted(set(values))


def start_accuracy(trainer: Trainer) -> float:
    """Hungarian accuracy on the training split of the k-means partition the prior would start from now."""
    z, centres = trainer.start_centres()
    clusters = torch.cdist(z.mean, centres).argmin(1)
    return accuracy_hungarian(trainer.data.train_labels.cpu().numpy(), clusters.numpy())


def pretrain(study: str, overrides: list[str], seed: int, stops: list[int]) -> dict[int, dict[str, float]]:
    """One seed's pretraining up to max(stops) epochs: {epoch: {start_accuracy, elbo}} at each stop."""
    last = max(stops)
    spec = load_study(study, [*overrides, f"train.seed={seed}", f"train.pretrain_epochs={last}",
                              f"train.epochs={last + 1}"])
    if spec.recipe.model.prior != "mixture":
        raise InputError(f"{study}: model.prior: {spec.recipe.model.prior!r}; a start needs the mixture prior")
    if spec.recipe.train.threads:
        torch.set_num_threads(spec.recipe.train.threads)
    trainer = Trainer(spec.recipe, data.load(spec.recipe.data))
    rows = {}
    for epoch in range(1, last + 1):
        elbo = trainer.train_epoch()["elbo"]
        if epoch in stops:
            rows[epoch] = {"start_accuracy": start_accuracy(trainer), "elbo": elbo}
            print(f"seed {seed}  epoch {epoch:3d}  start accuracy {rows[epoch]['start_accuracy']:.3f}  "
                  f"elbo {elbo:.1f}", flush=True)
    return rows


def summary(runs: dict[int, dict[int, dict[str, float]]]) -> list[str]:
    """Per epoch: the start's accuracy and the ELBO, mean (and 95% t interval over two or more seeds)."""
    lines = ["epoch  start accuracy (mean +- 95% t over seeds)  elbo"]
    for epoch in sorted(next(iter(runs.values()))):
        accuracy = [rows[epoch]["start_accuracy"] for rows in runs.values()]
        interval = f" +- {t_half_width(accuracy):.3f}" if len(accuracy) > 1 else ""
        elbo = statistics.mean(rows[epoch]["elbo"] for rows in runs.values())
        lines.append(f"{epoch:5d}  {statistics.mean(accuracy):.3f}{interval}  {elbo:.1f}")
    return lines


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.pretrain_start", description=__doc__.split("\n\n")[0],
                            examples=["python -m benchmarks.pretrain_start --seeds 0,1 --epochs 3,8,16",
                                      "python -m benchmarks.pretrain_start --set data.name=fashion_mnist"])
    parser.add_argument("study", nargs="?", default=STUDY, help=f"study file (default {STUDY})")
    parser.add_argument("--seeds", default="0,1", help="train.seed values, comma-separated (default 0,1)")
    parser.add_argument("--epochs", default="3,8,16", help="pretraining lengths to score (default 3,8,16)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_verbose()
    args = parser.parse_args(argv)
    seeds, stops = integers(args.seeds, "--seeds", 0), integers(args.epochs, "--epochs", 1)
    quiet(args.verbose)
    load_study(args.study, args.set)  # a bad study file or field is one line before any training
    print("\n".join(summary({seed: pretrain(args.study, args.set, seed, stops) for seed in seeds})))


if __name__ == "__main__":
    main()
