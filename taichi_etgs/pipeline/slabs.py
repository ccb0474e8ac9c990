"""Y-slab decomposition: a tomogram reconstructed a band of rows along the tilt axis at a time.

Why it is exact for WBP and SIRT: the tilt axis is Y, so a view's row ``y`` is the
projection of the volume's row ``y`` alone (``v = y``, docs/conventions.md). The voxel
projector and its transpose loop over rows independently
(:mod:`taichi_etgs.kernels.voxel_projector`), WBP's ramp and radial filter act along
each row (along u), SIRT's ray and voxel normalisers and its updates are per row, so
reconstructing rows ``a:b`` from rows ``a:b`` of the views gives rows ``a:b`` of the
whole reconstruction, bit for bit. What couples rows is done before, on whole views, one
view at a time (the alignment, binning, each view's mean and the series' scale, the phase
flip and the exposure filter: 2D filters), into a :class:`~taichi_etgs.io.scratch.ScratchStack`
on disk; each slab reads its rows from there. Only the residual SIRT reports is a sum
over all rows: the slabs' squared residuals add up.

A :class:`SlabPlan` cuts ``ny`` rows into slabs of ``rows`` rows; with an ``overlap``
(for methods that are not exactly separable, such as a Gaussian model whose Gaussians
straddle a border) each slab also reconstructs ``overlap`` rows of its neighbours, and
the two are blended across the shared rows with weights that add up to 1
(:func:`stitch`). WBP and SIRT need no overlap.

:func:`reconstruct_rows` is a pure function of (the views' rows, the angles, the
settings), so that slabs can become tasks of a distributed scheduler: a run runs its
slabs through a :data:`SlabMap`, :func:`in_process` by default, or the Dask tasks of a
:class:`SlabRunner` (``--workers``, ``--scheduler``: docs/large.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import InputError

__all__ = ["GAUSSIAN_OVERLAP_ROWS", "ClassicalSettings", "RowsResult", "Slab", "SlabMap",
           "SlabPlan", "SlabRunner", "choose_rows", "check_rows", "in_process", "opened",
           "plan_slabs", "reconstruct_rows", "reconstruct_slabs", "stitch", "warn_whole"]

log = logging.getLogger("taichi_etgs.pipeline")

#: Rows a Gaussian slab shares with each neighbour (fitted by both, blended): several of
#: the model's typical Gaussian scales (1-3 voxels), so that a Gaussian on a border is
#: whole in both fits, and the CTF's spread along Y at usual defocus and binning
#: (a few pixels), which a slab's forward model cuts at its edges.
GAUSSIAN_OVERLAP_ROWS = 8


#: How a run computes its slabs: ``run(function, calls)`` calls ``function(*args)`` for each
#: ``args`` of ``calls`` (the slab's view rows first; ``calls`` is lazy, so that a slab's
#: rows are read only when it is due) and yields the results in the same order.
SlabMap = Callable[[Callable, Iterable[tuple]], Iterator]


def in_process(function: Callable, calls: Iterable[tuple]) -> Iterator:
    """The slabs one after the other in this process: one slab's rows in memory at a time."""
    for args in calls:
        yield function(*args)


class SlabRunner(Protocol):
    """Where a slabbed run computes its slabs instead of in this process (the Dask tasks
    of ``taichi_etgs.batch.slab_tasks.SlabTasks``: the pipeline does not import the
    distributed layer above it, the command hands it one)."""

    def open(self, n_slabs: int, session) -> contextlib.AbstractContextManager[SlabMap]:
        """The :data:`SlabMap` of a run of ``n_slabs`` slabs, for as long as it lasts."""


def opened(runner: SlabRunner | None, n_slabs: int,
           session) -> contextlib.AbstractContextManager[SlabMap]:
    """``runner``'s :data:`SlabMap` for ``n_slabs`` slabs, or :func:`in_process`."""
    if runner is None:
        return contextlib.nullcontext(in_process)
    return runner.open(n_slabs, session)


def warn_whole(runner: SlabRunner | None, session) -> None:
    """A run given a slab runner that is not in slabs: say why the workers stay idle
    rather than refuse it, since a tomogram too large for memory is cut into slabs
    (and spread) without ``--slab-rows``."""
    if runner is not None:
        session.warn("--workers/--scheduler spread the slabs of a run over Dask workers, "
                     "and this run is not in slabs: it runs whole, in this process (give "
                     "--slab-rows N to cut it into slabs of N rows)")


