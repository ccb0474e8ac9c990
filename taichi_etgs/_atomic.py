"""Atomic file output: write to a temporary file beside the target, then rename over it.

A reader (or a resumed run) sees either the old file or the complete new one, never a
partial file under the final name, whatever interrupts the writer (an exception, Ctrl-C,
a SIGKILL, a full disk).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_folder", "atomic_output", "write_text_atomic"]


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows): best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and renamed to ``path``.

    The temporary file keeps ``path``'s suffix (writers that pick a format from it, such
    as matplotlib, still work). On any exception, KeyboardInterrupt included, it is removed.
    """
    target = Path(path)
    tmp = target.parent / f".{target.stem}.{uuid.uuid4().hex[:12]}.tmp{target.suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (:func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`atomic_output` for an output that is a folder (an OME-Zarr store): yield a
    temporary folder beside ``path``; on success its files are synced and it is renamed to
    ``path`` (an existing ``path`` is moved aside first and removed after, so that the
    final name always holds a complete folder); on any exception it is removed."""
    target = Path(path)
    tmp = target.parent / f".{target.stem}.{uuid.uuid4().hex[:12]}.tmp{target.suffix}"
    old = target.parent / f".{target.stem}.{uuid.uuid4().hex[:12]}.old{target.suffix}"
    try:
        tmp.mkdir()
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(folder, name), "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)  # the previous output comes back
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)
