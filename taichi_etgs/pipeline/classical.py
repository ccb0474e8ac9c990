"""Weighted back-projection and SIRT of a tilt series, with every check of the commands."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from . import inputs, sizes
from .ctf import CtfSettings, phase_flip
from .dose import DoseSettings, exposure_filter
from .inputs import StackSource
from .outputs import check_writable
from .session import Session
from .tomograms import TomogramResult, VolumeTarget, mrc_origin, write_tomogram

__all__ = ["prepare", "run_sirt", "run_wbp"]

log = logging.getLogger("taichi_etgs.pipeline")


def prepare(method: str, source: StackSource, target: VolumeTarget, session: Session):
    """Everything WBP and SIRT do before computing: the output, the sizes, memory and
    disk (from the header, then from the loaded series), the checked series.

    Returns ``(series, shape_zyx)``.
    """
    folders = []
    if target.path is not None:
        check_writable(target.path, target.force, probe=True)
        folders = [target.path.parent]
    header = inputs.peek(source)
    shape = sizes.volume_shape(header.ny, header.nx, target.thickness, target.width,
                               source.path)
    sizes.check_resources(sizes.run_size(method, header.n_raw, header.ny, header.nx, shape,
                                         source.binning), folders, final=False)
    series, _ = inputs.load(source, session, force=target.force)
    sizes.warn_shape(shape, session)
    max_tilt = float(np.max(np.abs(series.tilts_deg)))
    sizes.check_resources(sizes.run_size(method, series.n_tilts, *series.data.shape[1:], shape,
                                         source.binning, max_tilt_deg=max_tilt),
                          folders, final=True)
    return series, shape


def _finish(session: Session, source: StackSource, target: VolumeTarget, series, shape,
            volume: np.ndarray, seconds: float, what: str, info: dict) -> TomogramResult:
    pixel = inputs.pixel_size(series)
    _, ny, nx = series.data.shape
    origin = mrc_origin(shape, pixel, (shape[0] * pixel, ny * pixel, nx * pixel))
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


def _flipped_views(source: StackSource, series, ctf, session: Session, dose=None):
    """Unit views (:func:`~taichi_etgs.pipeline.inputs.unit_views`), phase-flipped with
    ``ctf`` (:class:`~taichi_etgs.pipeline.ctf.CtfSettings`) when it has a defocus, then
    exposure-filtered with ``dose`` (:class:`~taichi_etgs.pipeline.dose.DoseSettings`) when
    it gives the views' exposure; their scale and what the sidecar records of both."""
    views, scale = inputs.unit_views(series, source.contrast)
    ctf_active = ctf is not None and ctf.active
    dose_active = dose is not None and dose.active
    if not (ctf_active or dose_active):
        return views, scale, {}
    n_raw = series.n_tilts if source.in_memory else inputs.peek(source).n_raw
    info: dict = {}
    if ctf_active:
        views, info = phase_flip(views, series, ctf, n_raw, series.pixel_size_A, session)
    if dose_active:
        voltage = ctf.voltage_kV if ctf is not None else 300.0
        views, dose_info = exposure_filter(views, series, dose, n_raw, series.pixel_size_A,
                                           voltage, session)
        info = {**info, **dose_info}
    return views, scale, info


