"""Weighted back-projection and SIRT of a tilt series, with every check of the commands."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.scratch import ScratchStack
from . import inputs, sizes, slabs
from .alignment import check_alignment_outputs, write_alignment
from .ctf import CtfSettings, phase_flip
from .dose import DoseSettings, exposure_filter
from .inputs import StackSource
from .outputs import check_writable
from .session import Session
from .slabs import ClassicalSettings
from .tomograms import TomogramResult, TomogramWriter, VolumeTarget, mrc_origin, write_tomogram

__all__ = ["prepare", "run_sirt", "run_wbp"]

log = logging.getLogger("taichi_etgs.pipeline")


def prepare(method: str, source: StackSource, target: VolumeTarget, session: Session,
            slab_rows: int | None = None, files: contextlib.ExitStack | None = None):
    """Everything WBP and SIRT do before computing: the output, the sizes, memory and
    disk (from the header, then from the loaded series), whether to work in slabs
    (:func:`~taichi_etgs.pipeline.slabs.choose_rows`), the checked series.

    slab_rows: as :func:`run_wbp`. files: where the prepared views' temporary file of a
        slabbed run is closed (and removed); needed for a slabbed run.

    Returns ``(series, shape_zyx, rows)``; ``rows`` 0 for the whole at once, else the
    slabs' rows (the series' ``data`` then a :class:`~taichi_etgs.io.scratch.ScratchStack`
    for a stack read from a file).
    """
    folders = []
    if target.path is not None:
        check_writable(target.path, target.force, probe=True)
        folders = [target.path.parent]
    header = inputs.peek(source)
    shape = sizes.volume_shape(header.ny, header.nx, target.thickness, target.width,
                               source.path)
    size = sizes.run_size(method, header.n_raw, header.ny, header.nx, shape, source.binning,
                          in_memory=target.path is None)
    rows = slabs.choose_rows(size, slab_rows, session)
    sizes.check_resources(dataclasses.replace(size, slab_rows=rows), folders, final=False)
    allocate = None
    if rows and not source.in_memory:
        def allocate(stack_shape):
            return files.enter_context(ScratchStack(stack_shape, _scratch_folder(target)))

    series, _ = inputs.load(source, session, force=target.force, allocate=allocate)
    sizes.warn_shape(shape, session)
    max_tilt = float(np.max(np.abs(series.tilts_deg)))
    sizes.check_resources(sizes.run_size(method, series.n_tilts, *series.data.shape[1:], shape,
                                         source.binning, max_tilt_deg=max_tilt,
                                         slab_rows=rows, in_memory=target.path is None),
                          folders, final=True)
    return series, shape, rows


def _scratch_folder(target: VolumeTarget):
    """The prepared views of a slabbed run go beside the output (its disk was checked
    for them), else to the system's temporary folder."""
    import tempfile

    return target.path.parent if target.path is not None else Path(tempfile.gettempdir())


def _origin(series, shape) -> tuple[float, float, float]:
    pixel = inputs.pixel_size(series)
    _, ny, nx = series.data.shape
    return mrc_origin(shape, pixel, (shape[0] * pixel, ny * pixel, nx * pixel))


def _finish(session: Session, source: StackSource, target: VolumeTarget, series, shape,
            volume: np.ndarray, seconds: float, what: str, info: dict) -> TomogramResult:
    pixel = inputs.pixel_size(series)
    origin = _origin(series, shape)
    info = {"n_views": series.n_tilts, "binning": source.binning, **info}
    if target.path is not None:
        write_tomogram(session, target.path, volume, pixel, source.contrast,
                       target.output_contrast, target.force, what, info, origin)
    return TomogramResult(volume=volume, voxel_size_A=pixel, origin_A=origin,
                          output=target.path, seconds=seconds, info=info)


def _radial(radial: Sequence[float]) -> tuple[float, float]:
    try:
        cutoff, falloff = (float(v) for v in radial)
    except (TypeError, ValueError):
        raise InputError(f"radial filter {radial!r}: expected (cutoff, falloff)") from None
    if not (np.isfinite(cutoff) and np.isfinite(falloff)):
        raise InputError(f"--radial {cutoff:g},{falloff:g}: CUTOFF and FALLOFF must be finite "
                         "numbers")
    return cutoff, falloff


def _raw_view_count(source: StackSource, series) -> int:
    """Sections in the stack as given, views left out included (what per-view files,
    defocus, dose and the refined .xf, are counted against)."""
    return series.n_tilts if source.in_memory else inputs.peek(source).n_raw


