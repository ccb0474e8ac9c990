"""Reading and checking a tilt series, and its views as the reconstructions take them.

:class:`StackSource` says which tilt series and how to read it (the options every
command that takes a STACK shares). :func:`peek` reads its header only (sizes for the
cheap checks); :func:`load` reads it with every check a user needs before a long run
(angles and alignment, radians, pixel size) and records it in the provenance.
:func:`views` and :func:`unit_views` turn the images into positive density, refusing
values that float32 arithmetic cannot hold; :func:`rescaled` brings a linear
reconstruction of unit views back to the images' units.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["AXIS_TOLERANCE_DEG", "StackHeader", "StackSource", "check_alignment",
           "index_ranges", "load", "peek", "pixel_size", "rescaled", "unit_views", "views"]

log = logging.getLogger("taichi_etgs.pipeline")

#: Largest angle (degrees) between an .mdoc's tilt axis and the image Y axis (or -Y) at
#: which a stack is reconstructed as it is.
AXIS_TOLERANCE_DEG = 5.0

_PATH_FIELDS = ("angles", "xf", "aln", "mdoc")
# Views of at least this many pixels (2k x 2k) report their outlier search's progress.
_LARGE_VIEW_PIXELS = 2048 * 2048


@dataclass
class StackSource:
    """A tilt series to reconstruct and how to read it.

    stack: the MRC stack (.mrc, .st, .ali), or a :class:`~taichi_etgs.io.TiltSeries`
        already in memory (:meth:`from_arrays`; the reading options then do not apply).
    angles: tilt angles (.tlt/.rawtlt/.mdoc/.aln); None: the stack's sibling file.
    xf: IMOD .xf transforms to apply on load.
    aln: AreTomo .aln (angles and kept views); ``apply_aln`` also applies its
        rotation and shifts.
    aligned: the stack is aligned although its .mdoc gives a tilt axis away from Y.
    mdoc: the SerialEM .mdoc of a raw stack, whose tilt axis angle is undone on load
        (:func:`check_alignment`); it gives the angles when nothing else does.
    exclude_views: views to leave out, 0-based ("0-2,40" or a list).
    binning: average-bin the images on load.
    pixel_size: pixel size in A before binning, instead of the files'.
    contrast: how density looks in the images: "dark" (raw cryo-EM) or "bright".
    erase_outliers: replace X-ray hits and hot pixels (a few pixels far brighter than
        their neighbours) by their neighbours' median before reconstructing
        (:func:`~taichi_etgs.preprocess.erase_outliers`).
    """

    stack: Any
    angles: str | PathLike | None = None
    xf: str | PathLike | None = None
    aln: str | PathLike | None = None
    apply_aln: bool = False
    aligned: bool = False
    mdoc: str | PathLike | None = None
    exclude_views: str | Sequence[int] | None = None
    binning: int = 1
    pixel_size: float | None = None
    contrast: str = "dark"
    erase_outliers: bool = True

    @classmethod
    def from_arrays(cls, images: np.ndarray, tilts_deg, pixel_size_A: float = 0.0,
                    contrast: str = "dark", name: str = "<array>",
                    erase_outliers: bool = True) -> StackSource:
        """A tilt series held in memory: images [n_tilts, ny, nx] and their tilts."""
        from ..io import TiltSeries

        images = np.asarray(images)
        if images.ndim != 3:
            raise InputError(f"expected images (n_tilts, ny, nx), got shape {images.shape}")
        tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
        if tilts.shape != (images.shape[0],):
            raise InputError(f"{tilts.size} tilt angles for {images.shape[0]} images")
        series = TiltSeries(data=np.ascontiguousarray(images, dtype=np.float32),
                            tilts_deg=tilts, pixel_size_A=float(pixel_size_A or 0.0),
                            source=name, kept_views=np.arange(images.shape[0]),
                            angles_source="", pixel_size_source="")
        return cls(series, contrast=contrast, erase_outliers=erase_outliers)

    @property
    def path(self) -> Path | None:
        """The stack file, or None for a series in memory."""
        return None if self.in_memory else Path(self.stack)

    @property
    def in_memory(self) -> bool:
        return not isinstance(self.stack, (str, PathLike))

    def to_dict(self) -> dict:
        """Plain values with absolute paths (what a state records of its input)."""
        if self.in_memory:
            raise ValueError("a tilt series in memory has no file to record")
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("stack", *_PATH_FIELDS):
            if out[name] is not None:
                out[name] = os.path.abspath(out[name])
        if out["exclude_views"] is not None and not isinstance(out["exclude_views"], str):
            out["exclude_views"] = [int(i) for i in out["exclude_views"]]
        return out

    @classmethod
    def from_dict(cls, values: dict) -> StackSource:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class StackHeader:
    """What the stack's header says, before anything is loaded: the raw sizes, and the
    views' sizes once aligned (swapped by a turn near 90 degrees) and binned."""

    def __init__(self, n_raw: int, ny: int, nx: int, dtype: np.dtype, pixel_A: float,
                 binning: int, aligned_yx: tuple[int, int] | None = None) -> None:
        self.n_raw, self.ny_raw, self.nx_raw = n_raw, ny, nx
        self.dtype, self.pixel_A, self.binning = dtype, pixel_A, binning
        ay, ax = aligned_yx or (ny, nx)
        self.ny, self.nx = ay // binning, ax // binning


