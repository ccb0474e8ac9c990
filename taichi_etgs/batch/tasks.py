"""One tilt series of a batch: its settings, whether it is already done, and its run
inside a Dask worker through the same pipeline functions as the single commands.

A series' output is ``OUTDIR/<name>.mrc`` with its sidecar. The run writes into a fresh
folder of its own, ``OUTDIR/.taichi-etgs-batch/<name>.<12 hex>/``, and moves its files to
their final names only when it has finished (the sidecars last), so that a worker killed
mid-task leaves nothing under a final name: a retry starts again in a new folder, and
the batch removes the folders of attempts that died.

The sidecar's ``parameters`` hold the series' *fingerprint* (:func:`fingerprint`: the
method and its settings, the tomogram's size, how the stack is read, its files): an
output is up to date when its sidecar records the same fingerprint and its input files
are unchanged (same size and modification time, or the same SHA-256 where the sidecar
has one, as after a copy). The compute device and thread count are not part of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, RunFailure
from .cluster import current_worker, pin_gpu, taichi_as_asked
from .discover import Series
from .summary import SeriesOutcome

__all__ = ["METHODS", "BatchSettings", "SeriesTask", "check_done", "fingerprint",
           "run_series", "work_folders"]

METHODS = ("wbp", "sirt", "reconstruct")
#: The folder, inside the output folder, where runs write before their files are final.
WORK_FOLDER = ".taichi-etgs-batch"

# Each method's own options and their defaults (those of the single commands), so that
# a fingerprint is the same whether an option was given at its default or left out.
_CTF = {"defocus": None, "voltage_kV": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}
_DOSE = {"dose_per_tilt": None, "tilt_order": None, "tilt_start": None, "tilt_group": 2}
_ALIGN = {"refine_alignment": False}
# Options added after outputs were already fingerprinted: recorded only when not at what
# those outputs were made with, so that they stay up to date. reconstruct's later default
# refine_alignment None (auto) is recorded, as "auto": outputs made without refinement
# are not what it makes.
_RECORDED_WHEN_SET = frozenset(_ALIGN)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "wbp": {"radial": (0.35, 0.035), "fake_sirt": 0, **_CTF, **_DOSE, **_ALIGN},
    "sirt": {"iterations": 20, "relaxation": 1.0, "positivity": False, **_CTF, **_DOSE,
             **_ALIGN},
    "reconstruct": {"iterations": None, "max_gaussians": 60_000, "views_per_step": 8,
                    "init": "sirt", "tilt_weight": "cos", "seed": 0, "heldout_every": 10,
                    "voxel_size": None, "halves": False, "save_every": 100, **_CTF, **_DOSE,
                    "refine_alignment": None},
}


@dataclass(frozen=True)
class BatchSettings:
    """How every series of a batch is reconstructed.

    method: "wbp", "sirt" or "reconstruct".
    thickness: NZ in binned voxels of the series whose table gives none.
    width, output_contrast: the tomograms' NX and polarity (as the single commands).
    binning, contrast, pixel_size, apply_aln, aligned, exclude_views, erase_outliers: how
        stacks are read (:class:`~taichi_etgs.pipeline.inputs.StackSource`).
    options: the method's options (:data:`METHOD_OPTIONS`; ``defocus`` as a number only:
        per-series defocus files go in a table's ``defocus`` column).
    force: replace outputs made from other inputs or settings; accept angles that look
        like radians (as ``--force`` of the single commands).
    arch: the workers' compute device ("auto", "cpu", "cuda").
    """

    method: str
    thickness: int | None = None
    width: int | None = None
    output_contrast: str = "input"
    binning: int = 1
    contrast: str = "dark"
    pixel_size: float | None = None
    apply_aln: bool = False
    aligned: bool = False
    exclude_views: str | None = None
    erase_outliers: bool = True
    options: dict = field(default_factory=dict)
    force: bool = False
    arch: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")
        allowed = METHOD_OPTIONS[self.method]
        for name in self.options:
            if name not in allowed:
                owners = [m for m in METHODS if name in METHOD_OPTIONS[m]]
                whose = f"an option of {' and '.join(owners)}" if owners else "no option"
                raise InputError(f"--{name.replace('_', '-')} is {whose}, not of "
                                 f"--method {self.method}")
        defocus = self.options.get("defocus")
        if defocus is not None and not isinstance(defocus, (int, float)):
            raise InputError(f"--defocus {defocus}: a batch takes one number for every "
                             "series; give each series its defocus file in a table's "
                             "defocus column")
        if self.method == "reconstruct" and str(self.options.get("init", "sirt")) not in (
                "sirt", "wbp"):
            raise InputError("--init: a batch seeds each series from its own sirt or wbp "
                             "reconstruction, not from one file")
        object.__setattr__(self, "options", {**allowed, **self.options})

    def read_options(self) -> dict:
        return {"binning": self.binning, "contrast": self.contrast,
                "pixel_size": self.pixel_size, "apply_aln": self.apply_aln,
                "aligned": self.aligned, "exclude_views": self.exclude_views,
                "erase_outliers": self.erase_outliers}


def _path(p: Path | None) -> str | None:
    return None if p is None else os.path.abspath(p)


def fingerprint(series: Series, settings: BatchSettings) -> dict:
    """What makes a series' output: recorded in its sidecar, compared on a rerun.

    Plain JSON values (lists, not tuples), so that it compares equal to what a sidecar
    read back holds.
    """
    from ..pipeline.jsonio import dumps

    files = {"stack": _path(series.stack), "angles": _path(series.angles),
             "xf": _path(series.xf), "aln": _path(series.aln),
             "defocus": _path(series.defocus), "dose": _path(series.dose)}
    record = {"batch": {"method": settings.method, "series": series.name},
              "files": files, "read": settings.read_options(),
              "volume": {"thickness": series.thickness_at(settings.binning,
                                                          settings.thickness),
                         "width": settings.width, "output_contrast": settings.output_contrast},
              "options": {k: "auto" if k in _RECORDED_WHEN_SET and v is None else v
                          for k, v in sorted(settings.options.items())
                          if k not in _RECORDED_WHEN_SET or v != _ALIGN.get(k)}}
    return json.loads(dumps(record))


def _first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            # An option that is not recorded was at what outputs were made with before it.
            found = _first_difference(old.get(key, _ALIGN.get(key)),
                                      new.get(key, _ALIGN.get(key)), key)
            if found:
                return found
        return ""
    return "" if old == new else f"{where or 'settings'} {old!r}, now {new!r}"


def _input_changed(record: dict) -> bool:
    from ..provenance import file_record

    path = record.get("path")
    if not path:
        return True
    now = file_record(path, record.get("role", ""), checksum_max_bytes=0)
    if now["bytes"] is None:
        return True
    if (now["bytes"], now["modified"]) == (record.get("bytes"), record.get("modified")):
        return False
    if record.get("sha256") and now["bytes"] == record.get("bytes"):
        return file_record(path, record.get("role", ""))["sha256"] != record["sha256"]
    return True


def check_done(series: Series, settings: BatchSettings, outdir: Path) -> tuple[str, str]:
    """Whether a series' output is up to date: ``("done", "")``, ``("todo", "")``, or
    ``("stale", why)`` for an output made otherwise (replaced only with ``force``)."""
    from ..provenance import read_sidecar

    output = outdir / f"{series.name}.mrc"
    if not output.exists():
        return "todo", ""
    try:
        sidecar = read_sidecar(output)
    except FileNotFoundError:
        return "stale", "exists without its sidecar (not made by a batch run?)"
    except (OSError, ValueError) as exc:
        return "stale", f"its sidecar cannot be read ({exc})"
    recorded = sidecar.get("parameters")
    wanted = fingerprint(series, settings)
    if recorded != wanted:
        return "stale", f"made with other settings ({_first_difference(recorded, wanted)})"
    if (sidecar.get("output") or {}).get("bytes") != output.stat().st_size:
        return "stale", "changed since its sidecar was written"
    for record in sidecar.get("inputs") or []:
        if _input_changed(record):
            return "stale", f"its {record.get('role', 'input')} {record.get('path')} " \
                            f"changed since it was made"
    return "done", ""


def work_folders(outdir: Path, name: str) -> list[Path]:
    """The work folders of a series' attempts (those left by dead workers, mostly)."""
    root = outdir / WORK_FOLDER
    if not root.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"\.[0-9a-f]{12}")
    return [p for p in root.iterdir() if pattern.fullmatch(p.name)]


