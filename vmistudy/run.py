"""Run a study on Ray Tune.

    python -m vmistudy.run STUDY.yaml [--resume] [--set key=value ...] [--address ADDRESS]

Without --address (and without $RAY_ADDRESS, which `ray job submit` sets) it starts a local Ray sized to
this machine on 127.0.0.1. A study lives in <search.storage>/<name>; running a study whose folder already
holds one is refused unless --resume is given, which continues it where it stopped: the searcher's
state, the trial count, and unfinished or errored trials from their last checkpoints.
Exit status: 0 when every trial ended well, 1 when some trial errored (listed), 2 on bad input, 130 when
interrupted (Ctrl-C) before the study ended: --resume continues it.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import pickletools
from typing import Any

from . import config, layout, replay
from .cli import ArgumentParser, check_writable, command, load_study, quiet
from .errors import InputError

MAY_CHANGE_ON_RESUME = {"resources.cpu", "resources.gpu", "train.threads", "train.device", "search.max_failures"}
# What Tune reads to resume a study (the newest of each, by the time in the name): JSON, the others pickles
# (search_gen_state-*.json too, whatever its name says)
TUNE_STATE = (layout.TUNER_STATE, layout.EXPERIMENT_STATE, "search_gen_state-*.json", "searcher-state-*.pkl")
DAMAGED_STUDY = "Tune cannot resume from it: restore the file, or start the study afresh with --set name=NEW"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m vmistudy.run", description=__doc__.split("\n\n")[0], examples=[
        "python -m vmistudy.run studies/quick.yaml          # a few minutes on a local Ray",
        "python -m vmistudy.run studies/quick.yaml --resume # after a crash or Ctrl-C: continue where it stopped",
        "python -m vmistudy.run tests/studies/tiny.yaml --set search.num_samples=8 --set name=tiny-8",
        "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m vmistudy.run studies/joint.yaml"])
    parser.add_argument("study", help="study file (YAML) with a search section")
    parser.add_argument("--resume", action="store_true", help="continue the study where it stopped")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set search.num_samples=8 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    parser.add_verbose()
    return parser.parse_args(argv)


@command
def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    quiet(args.verbose)
    spec = load_study(args.study, args.set, service=True)
    if spec.replay.table:
        replay.read(spec.replay.table).check(spec)
    check_start(spec, args.resume)
    from . import launch  # torch, Ray and MLflow: seconds to import, so only once the input is known good

    launch.run(spec, args)


def check_start(spec: config.StudySpec, resume: bool) -> None:
    """A new study must not exist yet; a resumed one must exist, be the study that was started, and have what
    it resumes from intact. Its storage must be writable."""
    storage, path = layout.storage_path(spec), layout.experiment_path(spec)
    if "://" not in storage:
        check_writable(storage, "search.storage")
    exists = layout.has_study(spec)
    if resume and not exists:
        raise InputError(f"--resume: no study named {spec.name} in {storage} (no {path}/{layout.TUNER_STATE}); "
                         "start it without --resume")
    if exists and not resume:
        raise InputError(f"name: a study named {spec.name} already exists in {path}; continue it with --resume, "
                         f"or start another with --set name=NEW")
    if not resume:
        return
    saved = layout.saved_spec(spec)  # None for a study that predates the saved spec
    change = config.first_change(saved, spec, MAY_CHANGE_ON_RESUME) if saved else None
    if change:
        raise InputError(f"--resume: {change} of {spec.name}")
    check_saved_state(spec)


def check_saved_state(spec: config.StudySpec) -> None:
    """Read what --resume reads before Ray starts: Tune stops on a damaged file of its own with a traceback, and
    a trial whose saved state is damaged errors. Pickles are checked opcode by opcode, never run."""
    files = {pattern: layout.newest_file(spec, pattern) for pattern in TUNE_STATE}
    missing = [pattern for pattern, path in files.items() if path is None]
    if missing:
        raise InputError(f"--resume: {layout.experiment_path(spec)} has no {missing[0]}: Tune saved no state "
                         "before the study stopped; start afresh with --set name=NEW")
    states = {pattern: _tune_state(path, pattern == layout.EXPERIMENT_STATE) for pattern, path in files.items()}
    for name in _unfinished_trials(states[layout.EXPERIMENT_STATE], files[layout.EXPERIMENT_STATE]):
        _trial_state(layout.trial_state_path(spec, name), name)


def _tune_state(path: str, is_json: bool) -> Any:
    """A Tune state file's JSON (None for a pickle); InputError naming a damaged one."""
    data = layout.read_bytes(path) or b""
    try:
        if is_json:
            return json.loads(data)
        missing = next((name for name in _pickled_names(data) if not _ours_exists(name)), None)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, an unknown opcode, no STOP: truncated
        raise InputError(f"{path}: damaged ({str(e)[:100] or 'empty'}); {DAMAGED_STUDY}") from None
    if missing:
        raise InputError(f"{path}: saved by another version of vmistudy (it names {missing}, which this one lacks); "
                         "finish the study with that version, or start afresh with --set name=NEW")
    return None


def _pickled_names(data: bytes) -> list[str]:
    """The `module.name` of every class or function a pickle refers to (GLOBAL and STACK_GLOBAL opcodes)."""
    names, pushed, memo = [], [None, None], {}  # pushed: strings put on the stack (None: one fetched, not a string)
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            names.append(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and None not in pushed[-2:]:
            names.append(".".join(pushed[-2:]))
        elif opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if arg is None else arg] = pushed[-1]
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif isinstance(arg, str) and "UNICODE" in opcode.name:
            pushed.append(arg)
    return names


def _ours_exists(name: str) -> bool:
    """False for a vmistudy class or function that this version does not have (a pickle could not load it)."""
    module, _, attribute = name.rpartition(".")
    if module.split(".")[0] != "vmistudy":
        return True
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


def _unfinished_trials(experiment: Any, path: str) -> list[str]:
    """The names of the trials Tune will continue (not TERMINATED), from its experiment state."""
    try:
        return [name for name, status in layout.trial_statuses(experiment).items() if status != "TERMINATED"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: damaged, not a Tune experiment state ({type(e).__name__}); {DAMAGED_STUDY}"
                         ) from None


def _trial_state(path: str, name: str) -> None:
    """The state a trial resumes from (layout.TRIAL_STATE); InputError naming a damaged one."""
    data = layout.read_bytes(path)
    if data is None:
        return  # the trial saved no epoch: it starts from epoch 0 anyway
    import torch  # here: a second to import, and only a resume reads a trial's state

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by how the file is damaged
        state = e
    if not (isinstance(state, dict) and "epoch" in state):
        raise InputError(f"{path}: truncated, damaged or not a trial's state ({type(state).__name__}); delete it "
                         f"to run trial {name} again from epoch 0, then --resume")


if __name__ == "__main__":
    main()