def peek(source: StackSource) -> StackHeader:
    """The stack's sizes from its header (a memory map: nothing is read), binned.

    Raises the reader's InputError for a file that is not a readable stack, or an
    alignment file that cannot be read; the stack's warnings come again, once, when it
    is loaded.
    """
    from ..io import read_stack
    from ..io.binning import check_binning
    from ..io.transforms import aligned_shape

    if source.in_memory:
        data = source.stack.data
        n, ny, nx = data.shape
        return StackHeader(n, ny, nx, data.dtype, source.stack.pixel_size_A, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, pixel = read_stack(source.stack)
    n_raw, ny, nx = data.shape
    b = check_binning(source.binning, ny, nx)
    axis = _axis_plan(source).axis_deg
    aligned_yx = None if axis is None else aligned_shape((ny, nx), -axis)
    return StackHeader(n_raw, ny, nx, data.dtype, pixel, b, aligned_yx)


def same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a) == Path(b)


def _off_y(angle_deg: float) -> float:
    """Degrees between a direction at ``angle_deg`` from Y and the Y axis (or -Y)."""
    return abs((angle_deg + 90.0) % 180.0 - 90.0)


@dataclass(frozen=True)
class _AxisPlan:
    """What :func:`check_alignment` decides: the tilt axis to undo (None: none), what is
    applied (a note for the user) and why the stack looks unaligned ("" when it does not)."""

    axis_deg: float | None = None
    note: str = ""
    problem: str = ""


