"""The Gaussian reconstruction in slabs along Y (``reconstruct --slab-rows N``).

The tilt axis is Y, so the rows ``a:b`` of the views are the projections of the rows
``a:b`` of the specimen alone: a slab of rows can be fitted as its own
:class:`~taichi_etgs.gaussian.fit.GaussianReconstruction` from those view rows. Unlike
WBP and SIRT, a Gaussian model is not separable row by row: a Gaussian straddling a
border is only partly seen by each slab. Each slab therefore also fits
:data:`~taichi_etgs.pipeline.slabs.GAUSSIAN_OVERLAP_ROWS` rows of each neighbour, and
the two fits are blended across the shared rows with weights that fall to zero at each
fit's edge (:func:`~taichi_etgs.pipeline.slabs.stitch`), where a fit is least
constrained.

Each slab gets the share of the Gaussian budget of its rows (the slabs together hold
about as many Gaussians as the whole would) and the run's own seed: the slabs fit
disjoint data, so their random choices need not differ, and one slab covering every row
is then exactly the unslabbed run.

The tomogram is written relative to its mean, as every tomogram (docs/conventions.md);
the mean is only known once every slab is fitted, so the stitched rows wait in a
temporary file beside the output and are written from there.

:func:`fit_rows` is a pure function of (the views' rows, the angles, the settings), so
that slabs can become tasks of a distributed scheduler (``--workers``, ``--scheduler``:
:data:`~taichi_etgs.pipeline.slabs.SlabMap`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..io.scratch import ScratchStack
from . import inputs, sizes, slabs
from .classical import _scratch_folder
from .inputs import StackSource
from .session import Session
from .slabs import GAUSSIAN_OVERLAP_ROWS, SlabPlan
from .tomograms import TomogramWriter, VolumeTarget, mrc_origin

__all__ = ["SlabFit", "fit_rows", "gaussian_plan", "reconstruct_gaussian_slabs",
           "run_slabbed", "slab_config", "slab_rows_of"]

log = logging.getLogger("taichi_etgs.pipeline")


def _not_with_slabs(settings) -> list[tuple[str, str]]:
    """The options given that slabs do not support yet, with why."""
    refine = settings.refine_alignment or getattr(settings.config, "refine_alignment", False)
    given = [
        (settings.halves, "--halves", "each half would need its own slabs and the half-map "
                                      "FSC the stitched halves"),
        (settings.resume is not None, "--resume", "a slabbed run saves no state"),
        (refine, "--refine-alignment", "the views' shifts must be refined on whole views, "
                                       "not per slab"),
        (settings.init_path is not None, "--init FILE", "a seed tomogram or model would "
                                                         "have to be cut into slabs"),
        (settings.voxel_size is not None, "--voxel-size", "the written rows would not be "
                                                          "the fitted rows"),
    ]
    return [(name, why) for present, name, why in given if present]


def slab_rows_of(source: StackSource, target: VolumeTarget, settings,
                 session: Session) -> int:
    """The rows of a slabbed run (0: the whole at once): ``settings.slab_rows``, or when
    None, slabs only when the whole does not fit in the memory available
    (:func:`~taichi_etgs.pipeline.slabs.choose_rows`) and no option given needs the
    whole. Raises InputError for ``slab_rows`` with an option slabs do not support."""
    refused = _not_with_slabs(settings)
    if settings.slab_rows is not None and refused:
        name, why = refused[0]
        raise InputError(f"--slab-rows cannot be combined with {name} yet ({why}); drop one "
                         f"of the two")
    if refused:
        return 0
    header = inputs.peek(source)
    shape = sizes.volume_shape(header.ny, header.nx, target.thickness, target.width,
                               source.path)
    return slabs.choose_rows(_size(settings, header.n_raw, header.ny, header.nx, shape,
                                   source.binning, in_memory=target.path is None),
                             settings.slab_rows, session)


def _size(settings, n_tilts: int, ny: int, nx: int, shape, binning: int, **extra):
    """The :class:`~taichi_etgs.resources.RunSize` of a reconstruct run."""
    default = settings.config or settings
    iterations = settings.iterations or getattr(settings.config, "iterations", 600)
    init = settings.config.init if settings.config is not None else str(settings.init)
    return sizes.run_size("reconstruct", n_tilts, ny, nx, shape, binning,
                          max_gaussians=default.max_gaussians,
                          views_per_step=default.views_per_step, init=init,
                          iterations=int(iterations), **extra)


def gaussian_plan(ny: int, rows: int) -> SlabPlan:
    """Slabs of ``rows`` rows sharing :data:`GAUSSIAN_OVERLAP_ROWS` rows with each
    neighbour (fewer for slabs under twice that: at most half a slab)."""
    overlap = 0 if rows >= ny else min(GAUSSIAN_OVERLAP_ROWS, rows // 2)
    return slabs.plan_slabs(ny, rows, overlap)


def slab_config(config, rows: int, ny: int):
    """``config`` for a slab of ``rows`` of ``ny`` rows: the Gaussian budget (and the
    seed model's size, when set) in proportion, so that the slabs together are as
    detailed as the whole."""
    def share(n: int) -> int:
        return max(1, math.ceil(n * rows / ny))

    return dataclasses.replace(config, max_gaussians=share(config.max_gaussians),
                               init_gaussians=None if config.init_gaussians is None
                               else share(config.init_gaussians))


@dataclass
class SlabFit:
    """A slab's model voxelised on its rows (positive density in the views' units,
    [nz, rows, nx], the ice slab included) and what its sidecar entry records."""

    volume: np.ndarray
    report: dict = field(default_factory=dict)


def fit_rows(views: np.ndarray, tilts_deg: np.ndarray, thickness: int, width: int,
             config) -> SlabFit:
    """Fit a Gaussian model to rows of the views (positive density, [n_tilts, rows, n_u])
    and voxelise it on the same rows of a tomogram ``thickness`` x ``width``. A pure
    function: the same arguments give the same volume."""
    from ..gaussian.fit import GaussianReconstruction

    run = GaussianReconstruction(views, tilts_deg, thickness, config, width=width)
    run.run()
    return SlabFit(run.tomogram(), {"n_gaussians": int(run.params.n),
                                    "iterations": int(run.iteration),
                                    "final_loss": run.losses[-1] if run.losses else None,
                                    "validation": run.validation_report()})


def reconstruct_gaussian_slabs(read_rows: Callable[[int, int], np.ndarray],
                               tilts_deg: np.ndarray, shape_zyx, config, plan: SlabPlan,
                               write_rows: Callable[[int, np.ndarray], None],
                               done: Callable[[int], None] | None = None,
                               run: slabs.SlabMap = slabs.in_process) -> list[dict]:
    """Fit the slabs (:func:`fit_rows`, through ``run``) and stitch them in order.

    read_rows(first, end): the views' rows. write_rows(first, volume): takes the stitched
    rows. done: called with the number of slabs done.

    Returns each slab's report: its rows, its Gaussians, iterations and validation.
    """
    reports: list[dict] = []
    calls = ((read_rows(slab.first, slab.end), tilts_deg, shape_zyx[0], shape_zyx[2],
              slab_config(config, slab.rows, plan.ny)) for slab in plan.slabs)

    def volumes() -> Iterator[np.ndarray]:
        for k, (slab, fit) in enumerate(zip(plan.slabs, run(fit_rows, calls))):
            reports.append({"rows": [slab.first, slab.end], **fit.report})
            yield fit.volume
            if done is not None:
                done(k + 1)

    slabs.stitch(plan, volumes(), write_rows)
    return reports


def _report(reports: list[dict], session: Session) -> None:
    for k, report in enumerate(reports, start=1):
        validation = report["validation"]
        first, end = report["rows"]
        best = validation["best_heldout_loss"]
        score = ("no held-out views" if best is None else
                 f"held-out relative error {best:.4f} at iteration "
                 f"{validation['best_iteration']}"
                 f"{' (stopped early)' if validation['stopped_early'] else ''}")
        session.tell(f"slab {k} (rows {first}-{end - 1}): {report['n_gaussians']} Gaussians, "
                     f"{score}")


def run_slabbed(source: StackSource, target: VolumeTarget, settings, rows: int,
                session: Session, slab_runner: slabs.SlabRunner | None = None, *,
                alignment: dict | None = None):
    """:func:`~taichi_etgs.pipeline.gaussian.run_reconstruct` in slabs of ``rows`` rows:
    the views prepared once into a temporary file, each slab fitted from its rows (by
    ``slab_runner`` when given), the tomogram written a band of rows at a time. No state
    file (each slab's model is dropped once voxelised). ``alignment``: the sidecar's
    record of the alignment refinement (never run in slabs). Returns a
    :class:`~taichi_etgs.pipeline.gaussian.ReconstructResult` (``volume`` None when
    written to a file; ``validation["slabs"]``: each slab's report)."""
    from .gaussian import ReconstructResult, new_config

    output = target.path
    folders = [] if output is None else [output.parent]
    header = inputs.peek(source)
    shape = sizes.volume_shape(header.ny, header.nx, target.thickness, target.width,
                               source.path)
    in_memory = output is None
    sizes.check_resources(_size(settings, header.n_raw, header.ny, header.nx, shape,
                                source.binning, slab_rows=rows, in_memory=in_memory),
                          folders, final=False)
    if settings.save_state and settings.state is not None:
        session.warn(f"--state {settings.state}: a slabbed run saves no state (each slab's "
                     f"model is dropped once voxelised)")
    scratch = _scratch_folder(target)
    with contextlib.ExitStack() as files:
        def allocate(stack_shape):
            return files.enter_context(ScratchStack(stack_shape, scratch))

        series, _ = inputs.load(source, session, force=target.force,
                                allocate=None if source.in_memory else allocate)
        sizes.warn_shape(shape, session)
        pixel = inputs.pixel_size(series)
        max_tilt = float(np.max(np.abs(series.tilts_deg)))
        sizes.check_resources(_size(settings, series.n_tilts, *series.data.shape[1:], shape,
                                    source.binning, max_tilt_deg=max_tilt, slab_rows=rows,
                                    in_memory=in_memory), folders, final=True)
        views = inputs.views(series, source, session,
                             series.data if not source.in_memory
                             else allocate(series.data.shape))
        config = new_config(settings, series, header.n_raw, pixel, session)
        plan = gaussian_plan(shape[1], rows)
        session.tell(f"reconstruct: {len(plan.slabs)} slab(s) of up to {rows} rows along Y, "
                     f"{plan.overlap} rows shared with each neighbour")
        session.start_compute()
        start = time.perf_counter()
        stitched = files.enter_context(ScratchStack(shape, scratch))
        total = 0.0

        def keep(first: int, block: np.ndarray) -> None:
            nonlocal total
            stitched.write_rows(first, block)
            total += float(np.sum(block, dtype=np.float64))

        with slabs.opened(slab_runner, len(plan.slabs), session) as run, \
                session.progress(len(plan.slabs), "slabs", unit="slab") as bar:
            reports = reconstruct_gaussian_slabs(views.rows, series.tilts_deg, shape,
                                                 config, plan, keep, done=bar.update,
                                                 run=run)
        seconds = time.perf_counter() - start
        _report(reports, session)
        validation = {"slabs": reports}
        n_gaussians = sum(r["n_gaussians"] for r in reports)
        info = {"n_views": series.n_tilts, "binning": source.binning,
                "n_gaussians": n_gaussians, "iterations": config.iterations,
                "slab_rows": rows, "slab_overlap": plan.overlap, "state": None,
                "validation": validation}
        if alignment is not None:
            info["alignment"] = alignment
        mean = np.float32(total / math.prod(shape))
        ny, nx = series.data.shape[1:]
        origin = mrc_origin(shape, pixel, (shape[0] * pixel, ny * pixel, nx * pixel))
        with TomogramWriter(session, output, shape, pixel, source.contrast,
                            target.output_contrast, target.force, f"gaussians {n_gaussians} "
                            f"in slabs of {rows} rows", origin) as writer:
            for first in range(0, shape[1], rows):
                end = min(shape[1], first + rows)
                writer.write_rows(first, stitched.rows(first, end) - mean)
            writer.finish(info)
    return ReconstructResult(volume=writer.volume, voxel_size_A=pixel, origin_A=origin,
                             output=output, seconds=seconds, info=info,
                             validation=validation)
