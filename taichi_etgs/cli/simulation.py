"""``simulate`` (a tilt series with its ground truth) and ``evaluate`` (scores)."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline.simulation import run_evaluate, run_simulate
from .app import cli, command, echo, session
from .options import parse_int_triple, parse_tilt_range, runtime_options


@cli.command()
@command
@click.option("-o", "--output-dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tilts.mrc, tilts.tlt, ground_truth.mrc, simulation.json.")
@click.option("--shape", default="64,128,128", show_default=True, metavar="NZ,NY,NX",
              help="Tomogram (and ground truth) size in voxels.")
@click.option("--pixel-size", type=float, default=10.0, show_default=True,
              help="Voxel and detector pixel size in A.")
@click.option("--tilt-range", default="-60:60:3", show_default=True, metavar="START:STOP:STEP",
              help="Tilt range and step in degrees, STOP included (as `project --angles`; "
                   "the former MIN,MAX,STEP still works).")
@click.option("--dose-symmetric", is_flag=True,
              help="Acquire in the dose-symmetric order (dose accumulates accordingly).")
@click.option("--tilt-order", type=click.Choice(["sequential", "bidirectional",
                                                 "dose-symmetric"]), default=None,
              help="Acquisition order (instead of --dose-symmetric) [default: sequential, "
                   "from the lowest tilt].")
@click.option("--tilt-start", type=float, default=None, metavar="DEG",
              help="Start angle of a bidirectional or dose-symmetric order [default: 0].")
@click.option("--dose", type=float, default=120.0, show_default=True,
              help="Total dose in e/A^2, split evenly over the views.")
@click.option("--noise", type=click.Choice(["gaussian", "physical", "none"]), default="gaussian",
              show_default=True,
              help="gaussian: white noise at --snr; physical: CTF, radiation damage and "
                   "Poisson counts at --dose; none: noise-free.")
@click.option("--snr", type=float, default=0.5, show_default=True,
              help="Per-pixel SNR of the 0 deg view (gaussian noise).")
@click.option("--defocus", type=float, default=3.0, show_default=True,
              help="Defocus in um (physical noise).")
@click.option("--isolated", is_flag=True,
              help="Specimen only inside the box (SHREC-style); by default it extends "
                   "laterally, so high tilts see material from outside, as in real data.")
@click.option("--structure", "structures", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Atomic model (mmCIF/PDB, gzipped or not) to scatter in the ice; repeat "
                   "for several. Default: procedural particles.")
@click.option("--particles", type=click.IntRange(min=0), default=None,
              help="Number of particles [default: by area].")
@click.option("--vesicles", type=click.IntRange(min=0), default=None,
              help="Number of vesicles [default: by area].")
@click.option("--filaments", type=click.IntRange(min=0), default=None,
              help="Number of filaments [default: by area].")
@click.option("--shift-sd", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="PX",
              help="Residual misalignment: each view moved by a random shift of this sd in "
                   "X and in Y, pixels (the truth goes into simulation.json).")
@click.option("--axis-error", type=click.FloatRange(min=-45, max=45, min_open=True,
                                                    max_open=True),
              default=0.0, show_default=True, metavar="DEG",
              help="Residual misalignment: the views' tilt axis at this angle from Y "
                   "(degrees, counter-clockwise as IMOD's tilt axis angle).")
@click.option("--tilt-offset-sd", type=click.FloatRange(min=0), default=0.0,
              show_default=True, metavar="DEG",
              help="Residual misalignment: each view projected at its tilt plus a random "
                   "offset of this sd; tilts.tlt keeps the nominal tilts.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seed: the same seed gives the same files.")
@click.option("--force", is_flag=True, help="Overwrite earlier files in the folder.")
@runtime_options
def simulate(output_dir, shape, pixel_size, tilt_range, dose_symmetric, tilt_order, tilt_start,
             dose, noise, snr, defocus, isolated, structures, particles, vesicles, filaments,
             shift_sd, axis_error, tilt_offset_sd, seed, force):
    """Simulate a tilt series with its ground truth (to test and compare methods).

    The specimen (macromolecules, vesicles, filaments in ice) is built and projected on a
    grid twice as fine as the output, then binned, so reconstructions are not tested with
    their own projector. Score a reconstruction of it with `taichi-etgs evaluate`.

    \b
    Example:
      taichi-etgs simulate -o sim --shape 64,256,256 --tilt-range -60:60:3
      taichi-etgs wbp sim/tilts.mrc --thickness 64 -o sim/wbp.mrc
      taichi-etgs evaluate sim/wbp.mrc --reference sim/ground_truth.mrc

    With --shift-sd, --axis-error or --tilt-offset-sd the views carry the residual errors
    an aligned stack keeps; simulation.json records them (derived.misalignment: the shifts,
    the axis error, the offsets and the .xf that corrects each view).
    """
    from ..simulation.simulate import SimulationConfig

    shape_zyx = parse_int_triple(shape, "--shape")
    t_min, t_max, t_step = parse_tilt_range(tilt_range, "--tilt-range", old_commas=True)
    config = SimulationConfig(shape_zyx=shape_zyx, pixel_size_A=pixel_size, tilt_min_deg=t_min,
                              tilt_max_deg=t_max, tilt_step_deg=t_step,
                              dose_symmetric=dose_symmetric, tilt_order=tilt_order or "",
                              tilt_start_deg=tilt_start, total_dose_e_per_A2=dose,
                              noise=noise, snr=snr, defocus_um=defocus, isolated=isolated,
                              structures=tuple(str(p) for p in structures),
                              n_particles=particles, n_vesicles=vesicles, n_filaments=filaments,
                              shift_sd_px=shift_sd, axis_error_deg=axis_error,
                              tilt_offset_sd_deg=tilt_offset_sd, seed=seed)
    run_simulate(config, output_dir, force=force, session=session())


@cli.command()
@command
@click.argument("recon", metavar="RECON|HALF1", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reference", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Ground truth volume of the same shape (e.g. from `simulate`): score "
                   "RECON against it.")
@click.option("--half2", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The other half map: the half-map FSC of HALF1 and HALF2 (two "
                   "independent reconstructions, from any program), no ground truth needed.")
@click.option("--voxel-size", type=float, default=None, metavar="A",
              help="Voxel size in A [default: from the MRC header, else 1].")
@click.option("--max-tilt", type=float, default=None,
              help="Largest tilt of the data in degrees, for the missing-wedge FSC "
                   "[default: from --angles, else 60].")
@click.option("--angles", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The data's angles file (gives --max-tilt).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write every metric and the FSC curves as JSON.")
@click.option("--figure", "figure_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write XY/XZ slices and FSC curves (PNG, PDF or SVG; "
                                 "with --reference).")
@click.option("--force", is_flag=True, help="Overwrite the JSON or figure if they exist.")
def evaluate(recon, reference, half2, voxel_size, max_tilt, angles, json_path, figure_path,
             force):
    """Score a reconstruction against a reference (PSNR, SSIM, FSC, missing-wedge FSC), or
    two half maps against each other (half-map FSC).

    With --reference, the reconstruction is first fitted to the reference by least squares
    (gain and offset, so units and polarity do not matter; a negative gain is reported as
    inverted contrast), then compared with the reference's range as data range. With
    --half2, no fit is needed (the FSC does not depend on gain). Both report the FSC 0.5
    and 0.143 resolutions and the band FSC, the mean FSC over features of 32-400 A.

    \b
    Example:
      taichi-etgs evaluate sim/wbp.mrc --reference sim/ground_truth.mrc --json wbp.json
      taichi-etgs evaluate even.mrc --half2 odd.mrc --json halves.json
    """
    result = run_evaluate(recon, reference, half2=half2, voxel_size=voxel_size,
                          max_tilt=max_tilt, angles=angles, json_path=json_path,
                          figure_path=figure_path, force=force, session=session())
    m = result.metrics
    if result.kind == "halves":
        echo(f"half-map FSC 0.143: {m['fsc0143_resolution_A']:.1f} A   FSC 0.5: "
             f"{m['fsc05_resolution_A']:.1f} A   band FSC (32-400 A) {m['band_fsc']:.3f}")
    else:
        echo(f"PSNR {m['psnr']:.2f} dB   SSIM {m['ssim']:.3f}   correlation "
             f"{m['correlation']:.3f}")
        echo(f"FSC 0.5: {m['fsc05_resolution_A']:.1f} A   FSC 0.143: "
             f"{m['fsc0143_resolution_A']:.1f} A   missing-wedge FSC {m['wedge_fsc']:.3f}")
        echo(f"band FSC (32-400 A) {m['band_fsc']:.3f}   wedge {m['wedge_band_fsc']:.3f}"
             f"   specimen {m['specimen_band_fsc']:.3f}   specimen wedge "
             f"{m['specimen_wedge_band_fsc']:.3f}")
        if m.get("contrast_inverted"):
            echo("note: the reconstruction has inverted contrast relative to the reference")
    for path in result.files:
        echo(f"wrote {path}")