def _axis_plan(source: StackSource) -> _AxisPlan:
    from ..io import read_mdoc, read_xf
    from ..io.tilt_series import stack_mdoc
    from ..io.transforms import xf_rotation_deg

    if source.in_memory or source.aligned:
        return _AxisPlan()
    stack, angles, explicit = Path(source.stack), source.angles, source.mdoc is not None
    if not explicit and (source.aln is not None or stack.suffix.lower() == ".ali"):
        return _AxisPlan()  # an aligned stack (IMOD's .ali, or one AreTomo's .aln goes with)
    mdoc = Path(source.mdoc) if explicit else stack_mdoc(stack, angles)
    if mdoc is None:
        return _AxisPlan()
    try:
        axis = read_mdoc(mdoc)["tilt_axis_deg"]
    except InputError:
        if explicit or (angles is not None and same_file(mdoc, angles)):
            raise
        return _AxisPlan()  # a sibling .mdoc not used for the angles: nothing to learn from it
    if axis is None:
        if explicit:
            raise InputError("gives no tilt axis angle (RotationAngle or TiltAxisAngle in its "
                             "sections or header, or 'Tilt axis angle' in its [T = ...] "
                             "title)", mdoc)
        return _AxisPlan()
    if source.apply_aln:
        return _AxisPlan(note=f"the .aln's ROT turns the views; the tilt axis angle {axis:g} "
                              f"of {mdoc.name} is not applied besides" if explicit else "")
    xf = None if source.xf is None else Path(source.xf)
    # The rotation an .xf applies (IMOD's final .xf turns the views; a coarse .prexg only
    # shifts them). Its median: tiltalign solves a slightly different angle per view.
    turn = 0.0 if xf is None else float(np.median(xf_rotation_deg(read_xf(xf))))
    if abs(turn) > AXIS_TOLERANCE_DEG:
        left = _off_y(axis + turn)
        if left <= AXIS_TOLERANCE_DEG:
            return _AxisPlan(note=f"{xf.name} turns the views by {turn:.1f} degrees, which "
                                  f"brings the tilt axis of {mdoc.name} ({axis:g} degrees) to "
                                  f"Y" if explicit else "")
        return _AxisPlan(problem=f"{xf.name} turns the views by {turn:.1f} degrees, which "
                                 f"leaves the tilt axis of {mdoc.name} ({axis:g} degrees) "
                                 f"{left:.1f} degrees from Y; give the .xf that aligns this "
                                 f"stack, or --aligned if its tilt axis is along Y after it")
    if explicit or (xf is not None and _off_y(axis) > AXIS_TOLERANCE_DEG):
        if axis == 0:
            return _AxisPlan()
        after = f"after {xf.name}'s shifts " if xf is not None else ""
        shifts = "" if xf is not None else "; no shifts are corrected"
        return _AxisPlan(axis, f"turned the views by {-axis:g} degrees {after}(the tilt axis "
                               f"angle of {mdoc.name}) so that the tilt axis lies along "
                               f"Y{shifts}")
    off = _off_y(axis)
    if off <= AXIS_TOLERANCE_DEG:
        return _AxisPlan()
    return _AxisPlan(problem=(
        f"its SerialEM {mdoc.name} puts the tilt axis at {axis:g} degrees, {off:.1f} degrees "
        f"from the image Y axis: the stack looks unaligned and would reconstruct as a blur; "
        f"align it first and pass the alignment (IMOD: --xf {stack.stem}.xf; AreTomo: --aln "
        f"{stack.stem}.aln --apply-aln), or pass --mdoc {mdoc.name} to turn the views by its "
        f"tilt axis angle (shifts left as they are), or --aligned if the tilt axis is already "
        f"along Y"))


def check_alignment(source: StackSource, session, refuse: bool) -> float | None:
    """The tilt axis to undo on load (None: none), after telling what is applied.

    An alignment turns the views so that the tilt axis lies along Y: an ``.xf`` (IMOD's
    final one turns them), an ``.aln`` with ``apply_aln`` (its ROT), or the ``.mdoc``'s
    tilt axis angle: given as ``source.mdoc`` it is always undone (after an ``.xf`` that
    only shifts); the stack's sibling ``.mdoc`` is undone after an ``.xf`` that only
    shifts (a coarse ``.prexg``), and otherwise only checked. A stack whose tilt axis
    would stay away from Y (beyond ``AXIS_TOLERANCE_DEG``) is refused (``refuse``) or
    warned about; ``aligned`` skips every check.
    """
    plan = _axis_plan(source)
    stack = Path(source.stack) if not source.in_memory else None
    if plan.problem:
        if refuse:
            raise InputError(plan.problem, stack)
        session.warn(f"{stack}: {plan.problem}")
    if plan.note:
        session.tell(f"{stack}: {plan.note}")
    return plan.axis_deg