def run_wbp(source: StackSource, target: VolumeTarget, *,
            radial: Sequence[float] = (0.35, 0.035), fake_sirt: int = 0,
            ctf: CtfSettings | None = None, dose: DoseSettings | None = None,
            session: Session | None = None) -> TomogramResult:
    """Weighted back-projection of a tilt series into a tomogram.

    Parameters
    ----------
    source: the tilt series (:class:`~taichi_etgs.pipeline.inputs.StackSource`).
    target: the tomogram's size and file (:class:`~taichi_etgs.pipeline.tomograms.VolumeTarget`;
        ``output=None`` only returns it).
    radial: IMOD's radial filter (cutoff, falloff), cycles/pixel.
    fake_sirt: shape the filter like this many SIRT iterations (0: plain WBP).
    ctf: with a defocus (one value or a file), the views are phase-flipped first, in strips
        along the tilt axis (:mod:`taichi_etgs.classical.phaseflip`).
    dose: with the views' exposure (a file or a dose per view with the acquisition order),
        the views are exposure-filtered (:mod:`taichi_etgs.classical.doseweight`), after
        the phase flip.
    session: where messages go and what is recorded (default: logging, no sidecar).

    Returns
    -------
    :class:`~taichi_etgs.pipeline.tomograms.TomogramResult`.

    Raises
    ------
    InputError: bad input or options, an output that exists (without ``force``), a run
        that does not fit in memory or on disk; nothing is written then.
    """
    from ..classical.wbp import weighted_back_projection

    session = session or Session()
    radial_pair = _radial(radial)
    if int(fake_sirt) < 0:
        raise InputError(f"--fake-sirt must be >= 0, got {fake_sirt}")
    series, shape = prepare("wbp", source, target, session)
    views, scale, ctf_info = _flipped_views(source, series, ctf, session, dose)
    session.start_compute()
    start = time.perf_counter()
    volume = weighted_back_projection(views, series.tilts_deg, shape[0], radial=radial_pair,
                                      fake_sirt_iterations=int(fake_sirt), width=shape[2])
    del views
    seconds = time.perf_counter() - start
    session.tell(f"weighted back-projection: {seconds:.1f} s")
    volume = inputs.rescaled(volume, scale, series.source)
    return _finish(session, source, target, series, shape, volume, seconds, "wbp", ctf_info)


def run_sirt(source: StackSource, target: VolumeTarget, *, iterations: int = 20,
             relaxation: float = 1.0, positivity: bool = False,
             ctf: CtfSettings | None = None, dose: DoseSettings | None = None,
             session: Session | None = None) -> TomogramResult:
    """SIRT of a tilt series (row- and column-normalised, from zero).

    Parameters
    ----------
    source, target, ctf, dose, session: as :func:`run_wbp`.
    iterations: SIRT iterations (10-30 is usual).
    relaxation: step size, in (0, 2).
    positivity: clamp negative density to zero each iteration.

    Returns
    -------
    :class:`~taichi_etgs.pipeline.tomograms.TomogramResult`; ``info["final_residual"]``
    is the last residual in the images' units.
    """
    from ..classical import sirt as sirt_module

    session = session or Session()
    if not 0.0 < relaxation < 2.0:
        raise InputError(f"--relaxation must be in (0, 2), got {relaxation}")
    if int(iterations) < 1:
        raise InputError(f"--iterations must be at least 1, got {iterations}")
    series, shape = prepare("sirt", source, target, session)
    views, scale, ctf_info = _flipped_views(source, series, ctf, session, dose)
    session.start_compute()
    start = time.perf_counter()
    with session.progress(iterations, "SIRT") as bar:
        def progress(iteration: int, residual: float) -> None:
            bar.update(iteration, residual=f"{residual * scale:.4g}")
            log.debug("SIRT iteration %d: residual %.6g", iteration, residual * scale)

        result = sirt_module.sirt(views, series.tilts_deg, shape[0], iterations=iterations,
                                  relaxation=relaxation, positivity=positivity,
                                  width=shape[2], progress=progress)
    del views
    seconds = time.perf_counter() - start
    log.info("SIRT: %d iterations in %.1f s", iterations, seconds)
    residuals = [r * scale for r in result.residuals]
    if residuals and not np.isfinite(residuals[-1]):
        raise InputError("the SIRT residual became NaN or Inf: the input holds extreme "
                         "values; check it with `taichi-etgs info`", series.source)
    volume = inputs.rescaled(result.volume, scale, series.source)
    return _finish(session, source, target, series, shape, volume, seconds,
                   f"sirt {iterations} it", {"final_residual": residuals[-1], **ctf_info})
