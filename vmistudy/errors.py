"""The project's one error type for bad input, raised anywhere and turned into a message at the edge."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: a study file, an override, an argument or saved study state that does not fit.

    The message is one line that names the field or file and what is allowed. Helpers raise it; each
    command's `main` (see `cli.command`) prints it as `error: <message>` and exits with status 2, before
    anything is started or written.
    """
