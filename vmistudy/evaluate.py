"""MI of a frozen model (thesis eq. 4.8): train a fresh Q on the frozen VAE, report the bound.

    python -m vmistudy.evaluate CHECKPOINT [--steps N] [--json]

Two paths, both with hard categorical draws c ~ Cat(.):
  encoder: x ~ data, z ~ q(z|x), c ~ q(c|x), x~ = decoder mean   (the thesis' own; H(c^) is that of the
           aggregate posterior over the test split: exact for c, a proven lower bound for z^, so the bound holds
           and does not change when z^ is rescaled);
  prior:   z ~ N(0, I), c ~ Uniform(K), x~ = decoder mean        (H(c^) exact: log K, |S|/2 log(2 pi e); a bound
           on the MI of a different joint, which moves when the decoder is rescaled against the encoder).
Both bound I(c^; x~). Beside them, the thesis' reference E_x KL(q(c^|x) || p(c^)) (eq. 4.23) on the test
split: an upper bound on I(x; c^), not on I(c^; x~), since x~ is decoded from c^ itself.
Q is fitted on training images (encoder path) or fresh prior draws, and scored on held-out ones. The printed
standard error is the sampling error of the mean of log Q; the gap between Q and the true posterior is not in it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import config, data
from .cli import ArgumentParser, command, quiet
from .errors import InputError
from .metrics import EVAL_BATCHES, frozen_mi
from .networks import VAE
from .train import load_state, read_checkpoint
from .trainer import build_q, pick_device

HINT = "give a checkpoint.pt or model.pt written by python -m vmistudy.train"


def evaluate(state: dict, steps: int, eval_batches: int = EVAL_BATCHES, seed: int = 0,
             path: Path = Path("checkpoint")) -> dict[str, dict[str, float]]:
    """frozen_mi of the VAE in a checkpoint (read from `path`), on the data its spec names."""
    recipe = config.validate(state["spec"], source=str(path)).recipe
    device = pick_device(recipe.train.device)
    images = data.load(recipe.data).to(device)
    vae = VAE(recipe.model, images.image_shape).to(device)
    load_state(vae, state["vae"], path, HINT)
    return frozen_mi(vae, recipe.mi, images, lambda: build_q(recipe, images.image_shape).to(device), steps,
                     eval_batches, seed)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m vmistudy.evaluate", description=__doc__.split("\n\n")[0], examples=[
        "python -m vmistudy.train tests/studies/tiny.yaml --out runs/tiny   # first, a model to evaluate",
        "python -m vmistudy.evaluate runs/tiny/model.pt --steps 300",
        "python -m vmistudy.evaluate runs/tiny/checkpoint.pt --json"])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt or model.pt written by vmistudy.train")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps to fit the fresh Q (batch 256)")
    parser.add_argument("--eval-batches", type=int, default=EVAL_BATCHES,
                        help="held-out batches of 256 to score Q on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_verbose()
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    quiet(args.verbose)
    if args.steps < 1 or args.eval_batches < 1:
        raise InputError("--steps and --eval-batches must be >= 1")
    if not 0 <= args.seed < config.INT_LIMIT:
        raise InputError("--seed: must be in 0 .. 2**63 - 1 (torch's generators)")
    state = read_checkpoint(args.checkpoint, HINT)
    results = evaluate(state, args.steps, args.eval_batches, args.seed, args.checkpoint)
    if args.json:
        print(json.dumps(results))
        return
    for path, values in results.items():
        print(f"{path}:")
        for key, value in values.items():
            print(f"  {key:32s} {value:10.4f} nats")


if __name__ == "__main__":
    main()
