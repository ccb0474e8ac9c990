"""Where a pipeline run reports, what it records, and the compute device it starts.

A :class:`Session` is what every ``run_*`` function of the pipeline takes besides its
inputs: the command line builds one whose messages go to stdout and stderr and whose
provenance is the command's; Python callers get one whose messages go to logging (the
``taichi_etgs`` logger) and whose warnings are Python warnings.

Three kinds of message:

- **results** (``wrote tomo.mrc ...``): the command line prints them on stdout;
- **notes** (``compute: cpu``, ``seeding the model``, periodic progress): stderr;
- **warnings**: ``warning: ...`` on stderr.

Log records whose text a session already showed on the console carry
:data:`SHOWN` as their ``extra``, so the console handler of the command line does not
show them again (its log file gets them all).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = ["SHOWN", "PipelineWarning", "Session"]

log = logging.getLogger("taichi_etgs.pipeline")

#: ``extra`` of a log record whose message is already on the console.
SHOWN = {"echoed": True}


class PipelineWarning(UserWarning):
    """Something a Python caller of the pipeline should know (the command line prints it
    as ``warning: ...``)."""


def _log_info(message: str) -> None:
    log.info("%s", message)


def _python_warning(message: str) -> None:
    warnings.warn(message, PipelineWarning, stacklevel=3)


@dataclass
class Session:
    """What a pipeline run reports to and records in, and the device it computes on.

    provenance: records inputs and writes the sidecar of every output
        (:class:`~taichi_etgs.provenance.Provenance`); None: outputs get no sidecar.
    result: receives results (default: logging, INFO).
    note: receives progress notes (default: logging, INFO).
    warning: receives warnings, without the ``warning:`` prefix (default: a Python
        :class:`PipelineWarning`).
    bars: show progress bars (tqdm) when stderr is a terminal; without one the progress is
        a line every 10 % through ``note``.
    arch, threads: the compute device to start (:func:`taichi_etgs.runtime.init`) when
        the run first needs it, after its cheap checks; ``arch=None`` keeps the running
        one (or starts ``auto`` when none runs).
    """

    provenance: Any = None
    result: Callable[[str], None] | None = None
    note: Callable[[str], None] | None = None
    warning: Callable[[str], None] | None = None
    bars: bool = False
    arch: str | None = None
    threads: int | None = None
    _compute: Any = field(default=None, init=False, repr=False)

    @classmethod
    def for_python(cls, command: str, parameters: Mapping[str, Any], *,
                   arch: str | None = None, threads: int | None = None) -> Session:
        """A session for a call of the Python API: its provenance names the call."""
        from .. import __version__
        from ..provenance import Provenance

        plain = (str, int, float, bool, type(None), PathLike, tuple, list, dict)
        shown = {k: v for k, v in parameters.items()
                 if isinstance(v, plain) and not hasattr(v, "shape")}
        line = [f"taichi_etgs.{command}", *(f"{k}={v!r}" for k, v in shown.items())]
        return cls(provenance=Provenance(command=command, command_line=line,
                                         parameters=dict(shown), version=__version__),
                   arch=arch, threads=threads)

    # -- messages -------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """Report a result."""
        (self.result or _log_info)(message)

    def tell(self, message: str) -> None:
        """Report progress or a notable step."""
        (self.note or _log_info)(message)

    def warn(self, message: str) -> None:
        """Report a warning (no ``warning:`` prefix)."""
        (self.warning or _python_warning)(message)

    def relay(self, caught: Sequence[warnings.WarningMessage]) -> list[str]:
        """Report warnings caught from the library; returns their texts."""
        messages = [str(w.message) for w in caught]
        for message in messages:
            self.warn(message)
        return messages

    def progress(self, total: int, desc: str, unit: str = "it", initial: int = 0):
        """A :class:`~taichi_etgs.pipeline.progress.ProgressReport` for a long step."""
        from .progress import ProgressReport

        return ProgressReport(self, total, desc, unit=unit, initial=initial)

    # -- the compute device ---------------------------------------------------------------

    def start_compute(self):
        """Start Taichi as asked (once per session); returns its
        :class:`~taichi_etgs.runtime.RuntimeConfig`. Called by each run after its cheap
        checks (outputs, inputs, sizes), just before the first kernel."""
        if self._compute is not None:
            return self._compute
        from .. import runtime

        if self.arch is None and runtime.current() is not None:
            self._compute = runtime.current()
            return self._compute
        start = time.perf_counter()
        self._compute = runtime.init(self.arch or "auto", threads=self.threads)
        self.tell(f"compute: {self._compute.arch}")
        log.info("started Taichi (%s, %s threads) in %.1f s", self._compute.arch,
                 self._compute.threads or "all", time.perf_counter() - start)
        return self._compute

    # -- provenance -----------------------------------------------------------------------

    def add_input(self, role: str, path: str | PathLike | None) -> None:
        """Record an input file of the run (nothing without provenance)."""
        if self.provenance is not None and path is not None:
            self.provenance.add_input(role, path)

    def labels(self, what: str) -> list[str]:
        """MRC header labels for an output: version, command, time, command line."""
        if self.provenance is None:
            from .. import __version__

            return [f"taichi-etgs {__version__}", what]
        return self.provenance.labels(what)

    def write_sidecar(self, output: str | PathLike, result: Mapping | None = None
                      ) -> Path | None:
        """Write the provenance sidecar of ``output`` (none without provenance)."""
        if self.provenance is None:
            return None
        sidecar = self.provenance.write(output, result)
        log.info("wrote %s", sidecar)
        return sidecar

