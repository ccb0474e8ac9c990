"""The Dask cluster a batch runs on: an embedded ``LocalCluster`` sized to the machine, or
an existing scheduler (``--scheduler ADDRESS``: one started by hand, or by dask-jobqueue
on SLURM/PBS).

The embedded cluster has one single-threaded Dask worker per task slot (each worker runs
one series at a time, in its own process, so a crash or a kill takes one series down, not
the batch): one worker per GPU, each pinned to its GPU, or CPU workers whose Taichi
threads split the cores (workers x threads = cores). A worker that dies (SIGKILL, out of
memory) is restarted by its nanny and its series is run again, up to ``retries`` more
times (Dask's ``distributed.scheduler.allowed-failures``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["ClusterPlan", "current_worker", "dashboard_link", "failure_reason", "open_client",
           "pin_gpu", "plan_cluster", "taichi_as_asked", "visible_gpus"]


@dataclass(frozen=True)
class ClusterPlan:
    """The embedded cluster: ``workers`` processes; ``threads`` Taichi CPU threads each
    (None: the worker computes on a GPU); ``gpus``: the GPU ids workers are pinned to, in
    turn (empty: CPU workers)."""

    workers: int
    threads: int | None
    gpus: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.gpus:
            return f"{self.workers} GPU worker{'s' * (self.workers > 1)} (GPUs " \
                   f"{', '.join(self.gpus)})"
        return f"{self.workers} CPU worker{'s' * (self.workers > 1)} x {self.threads} " \
               f"thread{'s' * (self.threads != 1)}"


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else those
    ``nvidia-smi`` lists; none without a driver."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = tuple(g.strip() for g in given.split(",") if g.strip())
        return () if ids[:1] == ("-1",) else ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        listed = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in listed.stdout.splitlines() if line.strip())


def _cores() -> int:
    from dask.system import CPU_COUNT  # affinity and cgroup quotas taken into account

    return max(1, int(CPU_COUNT))


def plan_cluster(arch: str, n_tasks: int, workers: int | None = None,
                 threads: int | None = None) -> ClusterPlan:
    """Size the embedded cluster for ``n_tasks`` series.

    arch: "cpu" uses CPU workers; "cuda" needs GPUs; "auto" uses the GPUs when there are
        any. workers: how many (default: one per GPU, or one per core, and never more than
        the tasks). threads: Taichi CPU threads per worker (default: the cores shared out).
    """
    gpus = visible_gpus() if arch in ("auto", "cuda") else ()
    if arch == "cuda" and not gpus:
        raise InputError("--arch cuda was asked for, but no GPU is visible (nvidia-smi, "
                         "CUDA_VISIBLE_DEVICES); use --arch cpu or --arch auto")
    cores = _cores()
    if workers is None:
        workers = len(gpus) if gpus else cores
    workers = max(1, min(int(workers), max(1, n_tasks)))
    if gpus:
        return ClusterPlan(workers=workers, threads=threads, gpus=gpus)
    return ClusterPlan(workers=workers, threads=threads or max(1, cores // workers))


@contextlib.contextmanager
def open_client(plan: ClusterPlan | None, scheduler: str | None = None, *, retries: int = 2,
                processes: bool = True) -> Iterator:
    """A ``distributed.Client`` on the embedded cluster of ``plan``, or on ``scheduler``.

    retries: how many times a series whose worker died is run again (embedded cluster;
        an existing scheduler has its own ``allowed-failures``).
    processes: False runs the workers as threads of this process (tests; one worker
        then, since Taichi runs once per process).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    assert plan is not None
    config = {"distributed.scheduler.allowed-failures": int(retries),
              # One series per worker at a time, none queued behind it on the worker: a
              # free worker takes the next series, and "running" means running.
              "distributed.scheduler.worker-saturation": 1.0,
              # Dask sets glibc's trim threshold in its workers to hand freed memory back
              # at once; a fixed threshold also stops glibc from raising its mmap
              # threshold, so every large numpy temporary is mapped and unmapped again:
              # the Gaussian fit ran 3-4x slower in a worker than in a plain process
              # (2.8 s against 8.2 s for a 16 x 32 x 48 slab). None: left unset.
              "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(config):
        cluster = LocalCluster(n_workers=plan.workers if processes else 1,
                               threads_per_worker=1, processes=processes,
                               dashboard_address=":0",  # any free port: never a clash
                               silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


def dashboard_link(client) -> str | None:
    """The Dask dashboard's address, when the scheduler serves one (bokeh installed)."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:  # the HTTP server shows no pages without it
        return None
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # an old or unusual scheduler: no dashboard to show
        return None
    return client.dashboard_link if "dashboard" in services else None


def current_worker():
    """The Dask worker running this code, or None outside one (a plain call)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def pin_gpu(worker, gpus: tuple[str, ...]) -> None:
    """One GPU per worker of the embedded cluster, by the worker's name (0, 1, ...), set
    before Taichi starts in the worker's process."""
    if not gpus or worker is None:
        return
    try:
        index = int(worker.name)
    except (TypeError, ValueError):
        index = abs(hash(worker.name))
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def taichi_as_asked(arch: str, threads: int | None) -> bool:
    """Whether the Taichi this process already started is the one asked for, so that a
    worker keeps it from task to task: a restart recompiles every kernel."""
    from .. import runtime

    running = runtime.current()
    return (running is not None and arch in ("auto", running.arch)
            and (running.arch != "cpu" or running.threads == threads))


def failure_reason(exc: BaseException, retries: int,
                   advice: str = "try fewer --workers or more --binning") -> str:
    """Why a task failed, in one line: its worker died on every attempt (``advice`` says
    what makes it fit), or the exception it raised."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        tries = f"{retries + 1} attempt{'s' * (retries > 0)}"
        return f"its worker died on each of {tries} (killed, or out of memory: {advice})"
    text = str(exc).strip().splitlines()
    return f"the task failed ({type(exc).__name__}: {text[0] if text else ''})"