@dataclass(frozen=True)
class SeriesTask:
    """What a worker needs to run one series (pickled to it)."""

    series: Series
    settings: BatchSettings
    outdir: Path
    threads: int | None
    gpus: tuple[str, ...] = ()
    command_line: tuple[str, ...] = ()
    version: str = ""


def _check_memory(source, task: SeriesTask, thickness: int, limit: int | None) -> None:
    """Refuse a series whose run needs more than the worker may use: Dask's nanny would
    kill the worker at its limit, and the retries would die the same way."""
    from ..pipeline import inputs, sizes
    from ..resources import estimate_memory_bytes, format_bytes

    if not limit:
        return
    header = inputs.peek(source)
    shape = sizes.volume_shape(header.ny, header.nx, thickness, task.settings.width,
                               source.path)
    options = task.settings.options
    extra = ({"max_gaussians": options["max_gaussians"],
              "views_per_step": options["views_per_step"], "init": options["init"]}
             if task.settings.method == "reconstruct" else {})
    size = sizes.run_size(task.settings.method, header.n_raw, header.ny, header.nx, shape,
                          source.binning, **extra)
    need = estimate_memory_bytes(size).total_bytes
    if need > limit:
        raise InputError(f"the run needs about {format_bytes(need)} but a worker may use "
                         f"{format_bytes(limit)}: run fewer workers (--workers), or bin more "
                         f"(--binning)", source.path)


