"""The fitting loop of a Gaussian reconstruction: progress, periodic saves, and what
Ctrl-C or a batch system's SIGTERM does (save the state, say how to resume).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

__all__ = ["Terminated", "fit"]

log = logging.getLogger("taichi_etgs.pipeline")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system ending the job), handled like Ctrl-C but exiting with 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def fit(run, session, *, save: Callable | None = None, save_every: int = 0,
        state_path: Path | None = None, on_step: Callable | None = None) -> None:
    """Run a :class:`~taichi_etgs.gaussian.fit.GaussianReconstruction` to its end with
    progress; ``save(run)`` every ``save_every`` steps, at the end and on Ctrl-C or
    SIGTERM (which then propagate: :class:`Terminated` for SIGTERM).

    on_step: also called with each :class:`~taichi_etgs.gaussian.fit.Progress`.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: SIGTERM is left as it is
        previous = None
    try:
        _iterate(run, session, save, save_every, state_path, on_step)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _iterate(run, session, save, save_every: int, state_path: Path | None, on_step) -> None:
    total = run.config.iterations
    every = max(1, total // 20)
    with session.progress(total, "Gaussians", initial=run.iteration) as bar:
        def progress(info) -> None:
            bar.update(info.iteration, loss=f"{info.loss:.4f}", n=info.n_gaussians)
            if info.message:
                session.tell(info.message)
            if info.iteration % every == 0 or info.iteration == total:
                log.debug("iteration %d/%d: loss %.5f, %d Gaussians", info.iteration, total,
                          info.loss, info.n_gaussians)
            if on_step is not None:
                on_step(info)

        try:
            run.run(progress=progress, checkpoint=save, save_every=save_every if save else 0)
        except KeyboardInterrupt:
            bar.close()
            if save is None:
                session.tell(f"interrupted at iteration {run.iteration} (no state file: "
                             "nothing saved)")
                raise
            save(run)
            session.tell(f"interrupted at iteration {run.iteration}; state saved to "
                         f"{state_path}; continue with --resume {state_path}")
            raise
    if save is not None:
        save(run)
        session.tell(f"state saved to {state_path}")
