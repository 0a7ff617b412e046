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

from . import config, data
from .cli import ProgressBar, fail
from .trainer import Trainer, load_checkpoint, save_checkpoint

CHECKPOINT, MODEL, METRICS = "checkpoint.pt", "model.pt", "metrics.jsonl"
MAY_CHANGE_ON_RESUME = {"train.epochs", "train.threads", "train.device"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vmistudy.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study file (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set mi.lambda_mi=5 (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/<study name>)")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        spec = config.load(args.study, args.set)
    except config.ConfigError as e:
        fail(str(e))
    out = args.resume or args.out or Path("runs") / spec.name
    state = resume_state(out, spec) if args.resume else None
    if state is None and out.exists() and any(out.iterdir()):
        fail(f"--out {out}: is not empty; continue a run there with --resume {out} or choose another --out")
    try:
        images = data.load(spec.data)
    except (OSError, RuntimeError, ValueError) as e:
        fail(f"data: cannot load {spec.data.name}: {e}")

    trainer = Trainer(spec, images)
    if state:
        trainer.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    write_history(out / METRICS, trainer.history)
    if spec.mi.fresh_q_steps:
        print(f"after epoch {spec.train.epochs}: a fresh Q is fitted for {spec.mi.fresh_q_steps} steps "
              f"(mi.fresh_q_steps, thesis eq. 4.8)", file=sys.stderr, flush=True)
    for epoch in range(trainer.epoch + 1, spec.train.epochs + 1):
        metrics = trainer.train_epoch(ProgressBar(epoch, spec.train.epochs))
        save_checkpoint(trainer.state_dict(), out / CHECKPOINT)
        line = json.dumps(metrics)
        with open(out / METRICS, "a") as f:
            f.write(line + "\n")
        print(line, flush=True)
    save_checkpoint({"spec": spec.model_dump(), "vae": trainer.vae.state_dict(), "epoch": trainer.epoch},
                    out / MODEL)
    print(f"model: {out / MODEL}", flush=True)


def resume_state(out: Path, spec: config.StudySpec) -> dict:
    if not (out / CHECKPOINT).exists():
        fail(f"--resume {out}: no {CHECKPOINT} there")
    state = load_checkpoint(out / CHECKPOINT)
    change = config.first_change(config.validate(state["spec"], source=str(out / CHECKPOINT)), spec,
                                 MAY_CHANGE_ON_RESUME)
    if change:
        fail(f"--resume {out}: {change}")
    if spec.train.epochs < state["epoch"]:
        fail(f"train.epochs: {spec.train.epochs} is below the {state['epoch']} epochs the checkpoint has done")
    return state


def write_history(path: Path, history: list[dict]) -> None:
    """metrics.jsonl = the checkpoint's history, so lines written after the last checkpoint are not repeated."""
    path.write_text("".join(json.dumps(m) + "\n" for m in history))


if __name__ == "__main__":
    main()
