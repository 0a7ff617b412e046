"""What the command-line entry points share: one-line errors with exit status 2, a console progress bar."""
from __future__ import annotations

import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2, nothing started."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


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