def _run_method(task: SeriesTask, source, target, session):
    from ..pipeline.ctf import CtfSettings
    from ..pipeline.dose import DoseSettings

    o, series = task.settings.options, task.series
    if task.settings.method == "reconstruct":
        from ..pipeline.gaussian import GaussianSettings, run_reconstruct

        gaussian = {k: o[k] for k in ("iterations", "max_gaussians", "views_per_step", "init",
                                      "tilt_weight", "seed", "heldout_every", "voxel_size",
                                      "halves", "save_every", "voltage_kV", "cs_mm",
                                      "amplitude_contrast", "dose_per_tilt", "tilt_order",
                                      "tilt_start", "tilt_group", "refine_alignment")}
        settings = GaussianSettings(**gaussian, defocus_um=series.defocus or o["defocus"] or 0.0,
                                    dose=series.dose)
        return run_reconstruct(source, target, settings, session=session)
    from ..pipeline.classical import run_sirt, run_wbp

    ctf = CtfSettings(series.defocus or o["defocus"], o["voltage_kV"], o["cs_mm"],
                      o["amplitude_contrast"])
    dose = DoseSettings(series.dose, o["dose_per_tilt"], o["tilt_order"], o["tilt_start"],
                        o["tilt_group"])
    if task.settings.method == "wbp":
        return run_wbp(source, target, radial=o["radial"], fake_sirt=o["fake_sirt"], ctf=ctf,
                       dose=dose, session=session, refine_alignment=o["refine_alignment"])
    return run_sirt(source, target, iterations=o["iterations"], relaxation=o["relaxation"],
                    positivity=o["positivity"], ctf=ctf, dose=dose, session=session,
                    refine_alignment=o["refine_alignment"])


def _rewrite_paths(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_paths(v, old, new) for v in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old):]
    return value


