"""Output guards: whether a file may be written, asked before any work is done.

:func:`check_writable` is the one place that decides whether an output path can be
written (a folder in the way, an existing file without ``force``, a missing folder, a
folder that refuses new files). Every writer of the package calls it, from the MRC and
state writers up to the commands, so the messages are the same everywhere:

- ``PATH: is a folder; give a file name for the output``
- ``PATH: exists; use --force to overwrite`` (an OME-Zarr output, ``.zarr``, is a
  folder: an existing one is refused so, not as a folder in the way)
- ``PATH: cannot be written: the folder F does not exist``
- ``PATH: cannot be written in the folder F: <why>`` (with ``probe``)

This module depends on nothing in the package but :mod:`taichi_etgs.errors`, so the
readers and writers below the pipeline (``io``, ``state``, ``gaussianize``, ``export``,
``figures``, ``simulate``) use it too.
"""

from __future__ import annotations

import errno
import os
import tempfile
from os import PathLike
from pathlib import Path

from ..errors import InputError

__all__ = ["EXISTS_MESSAGE", "FOLDER_SUFFIXES", "check_writable", "os_reason",
           "probe_writable"]

#: What an existing output without ``force`` is refused with.
EXISTS_MESSAGE = "exists; use --force to overwrite"
#: Outputs that are folders by their format (OME-Zarr), not files.
FOLDER_SUFFIXES = (".zarr",)


def check_writable(path: str | PathLike, force: bool = False, *, what: str = "output",
                   probe: bool = False, folder_must_exist: bool = True) -> Path:
    """Refuse an output that cannot be written; returns it as a Path.

    Parameters
    ----------
    path: the file to write (or an OME-Zarr folder, ``.zarr``).
    force: an existing file (or ``.zarr`` folder) may be replaced.
    what: what the file is, for the message about a folder in its place ("output",
        "state").
    probe: also create and remove a file in its folder (:func:`probe_writable`): the only
        reliable test of a folder's writability (root, read-only mounts, network file
        systems). The commands probe; library writers do not (their write says why).
    folder_must_exist: False for writers that create the folder themselves.

    Raises
    ------
    InputError: the path is a folder, exists without ``force``, its folder does not exist
        (with ``folder_must_exist``), or the folder refuses new files (with ``probe``).
    """
    p = Path(path)
    if p.is_dir() and p.suffix.lower() not in FOLDER_SUFFIXES:
        raise InputError(f"is a folder; give a file name for the {what}", p)
    if p.exists() and not force:
        raise InputError(EXISTS_MESSAGE, p)
    folder = p.parent
    if not folder.is_dir():
        if folder_must_exist or folder.exists():
            raise InputError(f"cannot be written: the folder {folder} does not exist", p)
        return p
    if probe:
        probe_writable(folder, p)
    return p


def probe_writable(folder: str | PathLike, path: str | PathLike | None = None) -> None:
    """Create and remove a file in ``folder``; raise InputError (naming ``path``, else the
    folder) with the reason when that fails."""
    folder = Path(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=".taichi-etgs-probe-", dir=folder)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            why = "you have no permission to create files there"
        elif exc.errno == errno.EROFS:
            why = "it is on a read-only file system"
        elif exc.errno == errno.ENOSPC:
            why = "the disk is full"
        elif exc.errno == errno.ENOENT:  # the folder exists: a virtual one, such as /proc
            why = "it does not accept new files (a system or virtual folder?)"
        else:
            why = f"creating a file there fails: {exc.strerror or exc}"
        raise InputError(f"cannot be written in the folder {folder}: {why}",
                         folder if path is None else path) from None
    os.close(fd)
    os.unlink(name)


def os_reason(exc: OSError) -> str:
    """Why a write failed, in words: the system's reason and what it means."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += ": the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += ": no permission to write there"
    return reason
