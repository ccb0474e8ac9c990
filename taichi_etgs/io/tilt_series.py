"""A tilt series ready for reconstruction: images, angles, pixel size; and its summary."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .aln import AlnAlignment, read_aln, resolve_aln_sections
from .angles import AngleWarning, check_tilt_angles, read_mdoc, read_tilt_angles
from .binning import bin_image, check_binning
from .mrc import StackWarning, read_stack, release_pages
from .transforms import aligned_shape, aln_to_xf, apply_xf_image, compose_xf, read_xf, rotation_xf
from .views import check_view_indices, parse_view_list

__all__ = ["SIBLING_ANGLE_SUFFIXES", "TiltSeries", "load_tilt_series", "stack_mdoc",
           "stack_summary", "tilt_order"]

#: Angle files looked for next to the stack, in this order, when none is given:
#: ``<stem>.tlt`` (IMOD refined angles), ``<stem>.rawtlt``, ``<stem>.mdoc`` and
#: ``<name>.mdoc`` (SerialEM names it after the whole stack file: ``TS_01.mrc.mdoc``).
SIBLING_ANGLE_SUFFIXES = (".tlt", ".rawtlt", ".mdoc")
# Tolerance on the X/Y ratio of an .aln's RawSize to the stack size when deciding that
# the stack is a binned copy of the one AreTomo aligned (remainder cropping shifts it).
_BINNED_RATIO_TOL = 0.02


@dataclass
class TiltSeries:
    """A tilt series as the reconstructions consume it.

    Attributes
    ----------
    data
        The images, float32, C-contiguous, in the file's polarity (no contrast
        inversion here). [n_tilts, ny, nx]
    tilts_deg
        Tilt angle of each image, degrees, in stack order (not necessarily sorted). [n_tilts]
    pixel_size_A
        Pixel size in Angstrom after binning; 0.0 when the files do not give one.
    source
        The stack file.
    kept_views
        0-based index of each image in the raw stack. [n_tilts]
    angles_source
        Where the angles came from (a file path).
    pixel_size_source
        Where the pixel size came from: ``"header"`` (the stack's), ``"mdoc <path>"``,
        or ``""`` when unknown (callers that set it otherwise say so here).
    """

    data: np.ndarray
    tilts_deg: np.ndarray
    pixel_size_A: float
    source: str
    kept_views: np.ndarray
    angles_source: str = ""
    pixel_size_source: str = ""

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"data must be (n_tilts, ny, nx), got shape {self.data.shape}")
        n = self.data.shape[0]
        if np.shape(self.tilts_deg) != (n,) or np.shape(self.kept_views) != (n,):
            raise ValueError(f"tilts_deg and kept_views need {n} entries, got "
                             f"{np.shape(self.tilts_deg)} and {np.shape(self.kept_views)}")

    @property
    def n_tilts(self) -> int:
        return int(self.data.shape[0])


def _sibling_angle_file(stack: Path) -> Path | None:
    candidates = [stack.with_suffix(s) for s in SIBLING_ANGLE_SUFFIXES]
    candidates.append(stack.with_name(stack.name + ".mdoc"))
    return next((c for c in candidates if c.is_file()), None)


def stack_mdoc(stack: str | PathLike, angles_source: str | PathLike | None = None
               ) -> Path | None:
    """The SerialEM ``.mdoc`` of a stack: the angles file if it is one, else
    ``<stem>.mdoc`` or ``<name>.mdoc`` next to the stack; None when there is none."""
    if angles_source and Path(angles_source).suffix.lower() == ".mdoc":
        return Path(angles_source)
    stack = Path(stack)
    candidates = (stack.with_suffix(".mdoc"), stack.with_name(stack.name + ".mdoc"))
    return next((c for c in candidates if c.is_file()), None)


def _aln_sections(aln: AlnAlignment, n_raw: int, ny: int, nx: int,
                  stack: Path) -> tuple[np.ndarray, float]:
    """Raw-stack section of each .aln row, and the factor that scales its shifts."""
    scale = 1.0
    if aln.raw_size is not None:
        rx, ry, rz = aln.raw_size
        if rz != n_raw:
            raise InputError(f"RawSize says {rz} sections but the stack {stack} has {n_raw}",
                             aln.path)
        if (rx, ry) != (nx, ny):
            bx, by = rx / nx, ry / ny
            if abs(bx - by) > _BINNED_RATIO_TOL * max(bx, by):
                raise InputError(f"RawSize {rx} x {ry} does not match the {nx} x {ny} images of "
                                 f"{stack}, nor a binned copy of them", aln.path)
            scale = nx / rx
    sections = resolve_aln_sections(aln.sec_column, aln.dark_sections, n_raw, aln.path,
                                    aln.lines)
    return sections, scale


def _excluded_views(exclude_views: str | Sequence[int] | None, n_raw: int) -> set[int]:
    if exclude_views is None:
        return set()
    if isinstance(exclude_views, str):
        return set(parse_view_list(exclude_views, n_raw))
    return set(check_view_indices(exclude_views, n_raw, what="excluded views"))


def load_tilt_series(
    stack_path: str | PathLike,
    angles_path: str | PathLike | None = None,
    *,
    xf_path: str | PathLike | None = None,
    aln_path: str | PathLike | None = None,
    apply_aln: bool = False,
    exclude_views: str | Sequence[int] | None = None,
    binning: int = 1,
    axis_deg: float | None = None,
    allocate: Callable[[tuple[int, int, int]], Any] | None = None,
) -> TiltSeries:
    """Read a tilt stack with its angles, optionally align, exclude views and bin.

    Parameters
    ----------
    stack_path
        MRC tilt stack, ``(n, ny, nx)``, any MRC mode we read.
    angles_path
        Tilt angles (``.tlt``, ``.rawtlt``, ``.mdoc``, ``.aln`` or one per line), one
        per raw-stack section (an ``.aln`` gives angles only for the views it keeps).
        When None: the ``TILT`` column of ``aln_path`` if given; otherwise the first
        of ``<stem>.tlt``, ``<stem>.rawtlt``, ``<stem>.mdoc``, ``<name>.mdoc`` that
        exists next to the stack.
    xf_path
        IMOD ``.xf`` transforms to apply, one line per raw-stack section.
    aln_path
        AreTomo ``.aln``. Only the sections it lists are kept (AreTomo drops dark
        frames and lists them as ``DarkFrame``), whether or not it is applied.
    apply_aln
        Apply the ``.aln`` rotation and shifts (see
        :func:`~taichi_etgs.io.transforms.aln_to_xf`). Not together with ``xf_path``.
    exclude_views
        Views to leave out, **0-based** indices into the raw stack: a string such as
        ``"0, 1, 38-40"`` (see :func:`~taichi_etgs.io.views.parse_view_list`) or a
        sequence of ints.
    binning
        Average-bin factor in X and Y, applied after the transforms.
    axis_deg
        The raw views' tilt-axis angle from Y (a SerialEM ``.mdoc``'s, IMOD's convention):
        after the ``.xf`` (or alone), every view is turned by ``-axis_deg`` about its
        centre, so that the axis lies along Y. With the axis nearer X than Y the aligned
        views are ``nx x ny`` (the long side stays the long side, as in etomo). Not with
        ``apply_aln`` (the ``.aln``'s ROT turns the views).
    allocate
        Makes the array the images go into from its shape (n_tilts, ny, nx); it takes
        ``out[j] = image``. Default: a numpy array. Slabbed runs pass a file on disk
        (:class:`~taichi_etgs.io.scratch.ScratchStack`), so that the stack is never
        whole in memory.

    Returns
    -------
    TiltSeries
        float32 images in stack order with their angles and raw-stack indices; the
        pixel size is the header's times ``binning`` (0.0 when unknown, unless an
        ``.mdoc`` used for the angles gives ``PixelSpacing``).

    Raises
    ------
    InputError
        Any unreadable input (see the readers), no tilt angles found, angle or
        transform counts that do not match the stack, NaN/Inf pixels (section named),
        a stack with no signal (every section constant), or fewer than 2 views left.

    Warns
    -----
    StackWarning
        Some (not all) sections are constant, e.g. blank frames worth excluding.
    AngleWarning
        Duplicated tilt angles among the kept views; angles that look like radians.

    Notes
    -----
    The order is: read, exclude views, transform (``.xf`` or ``.aln``), bin, check.
    The stack is streamed one section at a time: memory holds the output plus one
    image. Raw polarity is kept (no contrast inversion).
    """
    stack = Path(stack_path)
    data, pixel_size = read_stack(stack)
    n_raw, ny, nx = data.shape
    b = check_binning(binning, ny, nx)
    if xf_path is not None and apply_aln:
        raise InputError("give either an .xf file or an .aln to apply, not both")
    if axis_deg is not None and apply_aln:
        raise InputError("the .aln's ROT turns the views: an .mdoc's tilt axis is not "
                         "applied with it")

    aln = read_aln(aln_path) if aln_path is not None else None
    aln_sections = aln_scale = None
    if aln is not None:
        aln_sections, aln_scale = _aln_sections(aln, n_raw, ny, nx, stack)

    pixel_source = "header" if pixel_size > 0 else ""
    raw_angles = np.full(n_raw, np.nan)
    angles_file = Path(angles_path) if angles_path is not None else None
    if angles_file is None and aln is None:
        angles_file = _sibling_angle_file(stack)
        if angles_file is None:
            raise InputError(f"no tilt angles: pass --angles (no {stack.stem}.tlt, .rawtlt or "
                             f".mdoc next to the stack)", stack)
    angle_aln = angle_sections = angle_scale = None
    if angles_file is not None and angles_file.suffix.lower() == ".aln":
        angle_aln = read_aln(angles_file)
        angle_sections, angle_scale = _aln_sections(angle_aln, n_raw, ny, nx, stack)
    elif angles_file is None:
        angle_aln, angle_sections, angle_scale = aln, aln_sections, aln_scale
    if angle_aln is not None:
        check_tilt_angles(angle_aln.tilt_deg, angle_aln.path, angle_aln.lines)
        raw_angles[angle_sections] = angle_aln.tilt_deg
        angles_source = angle_aln.path
    else:
        raw_angles[:] = read_tilt_angles(angles_file, n_expected=n_raw)
        angles_source = str(angles_file)
        if angles_file.suffix.lower() == ".mdoc" and pixel_size <= 0:
            pixel_size = float(read_mdoc(angles_file)["pixel_spacing_A"] or 0.0)
            pixel_source = f"mdoc {angles_file}" if pixel_size > 0 else ""

    excluded = _excluded_views(exclude_views, n_raw)
    usable = np.isfinite(raw_angles)
    if aln_sections is not None:
        listed = np.zeros(n_raw, dtype=bool)
        listed[aln_sections] = True
        usable &= listed
    kept = [i for i in range(n_raw) if usable[i] and i not in excluded]
    if len(kept) < 2:
        raise InputError(f"only {len(kept)} view(s) left after excluding views; a "
                         f"reconstruction needs at least 2", stack)

    transforms: dict[int, np.ndarray] = {}
    if xf_path is not None:
        xf = read_xf(xf_path, n_expected=n_raw)
        transforms = {i: xf[i] for i in kept}
    elif apply_aln:
        source_aln = aln if aln is not None else angle_aln
        if source_aln is None:
            raise InputError("--apply-aln needs AreTomo's .aln file: give it with --aln")
        sections = aln_sections if aln is not None else angle_sections
        scale = aln_scale if aln is not None else angle_scale
        per_row = aln_to_xf(source_aln, shift_scale=scale)
        transforms = {int(s): m for s, m in zip(sections, per_row)}
    out_yx = (ny, nx)
    if axis_deg is not None:
        turn = rotation_xf(-axis_deg)
        transforms = {i: compose_xf(transforms[i], turn) if i in transforms else turn
                      for i in kept}
        out_yx = aligned_shape((ny, nx), -axis_deg)

    shape = (len(kept), out_yx[0] // b, out_yx[1] // b)
    out = np.empty(shape, dtype=np.float32) if allocate is None else allocate(shape)
    constant: list[int] = []
    for j, i in enumerate(kept):
        image = np.array(data[i], dtype=np.float32)
        if not np.isfinite(image).all():
            raise InputError(f"section {i} contains NaN or Inf pixels", stack)
        if image.min() == image.max():
            constant.append(i)
        release_pages(data)  # memory holds one section of the file, not all read so far
        if i in transforms:
            image = apply_xf_image(image, transforms[i], output_shape=out_yx)
        out[j] = bin_image(image, b)
    if len(constant) == len(kept):
        if _only_denormals(data, kept):
            raise InputError("holds only denormal values (magnitudes below 1.2e-38, which "
                             "compute as zero); rescale the stack (e.g. IMOD's newstack "
                             "-scale)", stack)
        raise InputError("contains no signal: every section is constant", stack)
    if constant:
        warnings.warn(f"{stack}: section(s) {', '.join(map(str, constant))} are constant "
                      f"(blank images?); consider excluding them", StackWarning, stacklevel=2)

    tilts = raw_angles[kept]
    values, counts = np.unique(tilts, return_counts=True)
    if (counts > 1).any():
        repeated = ", ".join(f"{v:g}" for v in values[counts > 1])
        warnings.warn(f"{angles_source}: tilt angle(s) {repeated} appear more than once",
                      AngleWarning, stacklevel=2)

    return TiltSeries(data=out, tilts_deg=tilts, pixel_size_A=float(pixel_size) * b,
                      source=str(stack), kept_views=np.array(kept, dtype=np.int64),
                      angles_source=angles_source, pixel_size_source=pixel_source)


def _only_denormals(data: np.ndarray, kept: list[int]) -> bool:
    """True when the kept float sections hold denormal numbers (and zeros) only.

    Told from the bit patterns: once Taichi runs, the CPU flushes denormals to zero in
    every float operation, so they look like an all-zero stack.
    """
    if data.dtype.kind != "f" or data.dtype.itemsize not in (2, 4):
        return False
    as_int = np.dtype(data.dtype.str.replace("f", "u"))  # same size and byte order
    exponent = 0x7C00 if data.dtype.itemsize == 2 else 0x7F800000
    found = False
    for i in kept:
        bits = np.ascontiguousarray(data[i]).view(as_int)  # integers: no float arithmetic
        if (bits & exponent).any():
            return False  # a normal (or Inf/NaN) number
        found = found or bool((bits << 1).any())  # non-zero mantissa (sign bit dropped)
    return found


def _streamed_stats(data: np.ndarray) -> tuple[float, float, float, float]:
    """min, max, mean, std over a stack, one image at a time in float64 (Chan et al.)."""
    count, mean, m2 = 0, 0.0, 0.0
    lo, hi = np.inf, -np.inf
    for image in data:
        x = np.asarray(image, dtype=np.float64)
        n_k = x.size
        mean_k = float(x.mean())
        m2_k = float(((x - mean_k) ** 2).sum())
        delta = mean_k - mean
        total = count + n_k
        mean += delta * n_k / total
        m2 += m2_k + delta * delta * count * n_k / total
        count = total
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    std = (m2 / count) ** 0.5 if count else 0.0
    return lo, hi, mean, std


def tilt_order(tilts_deg) -> str:
    """How the angles run in stack order: "ascending", "descending" (either "with repeated
    angles"), or "acquisition order" (not sorted: dose-symmetric, say; fine)."""
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if tilts.size < 3:
        return "-"
    steps = np.diff(tilts)
    repeated = " (with repeated angles)" if (steps == 0).any() else ""
    if (steps >= 0).all():
        return "ascending" + repeated
    if (steps <= 0).all():
        return "descending" + repeated
    return "acquisition order, not sorted (dose-symmetric?): fine for reconstruction"


def stack_summary(series: TiltSeries) -> dict:
    """Numbers and warnings that ``taichi-etgs info`` reports about a tilt series.

    Parameters
    ----------
    series
        From :func:`load_tilt_series`.

    Returns
    -------
    dict
        ``source``, ``angles_source``, ``n_tilts``, ``ny``, ``nx``, ``pixel_size_A``
        (0.0 = unknown), ``min``, ``max``, ``mean``, ``std`` (of the pixel values,
        computed one image at a time), ``tilt_min_deg``, ``tilt_max_deg``,
        ``mean_step_deg`` (range / (n - 1)), ``missing_wedge_deg`` (180 - range),
        ``kept_views`` (list of raw-stack indices), ``tilt_order`` (:func:`tilt_order`)
        and ``warnings``: a list of one-line notes of what looks wrong (duplicated
        angles, radians suspected, steps varying by more than 50 %, tilts not bracketing
        0, unknown pixel size). An acquisition order that is not sorted
        (dose-symmetric) is no warning: it is fine.
    """
    tilts = np.asarray(series.tilts_deg, dtype=np.float64)
    lo, hi, mean, std = _streamed_stats(series.data)
    n = len(tilts)
    t_min, t_max = float(tilts.min()), float(tilts.max())
    notes: list[str] = []
    values, counts = np.unique(tilts, return_counts=True)
    if (counts > 1).any():
        notes.append("duplicated tilt angles: "
                     + ", ".join(f"{v:g}" for v in values[counts > 1]))
    largest = float(np.abs(tilts).max())
    if 0.0 < largest < 2.0:
        notes.append(f"the largest |tilt angle| is {largest:.3g}: the angles look like "
                     f"radians, but degrees are expected")
    sorted_steps = np.diff(np.sort(tilts))
    sorted_steps = sorted_steps[sorted_steps > 0]
    if sorted_steps.size >= 2:
        median = float(np.median(sorted_steps))
        if (np.abs(sorted_steps - median) > 0.5 * median).any():
            notes.append(f"tilt steps vary from {sorted_steps.min():.2f} to "
                         f"{sorted_steps.max():.2f} degrees (more than 50% around the "
                         f"median step {median:.2f})")
    if t_min > 0 or t_max < 0:
        notes.append(f"the tilts ({t_min:g} to {t_max:g} degrees) do not bracket 0")
    if series.pixel_size_A <= 0:
        notes.append("pixel size unknown (the header gives none); 1.0 A is assumed: give "
                     "it with --pixel-size")
    return {
        "source": series.source,
        "angles_source": series.angles_source,
        "tilt_order": tilt_order(tilts),
        "n_tilts": int(series.data.shape[0]),
        "ny": int(series.data.shape[1]),
        "nx": int(series.data.shape[2]),
        "pixel_size_A": float(series.pixel_size_A),
        "min": lo,
        "max": hi,
        "mean": mean,
        "std": std,
        "tilt_min_deg": t_min,
        "tilt_max_deg": t_max,
        "mean_step_deg": (t_max - t_min) / (n - 1) if n > 1 else 0.0,
        "missing_wedge_deg": 180.0 - (t_max - t_min),
        "kept_views": [int(v) for v in series.kept_views],
        "warnings": notes,
    }
