"""Exceptions that carry a message meant for the user, not a traceback."""

from __future__ import annotations

from os import PathLike

__all__ = ["InputError", "RunFailure"]


class InputError(ValueError):
    """Bad user input: a file that cannot be read, inconsistent options, impossible sizes.

    The CLI prints ``str(error)`` as one line and exits non-zero. The message names the
    file (and line, where there is one) and what was expected.
    """

    def __init__(self, message: str, path: str | PathLike | None = None,
                 line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}, line {line}"
            where += ": "
        super().__init__(where + message)


class RunFailure(Exception):
    """A run that could not finish for a reason outside the input (a full disk while
    saving): the CLI prints ``error: <message>`` and exits with 1."""
