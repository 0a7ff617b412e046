"""MI of a frozen model (thesis eq. 4.8): train a fresh Q on the frozen VAE, report the bound.

    python -m vmistudy.evaluate CHECKPOINT [--steps N] [--json]

Two paths, both with hard categorical draws c ~ Cat(.):
  encoder: x ~ data, z ~ q(z|x), c ~ q(c|x), x~ = decoder mean   (the thesis' own; H(c) is the entropy
           of the aggregated posterior over the test split, H(z^) the prior's, exact only if q(z) = p(z));
  prior:   z ~ N(0, I), c ~ Uniform(K), x~ = decoder mean        (H(c^) exact: log K, |S|/2 log(2 pi e)).
Both bound I(c^; x~). Beside them, the thesis' reference E_x KL(q(c^|x) || p(c^)) (eq. 4.23) on the test
split: an upper bound on I(x; c^), not on I(c^; x~), since x~ is decoded from c^ itself.
Q is fitted on training images (encoder path) or fresh prior draws, and scored on held-out ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import config, data
from .cli import fail
from .metrics import Draw, fit_q, mi_bound, one_hot_sample
from .networks import VAE, mean_image
from .objective import target_entropy
from .trainer import build_q, load_checkpoint, pick_device

BATCH = 256


def encoder_draw(vae: VAE, images: torch.Tensor, targets: list[int], categorical: bool,
                 generator: torch.Generator) -> Draw:
    """Batches (x~, z^, c^) with x from `images` and the code from the encoder."""
    @torch.no_grad()
    def draw():
        index = torch.randint(len(images), (BATCH,), generator=generator, device=images.device)
        posterior = vae.encode(data.as_float(images[index]))
        z = posterior.gaussian.rsample(generator) if posterior.gaussian else None
        c = one_hot_sample(posterior.categorical.probs, generator) if posterior.categorical else None
        return mean_image(vae.decode(z, c)), z[:, targets] if targets else None, c if categorical else None
    return draw


def prior_draw(vae: VAE, device: torch.device, targets: list[int], categorical: bool,
               generator: torch.Generator) -> Draw:
    """Batches (x~, z^, c^) with the code drawn from the prior p(c) p(z|c)."""
    @torch.no_grad()
    def draw():
        c = (one_hot_sample(torch.full((BATCH, vae.k), 1 / vae.k, device=device), generator)
             if vae.k else None)
        z = vae.sample_prior_z(c, BATCH, generator) if vae.d else None
        return mean_image(vae.decode(z, c)), z[:, targets] if targets else None, c if categorical else None
    return draw


@torch.no_grad()
def upper_reference(vae: VAE, images: torch.Tensor, spec: config.MISpec) -> dict[str, float]:
    """E_x KL(q(c^|x) || p(c^)) on `images`, per part, nats; and q(c|x) for the aggregate entropy."""
    sums, probs = {"gaussian": 0.0, "categorical": 0.0}, []
    for batch in images.split(1000):
        posterior = vae.encode(data.as_float(batch))
        if spec.gaussian:
            sums["gaussian"] += posterior.gaussian.kl_standard_normal()[:, spec.gaussian].sum().item()
        if posterior.categorical:
            sums["categorical"] += posterior.categorical.kl_uniform().sum().item()
            probs.append(posterior.categorical.probs)
    parts = (["gaussian"] if spec.gaussian else []) + (["categorical"] if spec.categorical else [])
    out = {f"kl_upper_reference_{p}": sums[p] / len(images) for p in parts}
    return out | ({"aggregate_probs": torch.cat(probs)} if probs else {})


def evaluate(state: dict, steps: int, eval_batches: int, seed: int) -> dict[str, dict[str, float]]:
    spec = config.validate(state["spec"])
    device = pick_device(spec.train.device)
    images = data.load(spec.data).to(device)
    vae = VAE(spec.model, images.image_shape).to(device)
    vae.load_state_dict(state["vae"])
    vae.eval().requires_grad_(False)
    mi = spec.mi
    reference = upper_reference(vae, images.test_images, mi)
    aggregate = reference.pop("aggregate_probs", None)

    # the encoder path's c has the aggregated posterior as its marginal; the prior path's, the uniform prior
    prior_h, encoder_h = ({part: float(h) for part, h in
                           target_entropy(mi.model_copy(update={"entropy": how}), aggregate).items()}
                          for how in ("prior", "aggregate"))

    results = {}
    for path, entropies in (("encoder", encoder_h), ("prior", prior_h)):
        g = torch.Generator(device).manual_seed(seed)
        if path == "encoder":
            fit_on = encoder_draw(vae, images.train_images, mi.gaussian, mi.categorical, g)
            score_on = encoder_draw(vae, images.test_images, mi.gaussian, mi.categorical, g)
        else:
            fit_on = score_on = prior_draw(vae, device, mi.gaussian, mi.categorical, g)
        q = build_q(spec, images.image_shape).to(device)
        fit_q(q, fit_on, steps)
        results[path] = mi_bound(q, score_on, entropies, eval_batches)
    results["upper_reference"] = reference
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vmistudy.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt or model.pt written by vmistudy.train")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps to fit the fresh Q (batch 256)")
    parser.add_argument("--eval-batches", type=int, default=40, help="held-out batches of 256 to score Q on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        fail(f"{args.checkpoint}: no such checkpoint")
    if args.steps < 1 or args.eval_batches < 1:
        fail("--steps and --eval-batches must be >= 1")
    try:
        results = evaluate(load_checkpoint(args.checkpoint), args.steps, args.eval_batches, args.seed)
    except config.ConfigError as e:
        fail(str(e))
    if args.json:
        print(json.dumps(results))
        return
    for path, values in results.items():
        print(f"{path}:")
        for key, value in values.items():
            print(f"  {key:32s} {value:10.4f} nats")


if __name__ == "__main__":
    main()
