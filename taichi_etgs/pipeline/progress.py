"""Progress of long steps: a bar on a terminal (tqdm)."""

from __future__ import annotations

import sys

__all__ = ["ProgressReport"]


class ProgressReport:
    """Progress of a step of ``total`` units (a context manager).

    session: its ``bars`` decides whether a tqdm bar may show (on a terminal only).
    total: units of the whole step (iterations).
    desc: what is counted ("SIRT", "Gaussians").
    unit: the unit's name.
    initial: units already done (a resumed run).
    """

    def __init__(self, session, total: int, desc: str, *, unit: str = "it", initial: int = 0
                 ) -> None:
        self.session = session
        self.total = max(int(total), 0)
        self.n = int(initial)
        self.bar = None
        if session.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit,
                            file=sys.stderr, disable=None, dynamic_ncols=True)

    def update(self, position: int, /, **postfix) -> None:
        """The step has reached ``position`` units; ``postfix`` values are shown beside it."""
        self.n = int(position)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: str(v) for k, v in postfix.items()}, refresh=False)
            self.bar.update(self.n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressReport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
