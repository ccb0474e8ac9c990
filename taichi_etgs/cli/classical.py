"""``wbp`` and ``sirt``: the classical reconstructions."""

from __future__ import annotations

import functools

import click

from ..pipeline.classical import run_sirt, run_wbp
from .app import cli, command, session
from .options import (
    ctf_options,
    dose_options,
    parse_radial,
    runtime_options,
    stack_options,
    volume_options,
)

_FLIP = ": the views are phase-flipped first, in strips along the tilt axis"
_DOSE = (": the views are exposure-filtered (Grant & Grigorieff's critical exposure; on "
         "simulated 120 e/A^2 series it raises WBP's feature-band FSC a little and lowers "
         "SIRT's by about 1 %, docs/method.md \"Dose\")")

_REFINE = click.option(
    "--refine-alignment", is_flag=True,
    help="Refine each view's residual shift first (a pixel or two left by IMOD or AreTomo) "
         "by matching each view to the other views, then to short Gaussian fits, which "
         "also find the tilt-axis angle where the specimen's ice ends in view (views found "
         "aligned within the noise are left alone), and write the correction as OUTPUT "
         "stem .xf (IMOD convention, to apply after the alignment the stack was given "
         "with) and .tlt. Whole views only (not with slabs); about 35-40 s more on "
         "misaligned views at 64 x 128 x 128 on 2 cores, a few seconds on aligned ones.")

def slab_rows_option(note: str = " The same tomogram, bit for bit."):
    """``--slab-rows N``; ``note``: what slabs mean for the command."""
    # type=int, not IntRange: a bad N gets the pipeline's one-line error and exit code 2.
    return click.option(
        "--slab-rows", "slab_rows", type=int, default=None, metavar="N",
        help="Reconstruct N rows along Y (the tilt axis) at a time, reading the views and "
             "writing the tomogram slab by slab, in a fraction of the memory [default: "
             "slabs only when the whole does not fit in the memory available]." + note)


_slab_rows = slab_rows_option()


def slab_task_options(func):
    """--workers and --scheduler: a slabbed run's slabs as Dask tasks (what they mean in
    ``batch``); the command receives them as ``slab_runner`` (None without either)."""

    @click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
                  help="Spread the slabs over N Dask workers of an embedded cluster, a slab "
                       "per task; --threads is then each worker's [default: the cores "
                       "shared out]. Only for a run in slabs.")
    @click.option("--scheduler", default=None, metavar="ADDRESS",
                  help="Run the slabs as tasks on an existing Dask cluster (tcp://host:8786, "
                       "e.g. from dask-jobqueue); its workers need no shared file system.")
    @functools.wraps(func)
    def wrapper(*args, workers: int | None, scheduler: str | None, **kwargs):
        from ..batch.slab_tasks import SlabTasks

        runner = None if workers is None and scheduler is None else SlabTasks(workers,
                                                                              scheduler)
        return func(*args, slab_runner=runner, **kwargs)

    return wrapper


def _view_and_run_options(func):
    """What wbp and sirt share after their own options: the CTF, the dose, alignment
    refinement, slabs and their tasks, the compute device."""
    for option in reversed((ctf_options(note=_FLIP), dose_options(note=_DOSE), _REFINE,
                            _slab_rows, slab_task_options, runtime_options)):
        func = option(func)
    return func


@cli.command()
@command
@stack_options
@volume_options
@click.option("--radial", default="0.35,0.035", show_default=True, metavar="CUTOFF,FALLOFF",
              help="IMOD radial filter: the ramp is flat to CUTOFF, then falls as a Gaussian "
                   "of width FALLOFF (both cycles/pixel, Nyquist = 0.5).")
@click.option("--fake-sirt", "fake_sirt", type=click.IntRange(min=0), default=0, metavar="N",
              show_default=True,
              help="Shape the filter like N SIRT iterations (IMOD's FakeSIRTiterations): "
                   "smoother, higher-contrast tomograms. 0 = plain weighted back-projection.")
@_view_and_run_options
def wbp(source, target, radial, fake_sirt, ctf, dose, refine_alignment, slab_rows,
        slab_runner):
    """Weighted back-projection of STACK into a tomogram (fast; the classical baseline).

    STACK is an MRC tilt series (.mrc, .st, .ali; one view per section) with the tilt
    axis along Y: aligned (IMOD .ali) or aligned on load with --xf or --aln --apply-aln.

    Each view is filtered with the ramp times IMOD's radial low-pass, then smeared back
    through the volume (with --defocus, phase-flipped first, as IMOD's ctfphaseflip; with
    --dose or --dose-per-tilt, exposure-filtered).
    Seconds to minutes; sharp but noisy and streaky along the missing wedge. The memory
    it needs is checked before it starts (-v shows the estimate); a tomogram larger
    than memory is reconstructed in slabs along Y (--slab-rows), the same tomogram.

    \b
    Examples:
      taichi-etgs wbp TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 -o TS_01_wbp.mrc
      taichi-etgs wbp TS_01.ali --thickness 1200 --slab-rows 256 -o TS_01_bin1.zarr
      taichi-etgs wbp TS_01.ali --thickness 1200 --slab-rows 256 --workers 4 -o TS_01.mrc
      taichi-etgs wbp TS_01.ali --binning 4 --thickness 300 --refine-alignment -o TS_01_wbp.mrc
    """
    run_wbp(source, target, radial=parse_radial(radial), fake_sirt=fake_sirt, ctf=ctf,
            dose=dose, slab_rows=slab_rows, session=session(), slab_runner=slab_runner,
            refine_alignment=refine_alignment)


@cli.command()
@command
@stack_options
@volume_options
@click.option("--iterations", type=click.IntRange(min=1), metavar="N", default=20,
              show_default=True,
              help="SIRT iterations: more sharpens detail and noise alike (10-30 is usual).")
@click.option("--relaxation", type=float, default=1.0, show_default=True,
              help="Step size lambda, in (0, 2).")
@click.option("--positivity", is_flag=True,
              help="Clamp negative density to zero each iteration (only meaningful when the "
                   "background is zero, e.g. isolated simulated specimens).")
@_view_and_run_options
def sirt(source, target, iterations, relaxation, positivity, ctf, dose, refine_alignment,
         slab_rows, slab_runner):
    """SIRT reconstruction of STACK (row- and column-normalised, from zero).

    STACK is an MRC tilt series with the tilt axis along Y, as for wbp.

    Iterative: each iteration projects the volume, compares with the views and
    back-projects the difference. Smoother and higher in contrast than WBP, at
    about two WBPs per iteration. Shows a progress bar with the residual (on a terminal;
    elsewhere a line every 10 %).

    \b
    Example:
      taichi-etgs sirt TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          --iterations 20 -o TS_01_sirt.mrc
    """
    run_sirt(source, target, iterations=iterations, relaxation=relaxation,
             positivity=positivity, ctf=ctf, dose=dose, slab_rows=slab_rows,
             session=session(), slab_runner=slab_runner, refine_alignment=refine_alignment)