def check_rows(rows) -> int:
    """``--slab-rows``: a whole number of rows >= 1, else an InputError."""
    try:
        ok = not isinstance(rows, bool) and float(rows).is_integer() and rows >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"--slab-rows {rows}: expected a whole number of rows >= 1 (rows of "
                         f"the tomogram along Y, the tilt axis, reconstructed at a time)")
    return int(rows)


@dataclass(frozen=True)
class Slab:
    """One slab: rows ``first:end`` reconstructed, each weighted by ``weights`` when
    stitched (1 but in the rows shared with a neighbour)."""

    first: int
    end: int
    weights: np.ndarray = field(compare=False, repr=False)

    @property
    def rows(self) -> int:
        return self.end - self.first


@dataclass(frozen=True)
class SlabPlan:
    """How ``ny`` rows are cut: slabs of ``rows`` rows, each extended by ``overlap``
    rows into its neighbours."""

    ny: int
    rows: int
    overlap: int
    slabs: tuple[Slab, ...]


def plan_slabs(ny: int, rows: int, overlap: int = 0) -> SlabPlan:
    """Slabs of ``rows`` rows (the last one shorter; one slab when ``rows >= ny``), each
    extended by ``overlap`` rows on the sides it has a neighbour.

    Across a border at row ``b`` the rows ``b - overlap`` to ``b + overlap`` belong to
    both slabs; the lower one's weight falls linearly from about 1 to about 0 across
    them, the upper one's rises, and the two add up to 1 in every row.

    Raises InputError for rows < 1 (:func:`check_rows`), an overlap < 0, or one over half
    the rows (the shared bands of the two borders of a slab would meet).
    """
    rows, ny = check_rows(rows), int(ny)
    overlap = int(overlap)
    if overlap < 0 or (ny > rows and 2 * overlap > rows):
        raise InputError(f"a slab overlap of {overlap} rows does not fit slabs of {rows} "
                         f"rows: it must be between 0 and half the rows")
    borders = list(range(rows, ny, rows))
    slabs = []
    for k, first in enumerate([0, *borders]):
        end = min(ny, first + rows)
        lo = first - overlap if k > 0 else first
        hi = end + overlap if end < ny else end
        y = np.arange(lo, hi) + 0.5
        weights = np.ones(hi - lo)
        if overlap:
            if k > 0:  # rising across the border below
                weights = np.minimum(weights, (y - (first - overlap)) / (2 * overlap))
            if end < ny:  # falling across the border above
                weights = np.minimum(weights, ((end + overlap) - y) / (2 * overlap))
        slabs.append(Slab(lo, hi, weights))
    return SlabPlan(ny=ny, rows=rows, overlap=overlap, slabs=tuple(slabs))


def stitch(plan: SlabPlan, volumes: Iterable[np.ndarray],
           write_rows: Callable[[int, np.ndarray], None]) -> None:
    """Put the slabs' volumes (in the plan's order) together: rows that only one slab
    holds are written as they come; rows two slabs share are held until both have come
    and written as their weighted sum. Memory: one slab and one overlap band."""
    pending = None
    for k, (slab, volume) in enumerate(zip(plan.slabs, volumes, strict=True)):
        if volume.shape[1] != slab.rows:
            raise ValueError(f"slab {k} has {volume.shape[1]} rows, expected {slab.rows}")
        if plan.overlap:
            volume = volume * slab.weights[None, :, None].astype(volume.dtype)
        if pending is not None:
            volume[:, :pending.shape[1]] += pending
        nxt = plan.slabs[k + 1].first if k + 1 < len(plan.slabs) else slab.end
        write_rows(slab.first, volume[:, :nxt - slab.first])
        pending = volume[:, nxt - slab.first:] if nxt < slab.end else None


@dataclass(frozen=True)
class ClassicalSettings:
    """What WBP or SIRT computes besides the views and angles (the options of ``wbp``
    and ``sirt``).

    method: "wbp" or "sirt". thickness, width: the tomogram's NZ and NX.
    radial, fake_sirt: WBP's filter. iterations, relaxation, positivity: SIRT's.
    """

    method: str
    thickness: int
    width: int
    radial: tuple[float, float] = (0.35, 0.035)
    fake_sirt: int = 0
    iterations: int = 20
    relaxation: float = 1.0
    positivity: bool = False


