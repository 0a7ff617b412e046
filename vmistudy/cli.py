"""What the command-line entry points share: one exit for bad input, their argument parser with its examples,
quiet libraries, loading a study, checking an output folder, a progress bar."""
from __future__ import annotations

import argparse
import atexit
import functools
import gc
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from . import config
from .errors import InputError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
# a command's last step: the interpreter's final collection walks the heap of torch's, Ray's and MLflow's modules
# for seconds (2 s after a study) and frees nothing the exit would not. atexit runs it before that collection,
# after the handlers registered later (Ray's shutdown)
atexit.register(gc.freeze)


def command(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """A command's `main`: an InputError raised anywhere below becomes one line on stderr, exit status 2; Ctrl-C
    one line too (a command that keeps state says how to continue first), exit status 130, no traceback."""
    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are InputErrors: one line and exit 2, like every other bad input (argparse
    itself prints its usage first). `examples`: command lines that work in this repository, shown by --help."""

    def __init__(self, *args, examples: Sequence[str] = (), **kwargs):
        if examples:
            kwargs["epilog"] = "examples:\n" + "\n".join(f"  {line}" for line in examples)
            kwargs["formatter_class"] = argparse.RawDescriptionHelpFormatter  # one example a line, as written
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise InputError(f"{message} (see {self.prog} --help)")

    def add_verbose(self) -> None:
        self.add_argument("--verbose", action="store_true",
                          help="show the warnings, log lines and progress bars of the libraries underneath")


def quiet(verbose: bool = False) -> None:
    """Keep out of a command's output what libraries print for their own developers, unless `verbose`: MLflow's
    log lines, warnings and artifact progress bars, deprecation warnings. Set in the environment too, so that the
    processes a command starts (Ray's workers) are as quiet; a variable the user has set wins."""
    if verbose:
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each download
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(level.upper())  # here it may be imported already
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    # Ray times the define-by-run space, in which the sampler fits its model (a Gaussian process: seconds with
    # hundreds of trials), and warns as if the space trained something
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
    # Optuna's views of a parameter that kept one value over the completed configurations draw a flat axis, which
    # matplotlib warns about (the view is right: the axis holds one value)
    warnings.filterwarnings("ignore", module=r"optuna\.visualization(\.|$)")
    # Optuna's GP notes at import that it optimizes without greenlet, an optional speed-up not installed here
    logging.getLogger("optuna._gp.batched_lbfgsb").setLevel(logging.ERROR)


def load_study(path: str | Path, overrides: list[str], service: bool = False,
               reads_data: bool = True) -> config.StudySpec:
    """The validated study file with its overrides; `service`: it must have a search section; `reads_data`: its
    data root must exist."""
    spec = config.load(path, overrides, reads_data)
    if service and spec.search is None:
        raise InputError(f"{path}: search: required for a study (to train one model: python -m vmistudy.train)")
    return spec


def check_writable(folder: str | Path, field: str) -> None:
    """InputError unless `folder` is a folder this process may write in, or could be made one: checked before
    anything starts, not found out after the data are loaded or Ray is up."""
    target = existing = Path(os.path.abspath(folder))
    while not os.path.lexists(existing):
        existing = existing.parent
    if not os.path.isdir(existing):
        made = "" if existing == target else f", so {target} cannot be made"
        raise InputError(f"{field}: {existing} is not a folder{made}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{field}: {existing} is not writable; choose a folder you may write in")


class ProgressBar:
    """`epoch 3/10 [#########...........] 45% 90/200` redrawn in place on a terminal; silent in logs."""

    def __init__(self, epoch: int, epochs: int, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = f"epoch {epoch}/{epochs}", stream, width
        self.enabled = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if done == total else ""
        self.stream.write(f"\r{self.label} [{bar}] {100 * done // total:3d}% {done}/{total}{end}")
        self.stream.flush()
