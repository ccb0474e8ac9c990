"""A batch: which series need a run, one Dask task each, progress, the summary."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path

from ..errors import InputError
from .cluster import ClusterPlan, dashboard_link, failure_reason, open_client, plan_cluster
from .discover import Series
from .summary import SeriesOutcome, counts, write_summary
from .tasks import WORK_FOLDER, BatchSettings, SeriesTask, check_done, run_series, work_folders

__all__ = ["BatchProgress", "BatchResult", "run_batch"]

_POLL_S = 0.5


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch stands: series done, running, failed, waiting, skipped, of total."""

    done: int
    running: int
    failed: int
    waiting: int
    skipped: int
    total: int

    def line(self) -> str:
        text = f"batch: {self.done} done, {self.running} running, {self.failed} failed, " \
               f"{self.waiting} waiting (of {self.total}"
        return text + (f"; {self.skipped} up to date)" if self.skipped else ")")


@dataclass
class BatchResult:
    """A finished batch: every series' outcome, in input order, and the summary files."""

    outcomes: list[SeriesOutcome]
    summary_csv: Path
    summary_json: Path
    dashboard: str | None = None
    cluster: str = ""
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No series failed (or was interrupted)."""
        return self.counts.get("failed", 0) == 0 and self.counts.get("interrupted", 0) == 0


def _prepare_outdir(outdir: Path) -> None:
    from ..pipeline.outputs import probe_writable

    if outdir.exists() and not outdir.is_dir():
        raise InputError("is a file; -o names the folder the tomograms go to", outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot be created ({exc.strerror or exc})", outdir) from None
    probe_writable(outdir)


def _remove_work(outdir: Path, name: str) -> None:
    for folder in work_folders(outdir, name):
        shutil.rmtree(folder, ignore_errors=True)


def _deaths(client, keys: list[str]) -> dict[str, int]:
    """How many workers died running each task (the scheduler's count)."""
    def suspicious(dask_scheduler, keys):
        return {k: dask_scheduler.tasks[k].suspicious for k in keys if k in dask_scheduler.tasks}

    try:
        return client.run_on_scheduler(suspicious, keys=keys)
    except Exception:  # a scheduler that refuses to run functions: counts unknown
        return {}


def run_batch(series: Sequence[Series], settings: BatchSettings, outdir: str | PathLike, *,
              workers: int | None = None, threads: int | None = None,
              scheduler: str | None = None, retries: int = 2, processes: bool = True,
              session=None, on_progress: Callable[[BatchProgress], None] | None = None
              ) -> BatchResult:
    """Reconstruct every series into ``outdir`` on Dask; never raises for one series'
    fault (its outcome says ``failed``).

    Parameters
    ----------
    series: the tilt series (:func:`~taichi_etgs.batch.discover.find_series`).
    settings: how (:class:`~taichi_etgs.batch.tasks.BatchSettings`).
    outdir: the output folder (created): ``<name>.mrc`` and its sidecar per series, and
        ``batch_summary.csv``/``.json``.
    workers, threads: the embedded cluster's size (:func:`plan_cluster`); with a
        ``scheduler``, ``threads`` is each task's Taichi thread count (None: all cores).
    scheduler: the address of an existing Dask scheduler to run on.
    retries: how many times a series whose worker died is run again.
    processes: False: one worker thread in this process (tests).
    session: a :class:`~taichi_etgs.pipeline.session.Session` for notes (the cluster, the
        dashboard, each series as it ends) and its provenance's command line.
    on_progress: called with a :class:`BatchProgress` whenever the counts change.

    Raises
    ------
    InputError: no series, a series without a thickness, an output folder that cannot
        be written; nothing is run then.
    """
    from .. import __version__
    from ..pipeline.session import Session

    session = session or Session()
    start = time.perf_counter()
    outdir = Path(outdir)
    if not series:
        raise InputError("no tilt series found: give folders, globs, stacks (.mrc, .st, "
                         ".ali with their .tlt) or a table (.csv, .star)")
    missing = [s for s in series if s.thickness_at(settings.binning, settings.thickness)
               is None]
    if missing:
        raise InputError(f"no thickness for {missing[0].name} ({missing[0].origin}): give "
                         f"--thickness, or a thickness column in the table")
    if int(retries) < 0:
        raise InputError(f"--retries must be >= 0, got {retries}")
    _prepare_outdir(outdir)
    outcomes: dict[str, SeriesOutcome] = {}
    to_run: list[Series] = []
    for s in series:
        state, why = check_done(s, settings, outdir)
        if state == "done":
            outcomes[s.name] = SeriesOutcome(name=s.name, status="skipped", stack=str(s.stack),
                                             output=str(outdir.absolute() / f"{s.name}.mrc"),
                                             attempts=0,
                                             message="up to date")
        elif state == "stale" and not settings.force:
            outcomes[s.name] = SeriesOutcome(
                name=s.name, status="failed", stack=str(s.stack), attempts=0,
                message=f"{outdir / (s.name + '.mrc')}: {why}; use --force to replace it")
        else:
            to_run.append(s)
    skipped = counts(list(outcomes.values()))["skipped"]
    if skipped:
        session.tell(f"{skipped} of {len(series)} series up to date in {outdir}: skipped")
    for s in series:
        if s.name in outcomes and outcomes[s.name].status == "failed":
            session.warn(f"{s.name}: {outcomes[s.name].message}")
    plan: ClusterPlan | None = None
    dashboard = None
    described = ""
    if to_run:
        plan = None if scheduler else plan_cluster(settings.arch, len(to_run), workers,
                                                   threads)
        command = getattr(session.provenance, "command_line", None) or ["taichi_etgs.batch"]
        tasks = {s.name: SeriesTask(series=s, settings=settings, outdir=outdir.absolute(),
                                    threads=plan.threads if plan else threads,
                                    gpus=plan.gpus if plan else (),
                                    command_line=tuple(command), version=__version__)
                 for s in to_run}
        for s in to_run:
            _remove_work(outdir, s.name)  # attempts of an earlier batch that was killed
        described = plan.describe() if plan else f"scheduler {scheduler}"
        try:
            with open_client(plan, scheduler, retries=retries, processes=processes) as client:
                dashboard = dashboard_link(client)
                session.tell(f"{len(to_run)} series on {described}"
                             + (f"; dashboard {dashboard}" if dashboard else ""))
                _run_tasks(client, tasks, outdir, retries, outcomes, session, on_progress,
                           len(series), skipped)
        except KeyboardInterrupt:  # the summary still says what was done
            _summarize(series, outcomes, settings, outdir, described, dashboard, start)
            raise
        root = outdir / WORK_FOLDER
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return _summarize(series, outcomes, settings, outdir, described, dashboard, start)


def _summarize(series: Sequence[Series], outcomes: dict[str, SeriesOutcome],
               settings: BatchSettings, outdir: Path, described: str, dashboard: str | None,
               start: float) -> BatchResult:
    from .. import __version__

    ordered = [outcomes[s.name] for s in series if s.name in outcomes]
    seconds = round(time.perf_counter() - start, 2)
    record = {"method": settings.method, "settings": asdict(settings),
              "output_folder": str(outdir.absolute()), "cluster": described,
              "dashboard": dashboard, "seconds": seconds, "version": __version__}
    csv_path, json_path = write_summary(ordered, outdir, record)
    return BatchResult(outcomes=ordered, summary_csv=csv_path, summary_json=json_path,
                       dashboard=dashboard, cluster=described, seconds=seconds,
                       counts=counts(ordered))


def _run_tasks(client, tasks: dict[str, SeriesTask], outdir: Path, retries: int,
               outcomes: dict[str, SeriesOutcome], session, on_progress, total: int,
               skipped: int) -> None:
    """Submit one task per series, report each as it ends, and the counts as they
    change; on Ctrl-C the unfinished ones are cancelled and marked interrupted."""
    from distributed import wait

    futures = {client.submit(run_series, task, key=f"{task.settings.method}-{name}",
                             pure=False): name
               for name, task in tasks.items()}
    pending = set(futures)
    already_failed = sum(o.status == "failed" for o in outcomes.values())
    last = None
    try:
        while pending:
            try:
                finished, pending = wait(pending, timeout=_POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            deaths = _deaths(client, [f.key for f in finished]) if finished else {}
            for future in finished:
                outcome = _outcome(future, futures[future], tasks[futures[future]], retries)
                if future.key in deaths:  # every attempt of a failed task died
                    outcome.attempts = deaths[future.key] + (future.status == "finished")
                _remove_work(outdir, outcome.name)  # the work of attempts that died
                outcomes[outcome.name] = outcome
                _tell(session, outcome)
            progress = _progress(client, futures, pending, outcomes, total, skipped,
                                 already_failed)
            if progress != last and on_progress is not None:
                on_progress(progress)
            last = progress
    except KeyboardInterrupt:
        client.cancel(list(pending))
        for future in pending:
            name = futures[future]
            outcomes[name] = SeriesOutcome(name=name, status="interrupted",
                                           stack=str(tasks[name].series.stack), attempts=0,
                                           message="the batch was interrupted")
        raise


def _outcome(future, name: str, task: SeriesTask, retries: int) -> SeriesOutcome:
    if future.status == "finished":
        return future.result()
    if future.status == "cancelled":
        message = "cancelled (the scheduler or its workers went away)"
    else:
        message = failure_reason(future.exception(), retries)
    return SeriesOutcome(name=name, status="failed", stack=str(task.series.stack),
                         attempts=retries + 1, message=message)


def _tell(session, outcome: SeriesOutcome) -> None:
    retried = f" (attempt {outcome.attempts})" if outcome.attempts > 1 else ""
    for warning in outcome.warnings:
        session.warn(f"{outcome.name}: {warning}")
    if outcome.status == "done":
        session.say(f"{outcome.name}: done in {outcome.seconds:.1f} s{retried} -> "
                    f"{outcome.output}")
    else:
        session.warn(f"{outcome.name}: failed{retried}: {outcome.message}")


def _progress(client, futures: dict, pending: set, outcomes: dict, total: int, skipped: int,
              already_failed: int) -> BatchProgress:
    keys = {f.key for f in pending}
    try:
        # A worker may hold more tasks than it runs at once: its threads bound "running".
        threads = client.nthreads()
        running = sum(min(sum(k in keys for k in ks), threads.get(w, 1))
                      for w, ks in client.processing().items())
    except Exception:  # the scheduler did not answer this time: nothing known to be running
        running = 0
    ended = [outcomes[name] for f, name in futures.items() if f not in pending]
    done = sum(o.status == "done" for o in ended)
    failed = already_failed + sum(o.status == "failed" for o in ended)
    return BatchProgress(done=done, running=running, failed=failed,
                         waiting=len(pending) - running, skipped=skipped, total=total)