def _flipped_views(source: StackSource, series, ctf, session: Session, dose=None, out=None):
    """Unit views (:func:`~taichi_etgs.pipeline.inputs.unit_views`), phase-flipped with
    ``ctf`` (:class:`~taichi_etgs.pipeline.ctf.CtfSettings`) when it has a defocus, then
    exposure-filtered with ``dose`` (:class:`~taichi_etgs.pipeline.dose.DoseSettings`) when
    it gives the views' exposure; their scale and what the sidecar records of both.
    out: where the views go, every step in place there (default: new arrays)."""
    views, scale = inputs.unit_views(series, source, session, out)
    ctf_active = ctf is not None and ctf.active
    dose_active = dose is not None and dose.active
    if not (ctf_active or dose_active):
        return views, scale, {}
    n_raw = _raw_view_count(source, series)
    info: dict = {}
    if ctf_active:
        views, info = phase_flip(views, series, ctf, n_raw, series.pixel_size_A, session,
                                 out=out)
    if dose_active:
        voltage = ctf.voltage_kV if ctf is not None else 300.0
        views, dose_info = exposure_filter(views, series, dose, n_raw, series.pixel_size_A,
                                           voltage, session, out=out)
        info = {**info, **dose_info}
    return views, scale, info


def _reconstruct(source: StackSource, target: VolumeTarget, method: str, options: dict,
                 ctf, dose, slab_rows, session: Session, what: str,
                 slab_runner: slabs.SlabRunner | None = None,
                 refine_alignment: bool = False) -> TomogramResult:
    """The views, then the tomogram: whole in memory, or slab by slab into the output
    (:mod:`taichi_etgs.pipeline.slabs`; the slabs computed by ``slab_runner`` when given).
    options: the method's :class:`~taichi_etgs.pipeline.slabs.ClassicalSettings` besides
    the sizes. refine_alignment: the views' residual shifts refined first (whole views
    only; :func:`_aligned_views`)."""
    if refine_alignment:
        check_alignment_outputs(source, target.path, target.force)
    with contextlib.ExitStack() as files:
        series, shape, rows = prepare(method, source, target, session, slab_rows, files)
        if refine_alignment and rows:
            raise InputError("--refine-alignment matches whole views: not with slabs "
                             f"(--slab-rows {rows}"
                             + ("" if slab_rows else ", chosen because the whole does not "
                                "fit in memory: bin more (--binning)") + ")", source.path)
        settings = ClassicalSettings(method, shape[0], shape[2], **options)
        out = None
        if rows:
            out = series.data if not source.in_memory else files.enter_context(
                ScratchStack(series.data.shape, _scratch_folder(target)))
        views, scale, info = _flipped_views(source, series, ctf, session, dose, out)
        session.start_compute()
        start = time.perf_counter()
        if refine_alignment:
            views, info["alignment"] = _aligned_views(views, series, shape, source, target,
                                                      session)
        if not rows:
            slabs.warn_whole(slab_runner, session)
            result = _whole(views, series.tilts_deg, settings, scale, session)
            del views
            info = {**_residual_info(result.residuals, scale, series), **info}
            volume = inputs.rescaled(result.volume, scale, series.source)
            return _finish(session, source, target, series, shape, volume,
                           time.perf_counter() - start, what, info)
        plan = slabs.plan_slabs(shape[1], rows)
        session.tell(f"{method}: {len(plan.slabs)} slab(s) of up to {rows} rows along Y")
        pixel = inputs.pixel_size(series)
        origin = _origin(series, shape)
        with TomogramWriter(session, target.path, shape, pixel, source.contrast,
                            target.output_contrast, target.force, what, origin) as writer:
            def write_rows(first: int, block: np.ndarray) -> None:
                writer.write_rows(first, inputs.rescaled(block, scale, series.source))

            with slabs.opened(slab_runner, len(plan.slabs), session) as run, \
                    session.progress(len(plan.slabs), "slabs", unit="slab") as bar:
                residuals = slabs.reconstruct_slabs(views.rows, series.tilts_deg, settings,
                                                    plan, write_rows, done=bar.update,
                                                    run=run)
            seconds = time.perf_counter() - start
            info = {"n_views": series.n_tilts, "binning": source.binning, "slab_rows": rows,
                    **_residual_info(residuals, scale, series), **info}
            writer.finish(info)
        return TomogramResult(volume=writer.volume, voxel_size_A=pixel, origin_A=origin,
                              output=target.path, seconds=seconds, info=info)


def _aligned_views(views: np.ndarray, series, shape, source: StackSource,
                   target: VolumeTarget, session: Session) -> tuple[np.ndarray, dict]:
    """The views with their residual shifts (and axis) corrected by projection matching
    against short Gaussian fits (:func:`taichi_etgs.gaussian.fit.prealign_views`), and the record
    of the correction, written next to the output as ``.xf`` and ``.tlt``."""
    from ..gaussian.fit import prealign_views

    session.tell("refining the views' alignment (projection matching against short "
                 "Gaussian fits)")
    alignment = prealign_views(views, series.tilts_deg, shape[0], width=shape[2])
    n_raw = _raw_view_count(source, series)
    record = write_alignment(session, alignment, series.tilts_deg, target.path, source,
                             target.force, series, n_raw)
    return alignment.apply(views).astype(np.float32, copy=False), record


def _whole(views: np.ndarray, tilts_deg, settings: ClassicalSettings, scale: float,
           session: Session) -> slabs.RowsResult:
    """The whole tomogram at once (SIRT with a progress report of its iterations)."""
    if settings.method != "sirt":
        return slabs.reconstruct_rows(views, tilts_deg, settings)
    with session.progress(settings.iterations, "SIRT") as bar:
        def progress(iteration: int, residual: float) -> None:
            bar.update(iteration, residual=f"{residual * scale:.4g}")
            log.debug("SIRT iteration %d: residual %.6g", iteration, residual * scale)

        return slabs.reconstruct_rows(views, tilts_deg, settings, progress)