@dataclass
class RowsResult:
    """The volume of some rows [nz, rows, nx]; SIRT's residual after each iteration."""

    volume: np.ndarray
    residuals: list[float] = field(default_factory=list)


def reconstruct_rows(views: np.ndarray, tilts_deg: np.ndarray, settings: ClassicalSettings,
                     progress: Callable[[int, float], None] | None = None) -> RowsResult:
    """WBP or SIRT of rows of the views (unit views, [n_tilts, rows, n_u]) into the same
    rows of the tomogram; all of them make the whole tomogram. A pure function (but for
    ``progress``, called after each SIRT iteration with the iteration and its residual).
    """
    from ..classical import sirt as sirt_module
    from ..classical.wbp import weighted_back_projection

    if settings.method == "wbp":
        volume = weighted_back_projection(views, tilts_deg, settings.thickness,
                                          radial=settings.radial,
                                          fake_sirt_iterations=settings.fake_sirt,
                                          width=settings.width)
        return RowsResult(volume)
    result = sirt_module.sirt(views, tilts_deg, settings.thickness,
                              iterations=settings.iterations, relaxation=settings.relaxation,
                              positivity=settings.positivity, width=settings.width,
                              progress=progress)
    return RowsResult(result.volume, result.residuals)


def reconstruct_slabs(read_rows: Callable[[int, int], np.ndarray], tilts_deg: np.ndarray,
                      settings: ClassicalSettings, plan: SlabPlan,
                      write_rows: Callable[[int, np.ndarray], None],
                      done: Callable[[int], None] | None = None,
                      run: SlabMap = in_process) -> list[float]:
    """Reconstruct the slabs (:func:`reconstruct_rows`, through ``run``) and stitch them
    in order (:func:`stitch`).

    read_rows(first, end): the unit views' rows. write_rows(first, volume): takes the
    stitched rows. done: called with the number of slabs done.

    Returns SIRT's residual after each iteration over the whole (the square root of the
    sum of the slabs' squared residuals; empty for WBP).
    """
    squares = np.zeros(settings.iterations if settings.method == "sirt" else 0)

    calls = ((read_rows(slab.first, slab.end), tilts_deg, settings) for slab in plan.slabs)

    def volumes() -> Iterator[np.ndarray]:
        nonlocal squares
        for k, (slab, result) in enumerate(zip(plan.slabs, run(reconstruct_rows, calls))):
            if result.residuals:
                squares = squares + np.square(result.residuals)
            log.debug("slab %d/%d: rows %d-%d", k + 1, len(plan.slabs), slab.first,
                      slab.end - 1)
            yield result.volume
            if done is not None:
                done(k + 1)

    stitch(plan, volumes(), write_rows)
    return [float(r) for r in np.sqrt(squares)]


def choose_rows(size, requested: int | None, session=None) -> int:
    """The slab rows of a WBP or SIRT run of ``size``
    (:class:`~taichi_etgs.resources.RunSize`): ``requested`` (checked; at most ``ny``),
    or, when None, 0 (the whole at once) if the whole fits in the memory available, else
    the most rows that fit (0 too when not even one row fits: the memory check then
    refuses the run with its advice)."""
    import os

    from ..resources import (
        SKIP_ENV,
        available_memory_bytes,
        estimate_memory_bytes,
        format_bytes,
    )

    if requested is not None:
        return min(check_rows(requested), size.ny)
    available = available_memory_bytes()
    whole = estimate_memory_bytes(size).total_bytes
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0") or available is None \
            or whole <= available:
        return 0

    def fits(rows: int) -> bool:
        smaller = dataclasses.replace(size, slab_rows=rows)
        return estimate_memory_bytes(smaller).total_bytes <= available

    if not fits(1):
        return 0
    lo, hi = 1, size.ny  # fits(lo); the whole (hi rows) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if session is not None:
        session.tell(f"the whole tomogram needs about {format_bytes(whole)} of memory, "
                     f"{format_bytes(available)} are available: reconstructing it in "
                     f"slabs of {lo} rows along Y (--slab-rows)")
    return lo
