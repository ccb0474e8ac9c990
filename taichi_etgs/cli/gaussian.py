"""``reconstruct``: the Gaussian reconstruction (the CryoETGS method)."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline.gaussian import GaussianSettings, run_reconstruct
from ..pipeline.resume import resolve
from .app import cli, command, session
from .classical import slab_rows_option, slab_task_options
from .options import (
    STACK_NAMES,
    VOLUME_NAMES,
    ctf_options,
    dose_options,
    given_options,
    require,
    runtime_options,
    stack_options,
    volume_options,
)

_REQUIRED_NOTE = " Required unless --resume (the state knows it)."


@cli.command()
@command
@stack_options(required=False)
@volume_options(required=False, note=_REQUIRED_NOTE)
@click.option("--iterations", type=click.IntRange(min=1), metavar="N", default=None,
              help="Optimisation steps [default: 600; with --resume: the saved run's].")
@click.option("--max-gaussians", type=click.IntRange(min=1), default=60_000, show_default=True,
              metavar="N",
              help="Upper bound on the model's size (memory and time grow with it). Half "
                   "of it is seeded; noisy views seed fewer, down to a quarter, as many "
                   "as their signal determines (docs/method.md, Seeding).")
@click.option("--views-per-step", type=click.IntRange(min=1), default=8, show_default=True,
              metavar="N",
              help="Tilt views rendered and compared per step.")
@click.option("--init", "init", default="sirt", show_default=True, metavar="sirt|wbp|FILE",
              help="What seeds the model: a SIRT or WBP reconstruction of the same data, a "
                   "tomogram (.mrc, same size and polarity as the output), or a state file "
                   "(.h5) to refine with new settings or data.")
@click.option("--tilt-weight", type=click.Choice(["cos", "uniform", "etgs"]), default="cos",
              show_default=True,
              help="Per-view weight of the loss: high tilts are thicker and noisier.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seeds initialisation, view order and densification.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="HDF5 state file, saved every --save-every steps, at the end and on Ctrl-C "
                   "[default: OUTPUT with .state.h5].")
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              metavar="N",
              help="Save the state every N steps (0: only at the end).")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="Continue an interrupted run from its state file; STACK, the reading "
                   "options, --thickness and -o default to the saved run's.")
@click.option("--voxel-size", type=float, default=None, metavar="A",
              help="Voxel size of the written tomogram in A [default: the stack's pixel size].")
@click.option("--halves", is_flag=True,
              help="Also reconstruct the odd and the even tilts independently: writes "
                   "OUTPUT_half1.mrc and OUTPUT_half2.mrc and their Fourier shell correlation "
                   "(in the log and the JSON sidecar), to judge the tomogram without a ground "
                   "truth or to feed a denoiser. About twice the time.")
@click.option("--refine-alignment/--no-refine-alignment", default=None,
              help="Refine each view's residual shift (a pixel or two left by IMOD or "
                   "AreTomo) against the other views, then short fits, which also find the "
                   "tilt-axis angle where the specimen's ice ends in view, and write the "
                   "correction as OUTPUT stem .xf (IMOD convention, to apply after the "
                   "alignment the stack was given with) and .tlt. Default, auto: on for a "
                   "whole-volume run, where views found aligned within the noise are used "
                   "exactly as given (a few seconds) and "
                   "misaligned views cost 25-65% more time; the .xf and .tlt only when a "
                   "view moved, never over the input's files nor, without --force, other "
                   "existing ones (the shifts are in OUTPUT.json either way); off with "
                   "slabs or an --init model (--resume keeps the run's own). "
                   "--refine-alignment: always (an --init model too), the files always "
                   "written, not with slabs.")
@click.option("--heldout-every", type=click.IntRange(min=0), default=10, show_default=True,
              metavar="N",
              help="Hold one view in N (in tilt order) out of the fit to validate it: the "
                   "model that predicts them best is written (early stop). 0: fit all views.")
@slab_rows_option(" Each slab is fitted as its own model with 8 rows of each neighbour, "
                  "blended across them; no state file, no alignment refinement, and not "
                  "with --halves, --resume, --refine-alignment, --init FILE or "
                  "--voxel-size.")
@slab_task_options
@ctf_options(note=": the CTF goes into the model, so that it fits the specimen's "
                  "potential, not a CTF-filtered image of it")
@dose_options(note=": each view's exposure filter goes into the model, which predicts the "
                   "damage later views carry")
@runtime_options
def reconstruct(source, target, iterations, max_gaussians, views_per_step, init, tilt_weight,
                seed, state_path, save_every, resume_path, voxel_size, halves, refine_alignment,
                heldout_every, slab_rows, slab_runner, ctf, dose):
    """Reconstruct STACK as adaptive 3D Gaussians (the CryoETGS method).

    STACK is an MRC tilt series with the tilt axis along Y, as for wbp.

    The model is seeded from a classical reconstruction, then fitted to the views through a
    differentiable projector (tilt-weighted RMSE + D-SSIM), growing where the fit needs it.
    An ice slab (faces and ends fitted to the data), per-view gain and offset, and with
    --defocus the CTF, carry what is not specimen. One view in --heldout-every is kept out
    of the fit: the model that predicts those views best is written, so a noisy series is
    not over-fitted; the held-out scores go to the log and to OUTPUT.json. The tomogram is
    the model voxelised at the stack's pixel size (or --voxel-size).

    The run's state (model, optimiser, random generator, and the run's input, output and
    settings) is saved to OUTPUT.state.h5 every --save-every steps, at the end, and on
    Ctrl-C or SIGTERM (exit codes 130 and 143); continue with --resume STATE alone. The
    state never replaces an earlier run's without --force. Memory and disk are checked
    before any work: a run that will not fit is refused with the option that makes it fit.

    \b
    Example:
      taichi-etgs reconstruct TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          -o TS_01_gs.mrc
      taichi-etgs reconstruct --resume TS_01_gs.state.h5        # after an interruption
    """
    ctx = click.get_current_context()
    if resume_path is not None:
        given = given_options(ctx, (*STACK_NAMES, *VOLUME_NAMES, "voxel_size", "halves"))
        source, target, voxel_size, halves = resolve(resume_path, given)
    else:
        require(ctx, "stack", "output", "thickness")
    settings = GaussianSettings(
        iterations=iterations, max_gaussians=max_gaussians, views_per_step=views_per_step,
        init=init, tilt_weight=tilt_weight, seed=seed, heldout_every=heldout_every,
        defocus_um=ctf.defocus or 0.0, voltage_kV=ctf.voltage_kV, cs_mm=ctf.cs_mm,
        amplitude_contrast=ctf.amplitude_contrast, dose=dose.dose,
        dose_per_tilt=dose.dose_per_tilt, tilt_order=dose.tilt_order,
        tilt_start=dose.tilt_start_deg, tilt_group=dose.tilt_group, voxel_size=voxel_size,
        halves=halves, refine_alignment=refine_alignment,
        state=state_path, save_every=save_every, resume=resume_path, slab_rows=slab_rows)
    run_reconstruct(source, target, settings, session=session(), slab_runner=slab_runner)
