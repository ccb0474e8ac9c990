"""Where an output came from: a JSON sidecar next to it and its MRC header labels.

Every MRC, state file and model export the command line writes gets a sidecar named
after it with ``.json`` appended (``tomo.mrc`` -> ``tomo.mrc.json``, ``tomo.state.h5`` ->
``tomo.state.h5.json``) that records the command line, the taichi-etgs version, every
parameter (defaults included), the input files (path, size, modification time and, for
files up to :data:`CHECKSUM_MAX_BYTES`, their SHA-256), what was computed (shapes, voxel
size, ...), the machine and the start and end times. Sidecars are written atomically and
replaced whenever their output is (re)written. The MRC header keeps a short form in its
ten 80-character labels: the version, command and time, then the command line.

Sidecar layout (``format = "taichi-etgs-provenance"``, ``format_version = 1``)::

    {"format", "format_version", "output": {"path", "bytes"}, "software": "taichi-etgs",
     "version", "command", "command_line": [argv...], "command_line_text",
     "parameters": {...}, "inputs": [{"role", "path", "bytes", "modified", "sha256"}],
     "result": {...}, "started", "finished", "seconds", "environment": {...}}

This module imports neither Taichi nor the kernels.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from ._atomic import write_text_atomic
from .pipeline import jsonio
from .pipeline.jsonio import to_jsonable

__all__ = [
    "CHECKSUM_MAX_BYTES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SIDECAR_SUFFIX",
    "Provenance",
    "file_record",
    "mrc_labels",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

FORMAT_NAME = "taichi-etgs-provenance"
FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".json"
#: Input files up to this size are hashed (SHA-256); larger ones are recorded by size and
#: modification time only, so that provenance never costs more than a fraction of a second.
CHECKSUM_MAX_BYTES = 256 * 2**20
_LABEL_CHARS = 80
_MAX_LABELS = 10
_HASH_BLOCK = 4 * 2**20


def _now() -> _dt.datetime:
    return _dt.datetime.now().astimezone()


def _iso(t: _dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def sidecar_path(output: str | PathLike) -> Path:
    """The sidecar of an output: its name with ``.json`` appended. ``tomo.mrc.json``"""
    p = Path(output)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def file_record(path: str | PathLike, role: str, *,
                checksum_max_bytes: int = CHECKSUM_MAX_BYTES) -> dict:
    """What identifies an input file: path, size, modification time, SHA-256 if small.

    path: the file (a missing file is recorded as such, without an error).
    role: what it was used as ("stack", "angles", "xf", "state", ...).
    checksum_max_bytes: hash files up to this size; larger ones get ``"sha256": null``.
    """
    p = Path(path)
    record: dict[str, Any] = {"role": role, "path": str(p.resolve() if p.exists() else p)}
    try:
        st = p.stat()
    except OSError:
        record.update(bytes=None, modified=None, sha256=None)
        return record
    record["bytes"] = int(st.st_size)
    record["modified"] = _iso(_dt.datetime.fromtimestamp(st.st_mtime).astimezone())
    digest = None
    if p.is_file() and st.st_size <= checksum_max_bytes:
        h = hashlib.sha256()
        try:
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
                    h.update(block)
            digest = h.hexdigest()
        except OSError:
            digest = None
    record["sha256"] = digest
    return record


def mrc_labels(version: str, command: str, what: str, command_line: Sequence[str],
               when: _dt.datetime | None = None) -> list[str]:
    """The ten MRC header labels (80 printable ASCII characters each) of an output.

    Label 0: ``taichi-etgs <version> <command> <time>``; label 1: what the data are
    (``what``); the rest: the command line in pieces of at most 80 characters, cut at
    spaces (a word longer than a label is cut where it must), the last one ending in
    ``...`` when it does not fit (the sidecar has it whole).
    """
    when = when or _now()
    labels = [f"taichi-etgs {version} {command} {when.strftime('%Y-%m-%d %H:%M:%S %z')}"]
    if what:
        labels.append(what)
    text = shlex.join(list(command_line))
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    room = _MAX_LABELS - len(labels)
    pieces = textwrap.wrap(text, _LABEL_CHARS, break_long_words=True,
                           break_on_hyphens=False)
    if len(pieces) > room:
        pieces = pieces[:room]
        pieces[-1] = pieces[-1][:_LABEL_CHARS - 3] + "..."
    return [label[:_LABEL_CHARS] for label in labels + pieces]


def write_sidecar(output: str | PathLike, record: Mapping) -> Path:
    """Write ``record`` as the JSON sidecar of ``output``, atomically; returns its path.

    The sidecar is replaced if it exists (it describes the file next to it). Raises
    OSError when the folder refuses the write (the previous sidecar, if any, is kept).
    """
    path = sidecar_path(output)
    text = jsonio.dumps(record, indent=1) + "\n"
    write_text_atomic(path, text)
    return path


def read_sidecar(output: str | PathLike) -> dict:
    """The sidecar of ``output`` as a dict (``FileNotFoundError`` when there is none)."""
    with open(sidecar_path(output), encoding="utf-8") as fh:
        return json.load(fh)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the folder was removed while the run went on
        return None


def _environment() -> dict:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.node(),
    }
    for name in ("numpy", "taichi", "mrcfile", "h5py", "scipy"):
        module = sys.modules.get(name)  # only what the run imported: no import cost here
        if module is not None:
            env[name] = str(getattr(module, "__version__", "?"))
    runtime = sys.modules.get("taichi_etgs.runtime")
    current = runtime.current() if runtime is not None else None
    if current is not None:
        env.update(arch=current.arch, threads=current.threads, precision=current.precision)
    return env


@dataclass
class Provenance:
    """What a command was asked to do; records each of its outputs.

    command: the subcommand ("wbp").
    command_line: the whole command, program name first. [argv]
    parameters: every option and argument with its value (defaults included).
    version: taichi-etgs version.
    """

    command: str
    command_line: list[str]
    parameters: dict
    version: str
    started: _dt.datetime = field(default_factory=_now)
    _clock: float = field(default_factory=time.perf_counter)
    _pending: list[tuple[str, str]] = field(default_factory=list)
    _records: list[dict] = field(default_factory=list)

    def add_input(self, role: str, path: str | PathLike | None) -> None:
        """Record an input file (once per path and role; None is ignored).

        The file is described (and hashed) when the first output is recorded, so a
        command that writes nothing (``info``) costs nothing here.
        """
        if path is None:
            return
        entry = (role, str(Path(path).resolve()))
        if entry not in self._pending:
            self._pending.append(entry)

    @property
    def inputs(self) -> list[dict]:
        """:func:`file_record` of each input, in the order they were added."""
        for role, path in self._pending[len(self._records):]:
            self._records.append(file_record(path, role))
        return list(self._records)

    def labels(self, what: str) -> list[str]:
        """MRC header labels for an output of this command (:func:`mrc_labels`)."""
        return mrc_labels(self.version, self.command, what, self.command_line)

    def record(self, output: str | PathLike, result: Mapping | None = None) -> dict:
        """The sidecar's content for ``output`` as it is now."""
        p = Path(output)
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        finished = _now()
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "output": {"path": str(p.resolve() if p.exists() else p), "bytes": size},
            "software": "taichi-etgs",
            "version": self.version,
            "command": self.command,
            "command_line": list(self.command_line),
            "command_line_text": shlex.join(list(self.command_line)),
            "working_directory": _cwd(),
            "parameters": to_jsonable(self.parameters),
            "inputs": list(self.inputs),
            "result": to_jsonable(dict(result or {})),
            "started": _iso(self.started),
            "finished": _iso(finished),
            "seconds": round(time.perf_counter() - self._clock, 3),
            "environment": _environment(),
        }

    def write(self, output: str | PathLike, result: Mapping | None = None) -> Path:
        """Write the sidecar of ``output`` (:func:`write_sidecar`)."""
        return write_sidecar(output, self.record(output, result))