def _residual_info(residuals, scale: float, series) -> dict:
    """SIRT's last residual in the images' units (refused when not finite); nothing for
    WBP."""
    if not residuals:
        return {}
    last = residuals[-1] * scale
    if not np.isfinite(last):
        raise InputError("the SIRT residual became NaN or Inf: the input holds extreme "
                         "values; check it with `taichi-etgs info`", series.source)
    return {"final_residual": last}


def run_wbp(source: StackSource, target: VolumeTarget, *,
            radial: Sequence[float] = (0.35, 0.035), fake_sirt: int = 0,
            ctf: CtfSettings | None = None, dose: DoseSettings | None = None,
            slab_rows: int | None = None, session: Session | None = None,
            slab_runner: slabs.SlabRunner | None = None,
            refine_alignment: bool = False) -> TomogramResult:
    """Weighted back-projection of a tilt series into a tomogram.

    Parameters
    ----------
    source: the tilt series (:class:`~taichi_etgs.pipeline.inputs.StackSource`).
    target: the tomogram's size and file (:class:`~taichi_etgs.pipeline.tomograms.VolumeTarget`;
        ``output=None`` only returns it; a name ending in ``.zarr`` is written as OME-Zarr).
    radial: IMOD's radial filter (cutoff, falloff), cycles/pixel.
    fake_sirt: shape the filter like this many SIRT iterations (0: plain WBP).
    ctf: with a defocus (one value or a file), the views are phase-flipped first, in strips
        along the tilt axis (:mod:`taichi_etgs.classical.phaseflip`).
    dose: with the views' exposure (a file or a dose per view with the acquisition order),
        the views are exposure-filtered (:mod:`taichi_etgs.classical.doseweight`), after
        the phase flip.
    slab_rows: reconstruct slabs of this many rows along Y (the tilt axis) one after the
        other, the views read and the tomogram written a slab at a time, the same
        tomogram (:mod:`taichi_etgs.pipeline.slabs`); None: in slabs only when the whole
        does not fit in the memory available.
    session: where messages go and what is recorded (default: logging, no sidecar).
    slab_runner: where the slabs of a slabbed run are computed (the Dask tasks of
        ``taichi_etgs.batch.slab_tasks.SlabTasks``); None: one after the other in this
        process. The same tomogram either way.
    refine_alignment: refine each view's residual shift first, by projection matching
        against short Gaussian fits, and write the correction as ``<output stem>.xf``
        and ``.tlt`` (:mod:`taichi_etgs.pipeline.alignment`); whole views only, not in
        slabs.

    Returns
    -------
    :class:`~taichi_etgs.pipeline.tomograms.TomogramResult` (``volume`` None for a run in
    slabs written to a file).

    Raises
    ------
    InputError: bad input or options, an output that exists (without ``force``), a run
        that does not fit in memory or on disk; nothing is written then.
    """
    session = session or Session()
    radial_pair = _radial(radial)
    if int(fake_sirt) < 0:
        raise InputError(f"--fake-sirt must be >= 0, got {fake_sirt}")
    result = _reconstruct(source, target, "wbp",
                          {"radial": radial_pair, "fake_sirt": int(fake_sirt)},
                          ctf, dose, slab_rows, session, "wbp", slab_runner,
                          refine_alignment)
    session.tell(f"weighted back-projection: {result.seconds:.1f} s")
    return result


def run_sirt(source: StackSource, target: VolumeTarget, *, iterations: int = 20,
             relaxation: float = 1.0, positivity: bool = False,
             ctf: CtfSettings | None = None, dose: DoseSettings | None = None,
             slab_rows: int | None = None, session: Session | None = None,
             slab_runner: slabs.SlabRunner | None = None,
             refine_alignment: bool = False) -> TomogramResult:
    """SIRT of a tilt series (row- and column-normalised, from zero).

    Parameters
    ----------
    source, target, ctf, dose, slab_rows, session, slab_runner, refine_alignment: as
        :func:`run_wbp`.
    iterations: SIRT iterations (10-30 is usual).
    relaxation: step size, in (0, 2).
    positivity: clamp negative density to zero each iteration.

    Returns
    -------
    :class:`~taichi_etgs.pipeline.tomograms.TomogramResult`; ``info["final_residual"]``
    is the last residual in the images' units.
    """
    session = session or Session()
    if not 0.0 < relaxation < 2.0:
        raise InputError(f"--relaxation must be in (0, 2), got {relaxation}")
    if int(iterations) < 1:
        raise InputError(f"--iterations must be at least 1, got {iterations}")
    options = {"iterations": int(iterations), "relaxation": float(relaxation),
               "positivity": bool(positivity)}
    result = _reconstruct(source, target, "sirt", options, ctf, dose, slab_rows, session,
                          f"sirt {iterations} it", slab_runner, refine_alignment)
    log.info("SIRT: %d iterations in %.1f s", iterations, result.seconds)
    return result
