"""Private helpers shared by the readers: existence checks and text loading."""

from __future__ import annotations

import contextlib
from os import PathLike
from pathlib import Path

from ..errors import InputError

__all__: list[str] = []

# Angle, transform and alignment files are a few kB; a large file is an image passed by
# mistake, so only its start is read to tell the user so.
_MAX_TEXT_BYTES = 64 * 2**20
_SNIFF_BYTES = 8192


def existing_file(path: str | PathLike) -> Path:
    """Return ``path`` as a Path, or raise InputError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", p)
    if p.is_dir():
        raise InputError("is a folder, not a file", p)
    return p


def read_text_lines(path: str | PathLike, what: str) -> tuple[Path, list[str]]:
    """Read a small text file and return its lines without line endings.

    ``what`` names the expected content for the error message ("a tilt-angle file").
    """
    p = existing_file(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
            if b"\x00" not in head and size <= _MAX_TEXT_BYTES:
                head += fh.read()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", p) from exc
    raw = head
    # A NUL byte never occurs in the text formats we read; it means a binary file
    # (often an MRC stack passed where an angle file was expected).
    if b"\x00" in raw:
        raise InputError(f"is a binary file, not {what}", p)
    if size > _MAX_TEXT_BYTES:
        raise InputError(f"is {size / 2**20:.0f} MiB, far too large for {what}", p)
    text = raw.decode("utf-8", errors="replace")
    return p, text.splitlines()


def parse_float(token: str) -> float | None:
    """``float(token)`` or None when the token is not a number."""
    try:
        return float(token)
    except ValueError:
        return None


class AtomicWriter:
    """Base of the writers that build an output under a temporary name held by
    ``self._files`` (an ExitStack) and move it to its final name in :meth:`close`. Used
    as a context manager, an exception removes what was built and leaves the final name
    as it was."""

    _files: contextlib.ExitStack

    def close(self) -> Path:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is None:
            self.close()
        else:
            self._files.__exit__(kind, exc, traceback)
