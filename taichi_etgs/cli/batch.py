"""``batch``: many tilt series in one command, on Dask distributed."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import RunFailure
from .app import cli, command, echo, session
from .options import KEEP_OUTLIERS_HELP, TILT_ORDERS, given_options, parse_radial

# The method's own options, without click defaults: passed on only when given (the
# defaults live in one place, taichi_etgs.batch.tasks.METHOD_OPTIONS: the single commands').
_METHOD_OPTIONS = ("radial", "fake_sirt", "iterations", "relaxation", "positivity",
                   "max_gaussians", "views_per_step", "init", "tilt_weight", "seed",
                   "heldout_every", "voxel_size", "halves", "save_every", "defocus",
                   "voltage_kV", "cs_mm", "amplitude_contrast", "dose_per_tilt", "tilt_order",
                   "tilt_start", "tilt_group", "refine_alignment")


@cli.command()
@command
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option("--method", type=click.Choice(["wbp", "sirt", "reconstruct"]), required=True,
              help="The reconstruction every series gets.")
@click.option("-o", "--output-dir", "outdir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tomograms (OUTDIR/<stack stem>.mrc with its sidecar) and "
                   "batch_summary.csv/.json; created if missing.")
@click.option("--thickness", type=click.IntRange(min=1), metavar="NZ", default=None,
              help="Tomogram thickness in (binned) voxels, for series whose table row gives "
                   "none.")
@click.option("--width", type=click.IntRange(min=1), default=None, metavar="NX",
              help="Tomogram width NX in voxels (default: the image width).")
@click.option("--output-contrast", type=click.Choice(["input", "bright", "dark"]),
              default="input", show_default=True, help="Polarity of the tomograms.")
@click.option("--binning", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="B", help="Average-bin the images by B on load.")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True, help="How density looks in the images.")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="A", help="Pixel size in A before binning [default: the files'].")
@click.option("--keep-outliers", "erase_outliers", flag_value=False, default=True,
              help=KEEP_OUTLIERS_HELP)
@click.option("--apply-aln", is_flag=True, help="Apply each .aln's rotation and shifts.")
@click.option("--aligned", is_flag=True,
              help="The stacks are aligned although their .mdoc says otherwise.")
@click.option("--exclude-views", default=None, metavar="LIST",
              help="Views to leave out of every series, 0-based ('0-2,40').")
@click.option("--radial", metavar="CUTOFF,FALLOFF",
         help="wbp: IMOD's radial filter [default: 0.35,0.035].")
@click.option("--fake-sirt", type=click.IntRange(min=0), metavar="N",
         help="wbp: shape the filter like N SIRT iterations [default: 0].")
@click.option("--iterations", type=click.IntRange(min=1), metavar="N",
         help="sirt: iterations [default: 20]; reconstruct: steps [default: 600].")
@click.option("--relaxation", type=float, help="sirt: step size [default: 1].")
@click.option("--positivity", is_flag=True, default=None, help="sirt: clamp negative density.")
@click.option("--max-gaussians", type=click.IntRange(min=1), metavar="N",
         help="reconstruct: the model's size bound [default: 60000].")
@click.option("--views-per-step", type=click.IntRange(min=1), metavar="N",
         help="reconstruct: views per step [default: 8].")
@click.option("--init", type=click.Choice(["sirt", "wbp"]),
         help="reconstruct: the seed [default: sirt].")
@click.option("--tilt-weight", type=click.Choice(["cos", "uniform", "etgs"]),
         help="reconstruct: per-view loss weight [default: cos].")
@click.option("--seed", type=int, metavar="N", help="reconstruct: random seed [default: 0].")
@click.option("--heldout-every", type=click.IntRange(min=0), metavar="N",
         help="reconstruct: hold one view in N out to validate [default: 10].")
@click.option("--voxel-size", type=float, metavar="A",
         help="reconstruct: voxel size of the tomograms [default: the pixel size].")
@click.option("--halves", is_flag=True, default=None,
              help="reconstruct: also the odd and even tilts, with their FSC.")
@click.option("--save-every", type=click.IntRange(min=0), metavar="N",
         help="reconstruct: save the state every N steps [default: 100].")
@click.option("--defocus", type=click.FloatRange(min=0), metavar="UM",
         help="Underfocus of every view of every series, micrometres; per-series defocus "
              "files go in a table's defocus column.")
@click.option("--voltage", type=click.FloatRange(min=1), metavar="KV",
         help="Acceleration voltage [default: 300].")
@click.option("--cs", type=click.FloatRange(min=0), metavar="MM",
         help="Spherical aberration [default: 2.7].")
@click.option("--amplitude-contrast", type=click.FloatRange(0, 0.99),
         metavar="W", help="Amplitude contrast [default: 0.07].")
@click.option("--dose-per-tilt", type=click.FloatRange(min=0), metavar="E",
         help="Exposure of every view, e/A^2 (per-series dose files: a table's dose column).")
@click.option("--tilt-order", type=click.Choice(TILT_ORDERS),
         help="Acquisition order, for --dose-per-tilt.")
@click.option("--tilt-start", type=float, metavar="DEG",
         help="Start angle of a bidirectional or dose-symmetric order.")
@click.option("--tilt-group", type=click.IntRange(min=1), metavar="N",
         help="Views per group of the dose-symmetric order [default: 2].")
@click.option("--refine-alignment/--no-refine-alignment", default=None,
              help="Refine each view's residual shift (any method; whole views only), "
                   "writing OUTDIR/<stem>.xf and .tlt beside each tomogram [default: "
                   "reconstruct: auto, as the command: whole-volume runs, the files only "
                   "when a view moved; wbp, sirt: off].")
@click.option("--force", is_flag=True,
              help="Redo series whose output was made from other inputs or settings; accept "
                   "tilt angles that look like radians.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Workers of the embedded cluster [default: one per GPU, else one per "
                   "core], each running one series at a time.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="Taichi CPU threads per worker [default: the cores shared out].")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (tcp://host:8786, e.g. from "
                   "dask-jobqueue) instead of the embedded one.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              metavar="N", help="Run a series again this many times when its worker dies "
                                "(killed, out of memory).")
@click.option("--arch", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Workers' compute device: auto uses the GPUs if any.")
def batch(inputs, method, outdir, thickness, width, output_contrast, binning, contrast,
          pixel_size, erase_outliers, apply_aln, aligned, exclude_views, force, workers,
          threads, scheduler, retries, arch, **method_options):
    """Reconstruct many tilt series, one Dask task each, into OUTDIR.

    INPUT is a folder, a glob ('data/*.st'), a stack, or a table (.csv, .star) with a
    row per series (stack, angles, xf, aln, thickness, defocus, dose). In folders and
    globs each stack's angles (.tlt, .rawtlt, .mdoc, or AreTomo's .aln) and IMOD .xf are
    found by stem. Each output is OUTDIR/<stem>.mrc with its sidecar, made exactly as the
    single command makes it.

    A series whose output and sidecar already match its inputs and settings is skipped,
    so a rerun after a crash does only what is missing. A series whose worker dies is run
    again (--retries); one with bad input fails alone. The summary (series, status, time,
    output) is printed at the end and written to OUTDIR/batch_summary.csv and .json; the
    exit status is 1 when any series failed.

    \b
    Examples:
      taichi-etgs batch data/ --method wbp --binning 4 --thickness 300 -o tomos/
      taichi-etgs batch series.csv --method reconstruct -o tomos/ --workers 2
      taichi-etgs batch 'raw/*.st' --method sirt --thickness 300 -o tomos/ \\
          --scheduler tcp://login1:8786
    """
    from ..batch import BatchSettings, find_series, run_batch
    from ..batch.summary import format_table

    given = given_options(click.get_current_context(), _METHOD_OPTIONS)
    if "radial" in given:
        given["radial"] = parse_radial(given["radial"])
    settings = BatchSettings(method=method, thickness=thickness, width=width,
                             output_contrast=output_contrast, binning=binning,
                             contrast=contrast, pixel_size=pixel_size, apply_aln=apply_aln,
                             aligned=aligned, exclude_views=exclude_views,
                             erase_outliers=erase_outliers, options=given,
                             force=force, arch=arch)
    series = find_series(inputs)
    with _ProgressLine() as progress:
        result = run_batch(series, settings, outdir, workers=workers, threads=threads,
                           scheduler=scheduler, retries=retries, session=session(),
                           on_progress=progress.show)
    echo(format_table(result.outcomes))
    echo(f"summary: {result.summary_csv} and {result.summary_json.name}", err=True)
    failed = result.counts["failed"]
    if failed:
        raise RunFailure(f"{failed} of {len(result.outcomes)} series failed (see "
                         f"{result.summary_csv})")


class _ProgressLine:
    """The batch's counts as they change: one bar redrawn in place on a terminal, a line
    per change elsewhere (logs, pipes, batch systems)."""

    def __init__(self) -> None:
        self.bar = None

    def show(self, progress) -> None:
        if not sys.stderr.isatty():
            echo(progress.line(), err=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=progress.total - progress.skipped, desc="batch",
                            unit="series", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix(running=progress.running, failed=progress.failed, refresh=False)
        self.bar.update(progress.done + progress.failed - self.bar.n)

    def __enter__(self) -> _ProgressLine:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
