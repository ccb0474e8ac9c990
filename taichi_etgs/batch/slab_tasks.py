"""One tomogram's slabs as Dask tasks (``wbp``, ``sirt`` and ``reconstruct`` with slabs and
``--workers N`` or ``--scheduler ADDRESS``): a big tomogram spread over several workers.

Each slab's pure function (:func:`~taichi_etgs.pipeline.slabs.reconstruct_rows` for WBP
and SIRT, :func:`~taichi_etgs.pipeline.gaussian_slabs.fit_rows` for Gaussians) becomes a
task on the cluster ``batch`` runs on (:mod:`taichi_etgs.batch.cluster`: an embedded
``LocalCluster`` sized to the machine, or an existing scheduler). This process still
prepares the views and writes the tomogram: it reads a slab's rows and sends them to the
cluster with the task, so the workers need no file system in common with it, and it
takes the volumes back in slab order, stitched and written as in a run in one process.
At most two slabs per worker thread are in flight (one computing, one waiting with its
rows), so what the slabs hold stays bounded whatever the tomogram's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import InputError, RunFailure
from .cluster import (
    current_worker,
    dashboard_link,
    failure_reason,
    open_client,
    pin_gpu,
    plan_cluster,
    taichi_as_asked,
)

__all__ = ["RETRIES", "SlabTasks"]

#: Times a slab whose worker died is run again (Dask's allowed-failures) before the run
#: fails: a worker lost once (a node preempted) costs one slab, not the run.
RETRIES = 2
_ADVICE = "try fewer --workers or a smaller --slab-rows"


@dataclass(frozen=True)
class SlabTasks:
    """A :class:`~taichi_etgs.pipeline.slabs.SlabRunner`: the slabs on ``workers`` workers
    of an embedded cluster (None: as ``batch`` sizes it, one per GPU or per core, never
    more than the slabs), or on the existing cluster of ``scheduler``.

    Each worker's Taichi runs on the session's ``arch`` with its ``threads`` as ``batch``
    gives them: ``threads`` per worker when given, else the cores shared out between
    the embedded cluster's workers (all of a worker's cores on a scheduler's).
    """

    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise InputError(f"--workers {self.workers}: expected a whole number >= 1")

    @contextlib.contextmanager
    def open(self, n_slabs: int, session) -> Iterator[Callable]:
        """The :data:`~taichi_etgs.pipeline.slabs.SlabMap` of a run of ``n_slabs`` slabs,
        on a cluster that lasts as long as the ``with`` block."""
        arch = session.arch or "auto"
        plan = None if self.scheduler else plan_cluster(arch, n_slabs, self.workers,
                                                        session.threads)
        start = _Start(arch, plan.threads if plan else session.threads,
                       plan.gpus if plan else ())
        with open_client(plan, self.scheduler, retries=RETRIES) as client:
            slots = max(1, sum(client.nthreads().values()))
            dashboard = dashboard_link(client)
            where = plan.describe() if plan else f"scheduler {self.scheduler}"
            session.tell(f"{n_slabs} slabs as Dask tasks on {where}"
                         + (f"; dashboard {dashboard}" if dashboard else ""))
            yield functools.partial(_as_tasks, client, 2 * slots, start)


@dataclass(frozen=True)
class _Start:
    """How a worker's Taichi is started: ``arch``, CPU ``threads``, the ``gpus`` the
    embedded cluster's workers are pinned to."""

    arch: str
    threads: int | None
    gpus: tuple[str, ...]


def _run_slab(start: _Start, function: Callable, *args):
    """On a worker: its GPU and Taichi as asked (kept from slab to slab on the CPU; a
    process of its own per slab on a GPU, see :mod:`.isolated`), then the slab."""
    if start.gpus:
        from .isolated import run_in_child

        pin_gpu(current_worker(), start.gpus)
        return run_in_child(_start_and_run, start, function, *args)
    return _start_and_run(start, function, *args)


def _start_and_run(start: _Start, function: Callable, *args):
    from .. import runtime

    if not taichi_as_asked(start.arch, start.threads):
        runtime.init(start.arch, threads=start.threads)
    return function(*args)


def _as_tasks(client, window: int, start: _Start, function: Callable,
              calls: Iterable[tuple]) -> Iterator:
    """``function(*args)`` for each of ``calls`` as a task, the slab's rows (the first
    argument) sent to the cluster as data, at most ``window`` tasks in flight; the
    results in order. A slab that fails fails the run: its InputError as it is (the
    message a run in one process gives), anything else as a one-line RunFailure."""
    tag = uuid.uuid4().hex[:8]  # keys of this run only, on a scheduler others share
    calls = iter(calls)
    in_flight: deque = deque()
    submitted = done = 0
    try:
        while True:
            for args in calls:
                submitted += 1
                # hash=False: tokenising the rows would read them all once more.
                rows = client.scatter(args[0], hash=False)
                in_flight.append(client.submit(_run_slab, start, function, rows, *args[1:],
                                               key=f"slab-{tag}-{submitted}", pure=False))
                if len(in_flight) >= window:
                    break
            if not in_flight:
                return
            future = in_flight.popleft()
            done += 1
            try:
                result = future.result()
            except InputError:
                raise
            # A cancelled future's error is asyncio's CancelledError, not an Exception.
            except (Exception, asyncio.CancelledError) as exc:
                raise RunFailure(f"slab {done} failed: "
                                 f"{failure_reason(exc, RETRIES, _ADVICE)}") from None
            yield result
    finally:
        client.cancel(list(in_flight))