def _move_outputs(work: Path, outdir: Path, main: str) -> None:
    """Move a finished run's files to their final names: data files first, then their
    sidecars (paths inside pointed at the final folder), the main tomogram's last, so a
    kill in between leaves an output that a rerun sees as not done."""
    from .._atomic import write_text_atomic
    from ..pipeline.jsonio import dumps

    files = sorted(p for p in work.iterdir() if p.is_file())
    sidecars = [p for p in files if p.name.endswith(".json")]
    data = [p for p in files if p not in sidecars]
    data.sort(key=lambda p: p.name == main)
    sidecars.sort(key=lambda p: p.name == main + ".json")
    for path in data:
        os.replace(path, outdir / path.name)
    old, new = str(work.resolve()), str(outdir.resolve())
    for path in sidecars:
        record = _rewrite_paths(json.loads(path.read_text(encoding="utf-8")), old, new)
        write_text_atomic(outdir / path.name, dumps(record, indent=1) + "\n")
        path.unlink()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_series(task: SeriesTask) -> SeriesOutcome:
    """Run one series (inside a Dask worker, or anywhere); never raises for the series'
    own faults: bad input, a full disk or an internal error come back as a failed
    :class:`SeriesOutcome` with the error's one-line message, so the others go on.
    On a GPU worker the series runs in a process of its own (:mod:`.isolated`)."""
    worker = current_worker()
    name = str(getattr(worker, "name", "")) if worker else ""
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    if not task.gpus:
        return _run_series(task, name, limit)
    from .isolated import run_in_child

    pin_gpu(worker, task.gpus)
    try:
        return run_in_child(_run_series, task, name, limit)
    except RunFailure as exc:  # the process died (killed, out of memory): this series failed
        return SeriesOutcome(name=task.series.name, status="failed",
                             stack=str(task.series.stack), worker=name, message=str(exc))


def _run_series(task: SeriesTask, worker_name: str, memory_limit: int | None
                ) -> SeriesOutcome:
    """:func:`run_series` in this process, ``memory_limit`` (bytes) the worker's."""
    from ..pipeline.inputs import StackSource
    from ..pipeline.session import Session
    from ..pipeline.tomograms import VolumeTarget
    from ..provenance import Provenance

    series, settings = task.series, task.settings
    name = f"{series.name}.mrc"
    outcome = SeriesOutcome(name=series.name, status="failed", stack=str(series.stack),
                            worker=worker_name)
    notes: list[str] = []
    work = task.outdir / WORK_FOLDER / f"{series.name}.{uuid.uuid4().hex[:12]}"
    start = time.perf_counter()
    try:
        thickness = series.thickness_at(settings.binning, settings.thickness)
        if thickness is None:
            raise InputError("no thickness: give --thickness or a thickness column",
                             series.stack)
        source = StackSource(series.stack, angles=series.angles, xf=series.xf,
                             aln=series.aln, **settings.read_options())
        _check_memory(source, task, thickness, memory_limit)
        work.mkdir(parents=True)
        target = VolumeTarget(thickness, work / name, width=settings.width,
                              output_contrast=settings.output_contrast, force=settings.force)
        same = taichi_as_asked(settings.arch, task.threads)
        provenance = Provenance(command=settings.method,
                                command_line=list(task.command_line),
                                parameters=fingerprint(series, settings),
                                version=task.version)
        session = Session(provenance=provenance, result=notes.append, note=notes.append,
                          warning=outcome.warnings.append,
                          arch=None if same else settings.arch, threads=task.threads)
        _run_method(task, source, target, session)
        _move_outputs(work, task.outdir, name)
        outcome.status, outcome.output = "done", str(task.outdir / name)
    except (InputError, RunFailure) as exc:
        outcome.message = _one_line(exc)
    except MemoryError:
        outcome.message = "out of memory; run fewer workers or bin more (--binning)"
    except OSError as exc:
        from ..pipeline.outputs import os_reason

        where = f"{exc.filename}: " if exc.filename else ""
        outcome.message = f"{where}{os_reason(exc)}"
    except Exception as exc:  # a bug must not stop the other series; its type says where
        outcome.message = f"internal error ({type(exc).__name__}: {_one_line(exc)})"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outcome.seconds = round(time.perf_counter() - start, 2)
    # The notes name the files where they were written; say where they are now.
    outcome.notes = [n.replace(str(work), str(task.outdir)) for n in notes]
    return outcome

