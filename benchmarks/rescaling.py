"""Rescale a trained model's Gaussian MI targets z^ by alpha, the decoder undoing it: the same information at
another scale, so an MI bound should not move and the lambda objective should gain nothing.

    python -m benchmarks.rescaling CHECKPOINT [--alphas 1,0.3,0.1,0.03] [--steps 3000] [--lambda-mi 5]

CHECKPOINT: a checkpoint.pt of a model with mi.gaussian targets. Per alpha, on the test split: the per-epoch
bound of the Q trained alongside (rescaled with the model, so its log Q drops by |S| log alpha) with H(z^) of the
aggregate posterior (`mi.entropy: aggregate`, the default) and with the thesis' constant (`prior`); the ELBO;
ELBO + lambda * bound under each; and the frozen bounds of a fresh Q (thesis eq. 4.8) on the encoder and the
prior path. The prior path samples z ~ N(0, I) whatever q(z) is, so it measures another joint as alpha moves.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch

from vmistudy import config, data
from vmistudy.cli import ArgumentParser, command
from vmistudy.errors import InputError
from vmistudy.metrics import frozen_mi
from vmistudy.networks import VAE, QNetwork
from vmistudy.train import read_checkpoint
from vmistudy.trainer import Trainer, build_q


def rescale_z_hat(vae: VAE, q: QNetwork, dims: list[int], alpha: float) -> tuple[VAE, QNetwork]:
    """Copies of the VAE and its Q in which z^ = z[dims] is alpha times larger (means by alpha, variances by
    alpha^2) and x~ is unchanged (the decoder's input weights of those dims divided by alpha). Q's Gaussian
    head follows z^, so its log Q drops by |S| log alpha: the Q that is as good as before."""
    vae, q = copy.deepcopy(vae), copy.deepcopy(q)
    d, g, log_alpha = vae.d, len(dims), math.log(alpha)
    with torch.no_grad():
        for i in dims:
            vae.head.weight[i] *= alpha
            vae.head.bias[i] *= alpha
            vae.head.bias[d + i] += 2 * log_alpha
            vae.decoder[0].weight[:, i] /= alpha
        q.head.weight[:g] *= alpha
        q.head.bias[:g] *= alpha
        q.head.bias[g:2 * g] += 2 * log_alpha
    return vae, q


def measure(state: dict, alphas: list[float], steps: int, lambda_mi: float) -> list[dict[str, float]]:
    recipe = config.validate(state["spec"], source="checkpoint").recipe
    if not recipe.mi.gaussian:
        raise InputError("the checkpoint's model has no Gaussian MI targets (mi.gaussian is empty)")
    trainer = Trainer(recipe, data.load(recipe.data))
    trainer.load_state_dict(state)
    model, q, rows = trainer.vae, trainer.q, []
    for alpha in alphas:
        trainer.vae, trainer.q = rescale_z_hat(model, q, recipe.mi.gaussian, alpha)
        row = {"alpha": alpha}
        for form in ("aggregate", "prior"):
            trainer.recipe = dataclasses.replace(recipe, mi=recipe.mi.model_copy(update={"entropy": form}))
            metrics = trainer.evaluate()
            row["elbo"], row[f"bound_{form}"] = metrics["elbo"], metrics["mi_lower_bound_gaussian"]
            row[f"objective_{form}"] = row["elbo"] + lambda_mi * row[f"bound_{form}"]
        frozen = frozen_mi(trainer.vae, recipe.mi, trainer.data,
                           lambda: build_q(recipe, trainer.data.image_shape).to(trainer.device), steps)
        row.update(frozen_encoder=frozen["encoder"]["mi_lower_bound_gaussian"],
                   frozen_prior=frozen["prior"]["mi_lower_bound_gaussian"])
        rows.append(row)
        print(_line(row, lambda_mi, header=len(rows) == 1), flush=True)
    return rows


def _line(row: dict[str, float], lambda_mi: float, header: bool) -> str:
    names = ["alpha", "bound_aggregate", "bound_prior", "elbo", "objective_aggregate", "objective_prior",
             "frozen_encoder", "frozen_prior"]
    titles = ["alpha", "bound (H aggregate)", "bound (H thesis)", "ELBO", f"ELBO+{lambda_mi:g}*bound (agg.)",
              f"ELBO+{lambda_mi:g}*bound (thesis)", "fresh Q encoder", "fresh Q prior"]
    widths = [max(10, len(t) + 2) for t in titles]
    cells = "".join(f"{row[n]:>{w}.3f}" for n, w in zip(names, widths))
    return ("".join(f"{t:>{w}s}" for t, w in zip(titles, widths)) + "\n" if header else "") + cells


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.rescaling", description=__doc__.split("\n\n")[0], examples=[
        "python -m vmistudy.train studies/gaussian.yaml --set train.epochs=3 --set data.subset=10000 --out runs/gauss",
        "python -m benchmarks.rescaling runs/gauss/checkpoint.pt --alphas 1,0.1 --steps 300"])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt of a model with Gaussian MI targets")
    parser.add_argument("--alphas", default="1,0.3,0.1,0.03", help="comma-separated scale factors (> 0)")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps of each fresh Q")
    parser.add_argument("--lambda-mi", type=float, default=5.0, help="lambda of the objective that is printed")
    args = parser.parse_args(argv)
    try:
        alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        raise InputError(f"--alphas: comma-separated numbers > 0, got {args.alphas!r}") from None
    if not all(math.isfinite(a) and a > 0 for a in alphas):
        raise InputError(f"--alphas: every factor must be a finite number > 0, got {args.alphas!r}")
    if args.steps < 1:
        raise InputError("--steps must be >= 1")
    state = read_checkpoint(args.checkpoint, "give a checkpoint.pt written by python -m vmistudy.train")
    measure(state, alphas, args.steps, args.lambda_mi)


if __name__ == "__main__":
    main()