def load(source: StackSource, session, force: bool | None = None, allocate=None):
    """Load the tilt series, report its warnings, log what was read, record the input
    files; returns ``(series, warning messages)``.

    force: None only reports (``info``: an unaligned stack is warned about); False
        refuses angles that look like radians and an unaligned stack; True uses radians
        as degrees, with a warning.
    allocate: where the images go (:func:`~taichi_etgs.io.load_tilt_series`); not for a
        series in memory.
    """
    from ..io import load_tilt_series
    from ..io.angles import AngleWarning, looks_like_radians
    from ..io.tilt_series import _sibling_angle_file

    if source.in_memory:
        return source.stack, []
    angles, aln = source.angles, source.aln
    if angles is not None and aln is not None and not same_file(angles, aln):
        raise InputError(f"--angles {angles} and --aln {aln} both give tilt angles; pass "
                         f"only one: --aln alone uses the .aln's TILT column (AreTomo's "
                         f"refined angles and the views it kept), --angles alone uses that "
                         f"file's angles without the .aln")
    axis = check_alignment(source, session, refuse=force is not None)
    if angles is None and aln is None and source.mdoc is not None \
            and _sibling_angle_file(Path(source.stack)) is None:
        angles = source.mdoc  # a raw stack's angles: those the .mdoc records
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = load_tilt_series(source.stack, angles, xf_path=source.xf, aln_path=aln,
                                  apply_aln=source.apply_aln,
                                  exclude_views=source.exclude_views, binning=source.binning,
                                  axis_deg=axis, allocate=allocate)
    if force is False and looks_like_radians(series.tilts_deg):
        session.relay([w for w in caught if not (issubclass(w.category, AngleWarning)
                                                 and "radians" in str(w.message))])
        largest = float(np.max(np.abs(series.tilts_deg)))
        raise InputError(f"the tilt angles look like radians (the largest |angle| is "
                         f"{largest:.3g}, but degrees are expected); give them in degrees "
                         f"(radians x 57.2958), or pass --force to use them as degrees",
                         series.angles_source or None)
    messages = session.relay(caught)
    binning = source.binning
    if source.pixel_size is not None:
        given = series.pixel_size_A / binning
        wanted = float(source.pixel_size)
        if series.pixel_size_A > 0 and abs(given - wanted) > 1e-3 * wanted:
            # Asked for: a note, not a warning.
            session.tell(f"{series.source}: the {series.pixel_size_source or 'file'} says "
                         f"{given:g} A per pixel; using --pixel-size {wanted:g}")
        series.pixel_size_A = wanted * binning
        series.pixel_size_source = "--pixel-size"
    n, ny, nx = series.data.shape
    tilts = np.asarray(series.tilts_deg)
    log.info("read %s in %.1f s: %d views of %d x %d pixels (X x Y, binning %d), pixel size "
             "%s, tilts %.2f to %.2f deg from %s, views kept %s", series.source,
             time.perf_counter() - start, n, nx, ny, binning,
             f"{series.pixel_size_A:g} A" if series.pixel_size_A > 0 else "unknown",
             float(tilts.min()), float(tilts.max()), series.angles_source or "-",
             index_ranges(series.kept_views))
    session.add_input("stack", source.stack)
    for role, path in (("angles", series.angles_source or angles), ("xf", source.xf),
                       ("aln", aln), ("mdoc", source.mdoc)):
        if path:
            session.add_input(role, path)
    return series, messages


def pixel_size(series) -> float:
    """The series' pixel size in A; 1.0 when the files give none (``info`` says so)."""
    return series.pixel_size_A if series.pixel_size_A > 0 else 1.0


def views(series, source: StackSource, session=None, out=None) -> np.ndarray:
    """Positive-density views (:func:`~taichi_etgs.preprocess.density_views`) in
    ``source``'s contrast, refused when values overflow float32 once each view's mean is
    removed, or hold no signal; with ``source.erase_outliers`` their X-ray hits and hot
    pixels replaced (:func:`~taichi_etgs.preprocess.erase_outliers`; ``session`` says
    how many).

    out: where they go (``series.data`` itself: in place; default a new array). Every
    step reads one view at a time, so ``out`` may be a file
    (:class:`~taichi_etgs.io.scratch.ScratchStack`).
    """
    from ..preprocess import density_views

    def largest() -> float:
        return max(float(np.abs(v).max()) for v in series.data)

    # In place, the images are gone once the views are made: their largest value first.
    largest_value = largest() if out is series.data else None
    with np.errstate(over="ignore", invalid="ignore"):  # checked right below
        out = density_views(series.data, source.contrast, out)
    if not all(np.isfinite(v).all() for v in out):
        if largest_value is None:
            largest_value = largest()
        raise InputError(f"pixel values up to {largest_value:.3g} overflow "
                         "32-bit floats once each view's mean is removed; rescale the stack "
                         "(e.g. IMOD's newstack -scale)", series.source)
    if not any(v.any() for v in out):
        _refuse_no_signal(series)
    if source.erase_outliers:
        _erase_outliers(out, series, session)
    return out


