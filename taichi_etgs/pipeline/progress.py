"""Progress of long steps: a bar on a terminal, and one line per 10 % in the log.

Batch systems, pipes and notebooks have no terminal: tqdm then draws nothing, and a run of
hours would say nothing until it ends. :class:`ProgressReport` therefore also writes
``Gaussians: 30 % (180/600 it), loss 0.1234, n 41200; 95 s, about 220 s left`` every 10 %:
to the session's notes (stderr) when no bar shows, to the log only when one does.
"""

from __future__ import annotations

import logging
import sys
import time

from .session import SHOWN

__all__ = ["ProgressReport"]

log = logging.getLogger("taichi_etgs.pipeline")


class ProgressReport:
    """Progress of a step of ``total`` units (a context manager).

    session: where lines go (:class:`~taichi_etgs.pipeline.session.Session`); its
        ``bars`` decides whether a tqdm bar may show (on a terminal only).
    total: units of the whole step (iterations).
    desc: what is counted ("SIRT", "Gaussians").
    unit: the unit's name.
    initial: units already done (a resumed run).
    every_percent: a line each time the progress passes a multiple of this.
    """

    def __init__(self, session, total: int, desc: str, *, unit: str = "it", initial: int = 0,
                 every_percent: int = 10) -> None:
        self.session = session
        self.total = max(int(total), 0)
        self.desc, self.unit = desc, unit
        self.n = self.start = int(initial)
        self.every = max(1, int(every_percent))
        self.postfix: dict[str, str] = {}
        self._clock = time.perf_counter()
        self._next = (self._percent(self.n) // self.every + 1) * self.every
        self.bar = None
        if session.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit,
                            file=sys.stderr, disable=None, dynamic_ncols=True)

    @property
    def bar_shows(self) -> bool:
        """Whether a bar is drawn (a terminal); the periodic lines then go to the log only."""
        return self.bar is not None and not self.bar.disable

    def _percent(self, n: int) -> int:
        return int(100 * n // self.total) if self.total else 100

    def update(self, position: int, /, **postfix) -> None:
        """The step has reached ``position`` units; ``postfix`` values are shown beside it."""
        self.n = int(position)
        if postfix:
            self.postfix = {k: str(v) for k, v in postfix.items()}
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(self.n - self.bar.n)
        if self._percent(self.n) >= self._next:
            self._next = (self._percent(self.n) // self.every + 1) * self.every
            self._line()

    def line(self) -> str:
        """The one-line report of where the step is."""
        done = self.n - self.start
        elapsed = time.perf_counter() - self._clock
        text = f"{self.desc}: {self._percent(self.n)} % ({self.n}/{self.total} {self.unit})"
        if self.postfix:
            text += ", " + ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        text += f"; {elapsed:.0f} s"
        if 0 < done and self.n < self.total:
            text += f", about {elapsed / done * (self.total - self.n):.0f} s left"
        return text

    def _line(self) -> None:
        if self.bar_shows:
            log.info("%s", self.line(), extra=SHOWN)
        else:
            self.session.tell(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressReport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
