"""Train one model without Ray.

    python -m vmistudy.train STUDY.yaml [--set key=value ...] [--out DIR] [--resume DIR]

Writes DIR/metrics.jsonl (one JSON line per epoch, also printed), DIR/checkpoint.pt after every
epoch, and the final model DIR/model.pt. `--resume DIR` continues from DIR's last checkpoint and gives
the same result as a run that was never stopped; only train.epochs (to extend a run), train.threads
and train.device may differ from the checkpoint's spec.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import config, data
from .cli import ArgumentParser, ProgressBar, check_writable, command, load_study, quiet
from .errors import InputError
from .trainer import Trainer, load_checkpoint, save_checkpoint

CHECKPOINT, MODEL, METRICS = "checkpoint.pt", "model.pt", "metrics.jsonl"
MAY_CHANGE_ON_RESUME = {"train.epochs", "train.threads", "train.device"}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m vmistudy.train", description=__doc__.split("\n\n")[0], examples=[
        "python -m vmistudy.train tests/studies/tiny.yaml --out runs/tiny       # seconds, synthetic images",
        "python -m vmistudy.train studies/train_quick.yaml --out runs/quick     # about a minute on MNIST",
        "python -m vmistudy.train studies/train_quick.yaml --set mi.lambda_mi=0 --out runs/elbo",
        "python -m vmistudy.train studies/train_quick.yaml --resume runs/quick --set train.epochs=6  # extend"])
    parser.add_argument("study", help="study file (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set mi.lambda_mi=5 (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/<study name>)")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    parser.add_verbose()
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    quiet(args.verbose)
    spec = load_study(args.study, args.set)
    recipe = spec.recipe
    out = args.resume or args.out or Path("runs") / spec.name
    state = resume_state(out, recipe) if args.resume else None
    check_writable(out, "--resume" if args.resume else "--out")
    if state is None and out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out}: is not empty; continue a run there with --resume {out} "
                         "or choose another --out")
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    trainer = Trainer(recipe, data.load(recipe.data))
    if state:
        load_state(trainer, state, out / CHECKPOINT, "train again with --out NEW")
    out.mkdir(parents=True, exist_ok=True)
    _write_history(out / METRICS, trainer.history)
    try:
        for epoch in trainer.epochs(progress=lambda number: ProgressBar(number, recipe.train.epochs),
                                    notify=lambda line: print(line, file=sys.stderr, flush=True)):
            save_checkpoint(trainer.state_dict(), out / CHECKPOINT)
            line = json.dumps(epoch.metrics)
            with open(out / METRICS, "a") as f:
                f.write(line + "\n")
            print(line, flush=True)
    except KeyboardInterrupt:
        print(f"\n{out} holds the last finished epoch: --resume {out} continues from it", file=sys.stderr)
        raise
    save_checkpoint({"spec": recipe.model_dump(), "vae": trainer.vae.state_dict(), "epoch": trainer.epoch},
                    out / MODEL)
    print(f"model: {out / MODEL}", flush=True)


def resume_state(out: Path, recipe: config.Recipe) -> dict:
    """The checkpoint in `out`, if it belongs to this recipe (up to MAY_CHANGE_ON_RESUME) and can be extended."""
    if not (out / CHECKPOINT).exists():
        raise InputError(f"--resume {out}: no {CHECKPOINT} there")
    state = read_checkpoint(out / CHECKPOINT, f"train again with --out NEW (nothing in {out} was changed)")
    saved = config.validate(state["spec"], source=str(out / CHECKPOINT)).recipe
    change = config.first_change(saved, recipe, MAY_CHANGE_ON_RESUME)
    if change:
        raise InputError(f"--resume {out}: {change}")
    if recipe.train.epochs < state["epoch"]:
        raise InputError(f"train.epochs: {recipe.train.epochs} is below the {state['epoch']} epochs the "
                         "checkpoint has done")
    return state


def read_checkpoint(path: Path, hint: str) -> dict:
    """A checkpoint.pt or model.pt of this command, or an InputError naming the file and, in `hint`, what to do:
    a damaged file would otherwise end in one of torch's tracebacks, a FIFO would block."""
    if not path.is_file():
        raise InputError(f"{path}: {'not a file' if path.exists() else 'no such file'}; {hint}")
    try:
        state = load_checkpoint(path)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by how the file is damaged
        raise InputError(f"{path}: truncated, damaged or not a checkpoint ({type(e).__name__}); {hint}") from None
    if not isinstance(state, dict) or not {"spec", "epoch", "vae"} <= state.keys():
        raise InputError(f"{path}: not a checkpoint of python -m vmistudy.train (no spec, epoch and vae); {hint}")
    config.validate(state["spec"], source=str(path))  # its spec must hold here too (its data, say)
    return state


def load_state(target: Trainer | torch.nn.Module, state: dict, path: Path, hint: str) -> None:
    """`target.load_state_dict(state)`, the state read from the checkpoint at `path`: one that does not fit the
    model its own spec builds (tensors missing or misshapen) is an InputError naming the file."""
    try:
        target.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        reason = str(e).partition("\n")[0][:100]
        raise InputError(f"{path}: damaged: its state does not fit the model of its spec ({type(e).__name__}: "
                         f"{reason}); {hint}") from None


def _write_history(path: Path, history: list[dict]) -> None:
    """metrics.jsonl = the checkpoint's history, so lines written after the last checkpoint are not repeated."""
    path.write_text("".join(json.dumps(m) + "\n" for m in history))


if __name__ == "__main__":
    main()