def _erase_outliers(views, series, session) -> None:
    """:func:`~taichi_etgs.preprocess.erase_outliers` on each view (in place, its mean
    removed again), and a note of what was replaced (``session``'s, or the log's)."""
    from ..preprocess import erase_outliers

    counts = []
    # About 0.7 s a view at 4k x 4k (a minute for a series), a few seconds in all at 1k:
    # progress only for the large.
    report = (session.progress(len(views), "outlier pixels", unit="view")
              if session is not None and np.prod(views.shape[1:]) >= _LARGE_VIEW_PIXELS
              else contextlib.nullcontext())
    with report as bar:
        for t in range(len(views)):
            view = np.asarray(views[t], dtype=np.float32)
            counts.append(erase_outliers(view))
            if counts[-1]:
                view -= view.mean(dtype=np.float64)
                views[t] = view
            if bar is not None:
                bar.update(t + 1)
    total = sum(counts)
    if total:
        worst = int(np.argmax(counts))
        section = int(np.asarray(series.kept_views)[worst])
        tell = session.tell if session is not None else log.info
        tell(f"{series.source}: replaced {total} outlier pixel{'s' if total > 1 else ''} "
             f"(X-ray hits, hot pixels) by "
             f"their neighbours' median in {np.count_nonzero(counts)} of {len(counts)} "
             f"views (at most {counts[worst]}, in section {section}); --keep-outliers "
             f"keeps them")


def _refuse_no_signal(series) -> None:
    from ..io.tilt_series import _only_denormals

    if _only_denormals(series.data, list(range(series.n_tilts))):
        # Taichi sets the CPU to flush denormals to zero: they would reconstruct as zero.
        raise InputError("holds only denormal values (magnitudes below 1.2e-38, which compute "
                         "as zero); rescale the stack (e.g. IMOD's newstack -scale)",
                         series.source)
    raise InputError("contains no signal: every view is constant", series.source)


def unit_views(series, source: StackSource, session=None, out=None) -> tuple[np.ndarray, float]:
    """Positive-density views divided by their root mean square, and that factor.

    Working at unit scale keeps float32 arithmetic away from overflow (values near 1e30)
    and from underflow (values down to float32's smallest normal numbers, 1e-38); the
    linear reconstructions are scaled back afterwards (:func:`rescaled`). ``out``: as
    :func:`views`.
    """
    out = views(series, source, session, out)
    sum_sq = sum(float(np.square(v, dtype=np.float64).sum()) for v in out)
    scale = float(np.sqrt(sum_sq / max(int(np.prod(out.shape)), 1)))
    if not (np.isfinite(scale) and scale > 0):
        _refuse_no_signal(series)
    for t in range(out.shape[0]):
        out[t] = out[t].astype(np.float64) / scale
    return out, scale


def rescaled(volume: np.ndarray, scale: float, source) -> np.ndarray:
    """``volume * scale`` in float32, in place (no extra copy of a large volume), refused
    if anything is not finite."""
    from .tomograms import check_finite

    volume = np.asarray(volume, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # checked right below
        volume *= np.float32(scale)
    check_finite(volume, source)
    return volume


def raw_angles(series, n_raw: int) -> np.ndarray | None:
    """The angles of every section of the raw stack where the angle file gives them (the
    excluded views were exposed too), else None."""
    from ..io.angles import read_tilt_angles

    if len(series.kept_views) == n_raw:
        return np.asarray(series.tilts_deg, dtype=np.float64)
    path = Path(series.angles_source) if series.angles_source else None
    if path is None or not path.is_file() or path.suffix.lower() == ".aln":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            angles = read_tilt_angles(path)
    except (InputError, ValueError):
        return None
    return angles if angles.size == n_raw else None


def index_ranges(indices) -> str:
    """0,1,2,5 -> '0-2,5'."""
    indices = [int(i) for i in indices]
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)
