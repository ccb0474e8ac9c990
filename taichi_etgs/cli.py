"""The ``taichi-etgs`` command line: parse options, call the library, report.

Heavy modules (Taichi, the kernels) are imported inside commands so that ``--help`` is fast.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np

from . import __version__
from .errors import InputError

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="taichi-etgs")
def cli() -> None:
    """Cryo-ET tomograms from a tilt series: adaptive 3D Gaussians, WBP and SIRT.

    Volumes are written as MRC (Z, Y, X): XY slices are the top view; the tilt axis is Y.
    Run `taichi-etgs demo` for a complete example without any input files.
    """


# -- shared options --


def _stack_options(func):
    """Options that say how to read a tilt series (every command that takes a STACK)."""
    decorators = [
        click.argument("stack", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--angles", "angles", type=click.Path(dir_okay=False, path_type=Path),
                     help="Tilt angles: .tlt/.rawtlt (one per line, degrees), SerialEM .mdoc "
                          "or AreTomo .aln. Default: STACK's sibling .tlt/.rawtlt/.mdoc."),
        click.option("--xf", "xf", type=click.Path(dir_okay=False, path_type=Path),
                     help="IMOD .xf transforms (one line per raw view) applied on load."),
        click.option("--aln", "aln", type=click.Path(dir_okay=False, path_type=Path),
                     help="AreTomo .aln: tilt angles and the sections it kept."),
        click.option("--apply-aln", is_flag=True,
                     help="Also apply the .aln's rotation (ROT) and shifts (TX, TY): for a raw, "
                          "unaligned stack."),
        click.option("--exclude-views", default=None, metavar="LIST",
                     help="Views to leave out, 0-based indices into STACK: '0,1,40' or '0-2,40'."),
        click.option("--binning", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Average-bin the images by this factor in X and Y on load."),
        click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
                     show_default=True,
                     help="How density looks in the images: dark (raw cryo-EM) or bright."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _volume_options(func):
    decorators = [
        click.option("-o", "--output", required=True, type=click.Path(dir_okay=False,
                     path_type=Path), help="Tomogram to write (MRC, Z Y X)."),
        click.option("--thickness", required=True, type=click.IntRange(min=1),
                     help="Tomogram thickness NZ in (binned) voxels."),
        click.option("--width", type=click.IntRange(min=1), default=None,
                     help="Tomogram width NX in voxels (default: the image width)."),
        click.option("--output-contrast", type=click.Choice(["input", "bright", "dark"]),
                     default="input", show_default=True,
                     help="Polarity of the tomogram: like the input images, or as asked."),
        click.option("--force", is_flag=True, help="Overwrite the output if it exists."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _runtime_options(func):
    @click.option("--arch", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                  show_default=True, help="Compute device: auto picks CUDA when a GPU is usable.")
    @click.option("--threads", type=click.IntRange(min=1), default=None,
                  help="CPU threads (default: all cores).")
    @functools.wraps(func)
    def wrapper(*args, arch: str, threads: int | None, **kwargs):
        from . import runtime

        config = runtime.init(arch, threads=threads)
        click.echo(f"compute: {config.arch}", err=True)
        return func(*args, **kwargs)

    return wrapper


def _echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)


def _load(stack: Path, angles, xf, aln, apply_aln, exclude_views, binning):
    from .io import load_tilt_series

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = load_tilt_series(stack, angles, xf_path=xf, aln_path=aln, apply_aln=apply_aln,
                                  exclude_views=exclude_views, binning=binning)
    _echo_warnings(caught)
    return series


def _check_output(path: Path, force: bool) -> None:
    """Refuse before any work is done if the output cannot be written."""
    if path.exists() and not force:
        raise InputError("exists; use --force to overwrite", path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"folder {folder} does not exist", path)
    if not os.access(folder, os.W_OK):
        raise InputError(f"folder {folder} is not writable", path)


def _volume_shape(series, thickness: int, width: int | None) -> tuple[int, int, int]:
    n_tilts, ny, nx = series.data.shape
    if width is not None and width > nx:
        raise InputError(f"the stack is {nx} pixels wide (after binning) but --width asks for "
                         f"{width}; reconstruct at most {nx} wide or bin less", series.source)
    if thickness > 4 * nx:
        raise InputError(f"--thickness {thickness} is over 4x the image width {nx}: check the "
                         "binning (thickness is in binned voxels)")
    return (thickness, ny, nx if width is None else width)


def _pixel_size(series) -> float:
    """The stack's pixel size in A; 1.0 when the files give none (info warns about it)."""
    return series.pixel_size_A if series.pixel_size_A > 0 else 1.0


def _write_tomogram(path: Path, volume, pixel: float, contrast: str, output_contrast: str,
                    force: bool, what: str) -> None:
    from .io import write_volume
    from .preprocess import to_output_polarity

    labels = [f"taichi-etgs {__version__} {what}", " ".join(sys.argv[1:])[:80]]
    write_volume(path, to_output_polarity(volume, contrast, output_contrast), pixel,
                 force=force, labels=labels)
    nz, ny, nx = volume.shape
    click.echo(f"wrote {path} ({nz} x {ny} x {nx} voxels, Z Y X; {pixel:g} A/voxel)")


# -- commands: foundation (wbp, sirt, info, demo) --


@cli.command()
@_stack_options
@_volume_options
@click.option("--radial", default="0.35,0.035", show_default=True, metavar="CUTOFF,FALLOFF",
              help="IMOD radial filter: the ramp is flat to CUTOFF, then falls as a Gaussian "
                   "of width FALLOFF (both cycles/pixel, Nyquist = 0.5).")
@click.option("--fake-sirt", "fake_sirt", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Shape the filter like N SIRT iterations (IMOD's FakeSIRTiterations): "
                   "smoother, higher-contrast tomograms. 0 = plain weighted back-projection.")
@_runtime_options
def wbp(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast, output, thickness,
        width, output_contrast, force, radial, fake_sirt):
    """Weighted back-projection of STACK into a tomogram.

    \b
    Example:
      taichi-etgs wbp TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 -o TS_01_wbp.mrc
    """
    from .preprocess import density_views
    from .wbp import weighted_back_projection

    radial_pair = _parse_radial(radial)
    _check_output(output, force)
    series = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning)
    shape = _volume_shape(series, thickness, width)
    start = time.perf_counter()
    volume = weighted_back_projection(density_views(series.data, contrast), series.tilts_deg,
                                      shape[0], radial=radial_pair,
                                      fake_sirt_iterations=fake_sirt, width=shape[2])
    click.echo(f"weighted back-projection: {time.perf_counter() - start:.1f} s", err=True)
    _write_tomogram(output, volume, _pixel_size(series), contrast, output_contrast, force, "wbp")


def _parse_radial(text: str) -> tuple[float, float]:
    try:
        cutoff, falloff = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--radial {text!r}: expected CUTOFF,FALLOFF, e.g. 0.35,0.035") from None
    return cutoff, falloff


@cli.command()
@_stack_options
@_volume_options
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="SIRT iterations: more sharpens detail and noise alike (10-30 is usual).")
@click.option("--relaxation", type=float, default=1.0, show_default=True,
              help="Step size lambda, in (0, 2).")
@click.option("--positivity", is_flag=True,
              help="Clamp negative density to zero each iteration (only meaningful when the "
                   "background is zero, e.g. isolated simulated specimens).")
@_runtime_options
def sirt(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast, output, thickness,
         width, output_contrast, force, iterations, relaxation, positivity):
    """SIRT reconstruction of STACK (row- and column-normalised, from zero).

    \b
    Example:
      taichi-etgs sirt TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          --iterations 20 -o TS_01_sirt.mrc
    """
    from tqdm import tqdm

    from . import sirt as sirt_module
    from .preprocess import density_views

    _check_output(output, force)
    series = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning)
    shape = _volume_shape(series, thickness, width)
    with tqdm(total=iterations, desc="SIRT", unit="it", file=sys.stderr,
              disable=None) as bar:
        def progress(iteration: int, residual: float) -> None:
            bar.set_postfix(residual=f"{residual:.4g}")
            bar.update(1)

        result = sirt_module.sirt(density_views(series.data, contrast), series.tilts_deg,
                                  shape[0], iterations=iterations, relaxation=relaxation,
                                  positivity=positivity, width=shape[2], progress=progress)
    _write_tomogram(output, result.volume, _pixel_size(series), contrast, output_contrast, force,
                    f"sirt {iterations} it")


@cli.command()
@_stack_options
def info(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast):
    """What a tilt series holds: sizes, pixel size, angles, missing wedge, statistics.

    Checks what a user checks first and warns about what looks wrong (unsorted or
    duplicated angles, angles that look like radians, uneven steps).
    """
    from .io import stack_summary

    series = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning)
    summary = stack_summary(series)
    pixel = summary.get("pixel_size_A", 0.0)
    lines = [
        ("stack", str(series.source)),
        ("angles from", series.angles_source or "-"),
        ("views", f"{summary['n_tilts']} (kept of the raw stack: "
                  f"{_ranges(series.kept_views)})"),
        ("image size", f"{summary['nx']} x {summary['ny']} pixels (X x Y)"),
        ("pixel size", f"{pixel:g} A" if pixel > 0 else "unknown"),
        ("tilt range", f"{summary['tilt_min_deg']:.2f} to {summary['tilt_max_deg']:.2f} deg, "
                       f"mean step {summary['mean_step_deg']:.2f} deg"),
        ("missing wedge", f"{summary['missing_wedge_deg']:.1f} deg"),
        ("min / max", f"{summary['min']:.4g} / {summary['max']:.4g}"),
        ("mean / std", f"{summary['mean']:.4g} / {summary['std']:.4g}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    for message in summary.get("warnings", []):
        click.echo(f"warning: {message}")


@cli.command()
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("taichi-etgs-demo"), show_default=True,
              help="Folder for the simulated tilt series, ground truth and tomograms.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulation.")
@click.option("--force", is_flag=True, help="Overwrite the files of an earlier demo.")
@_runtime_options
def demo(output_dir, seed, force):
    """Run the whole job on a built-in example (no input files needed).

    Simulates a small specimen (vesicles, filaments, particles in ice; 41 tilts, -60..60
    deg, noisy), reconstructs it with WBP, SIRT and adaptive Gaussians, writes the
    tomograms and prints how each compares with the ground truth.
    """
    from tqdm import tqdm

    from .demo import DEMO_GAUSSIAN_ITERATIONS, run_demo

    with tqdm(total=DEMO_GAUSSIAN_ITERATIONS, desc="Gaussians", unit="it", file=sys.stderr,
              disable=None, dynamic_ncols=True) as bar:
        def progress(info) -> None:
            bar.set_postfix(loss=f"{info.loss:.4f}", n=info.n_gaussians, refresh=False)
            bar.update(info.iteration - bar.n)

        result = run_demo(output_dir, force=force, seed=seed,
                          report=lambda line: bar.write(line, file=sys.stdout),
                          progress=progress)
    click.echo("")
    click.echo(_metrics_table(result.metrics, result.seconds))
    click.echo(f"\nfiles in {output_dir}/: " + ", ".join(sorted(p.name for p in
                                                             result.files.values())))


def _metrics_table(metrics: dict[str, dict], seconds: dict[str, float]) -> str:
    """Methods as rows, the headline metrics as columns (fixed-width text)."""
    header = (f"{'method':<8} {'time (s)':>8} {'PSNR':>7} {'SSIM':>6} {'corr':>6} "
              f"{'FSC 0.5 (A)':>11} {'wedge FSC':>9}")
    rows = [header, "-" * len(header)]
    for name, m in metrics.items():
        rows.append(f"{name:<8} {seconds.get(name, float('nan')):>8.1f} {m['psnr']:>7.2f} "
                    f"{m['ssim']:>6.3f} {m['correlation']:>6.3f} "
                    f"{m['fsc05_resolution_A']:>11.1f} {m['wedge_fsc']:>9.3f}")
    return "\n".join(rows)


def _ranges(indices) -> str:
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

# -- commands: simulate, evaluate --


@cli.command()
@click.option("-o", "--output-dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tilts.mrc, tilts.tlt, ground_truth.mrc, simulation.json.")
@click.option("--shape", default="64,128,128", show_default=True, metavar="NZ,NY,NX",
              help="Tomogram (and ground truth) size in voxels.")
@click.option("--pixel-size", type=float, default=10.0, show_default=True,
              help="Voxel and detector pixel size in A.")
@click.option("--tilt-range", default="-60,60,3", show_default=True, metavar="MIN,MAX,STEP",
              help="Tilt range and step in degrees.")
@click.option("--dose-symmetric", is_flag=True,
              help="Acquire in the dose-symmetric order (dose accumulates accordingly).")
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
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed: the same seed gives the same files.")
@click.option("--force", is_flag=True, help="Overwrite earlier files in the folder.")
@_runtime_options
def simulate(output_dir, shape, pixel_size, tilt_range, dose_symmetric, dose, noise, snr,
             defocus, isolated, structures, particles, vesicles, filaments, seed, force):
    """Simulate a tilt series with its ground truth (to test and compare methods).

    The specimen (macromolecules, vesicles, filaments in ice) is built and projected on a
    grid twice as fine as the output, then binned, so reconstructions are not tested with
    their own projector.
    """
    from .simulate import SimulationConfig, simulate_tilt_series, write_simulation
    from .specimen import PlacementWarning

    shape_zyx = _int_triple(shape, "--shape")
    try:
        t_min, t_max, t_step = (float(v) for v in tilt_range.split(","))
    except ValueError:
        raise InputError(f"--tilt-range {tilt_range!r}: expected MIN,MAX,STEP") from None
    config = SimulationConfig(shape_zyx=shape_zyx, pixel_size_A=pixel_size, tilt_min_deg=t_min,
                              tilt_max_deg=t_max, tilt_step_deg=t_step,
                              dose_symmetric=dose_symmetric, total_dose_e_per_A2=dose,
                              noise=noise, snr=snr, defocus_um=defocus, isolated=isolated,
                              structures=tuple(str(p) for p in structures),
                              n_particles=particles, n_vesicles=vesicles, n_filaments=filaments,
                              seed=seed)
    if not force:
        from .simulate import OUTPUT_FILES

        for name in OUTPUT_FILES:
            if (output_dir / name).exists():
                raise InputError("exists; use --force to overwrite", output_dir / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PlacementWarning)
        result = simulate_tilt_series(config, progress=lambda m: click.echo(m, err=True))
    _echo_warnings(caught)
    files = write_simulation(result, output_dir, force=force)
    click.echo(f"wrote {', '.join(str(p) for p in files.values())}")


def _int_triple(text: str, option: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"{option} {text!r}: expected three positive sizes NZ,NY,NX")
    return values


@cli.command()
@click.argument("recon", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reference", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ground truth volume of the same shape (e.g. from `simulate`).")
@click.option("--max-tilt", type=float, default=None,
              help="Largest tilt of the data in degrees, for the missing-wedge FSC "
                   "[default: from --angles, else 60].")
@click.option("--angles", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The data's angles file (gives --max-tilt).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write every metric and the FSC curves as JSON.")
@click.option("--figure", "figure_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write XY/XZ slices and FSC curves (PNG, PDF or SVG).")
@click.option("--force", is_flag=True, help="Overwrite the JSON or figure if they exist.")
def evaluate(recon, reference, max_tilt, angles, json_path, figure_path, force):
    """Score a reconstruction against a reference: PSNR, SSIM, FSC, missing-wedge FSC.

    The reconstruction is first fitted to the reference by least squares (gain and offset,
    so units and polarity do not matter; a negative gain is reported as inverted contrast),
    then compared with the reference's range as data range.
    """
    import numpy as np

    from .io import read_tilt_angles, read_volume
    from .metrics import evaluate as evaluate_volumes
    from .metrics import write_metrics_json

    for path in (json_path, figure_path):
        if path is not None:
            _check_output(path, force)
    volume, voxel = read_volume(recon)
    truth, truth_voxel = read_volume(reference)
    voxel = voxel or truth_voxel or 1.0
    if max_tilt is None:
        max_tilt = float(np.abs(read_tilt_angles(angles)).max()) if angles else 60.0
    metrics = evaluate_volumes(volume, truth, voxel, max_tilt)
    click.echo(f"PSNR {metrics['psnr']:.2f} dB   SSIM {metrics['ssim']:.3f}   correlation "
               f"{metrics['correlation']:.3f}")
    click.echo(f"FSC 0.5: {metrics['fsc05_resolution_A']:.1f} A   FSC 0.143: "
               f"{metrics['fsc0143_resolution_A']:.1f} A   missing-wedge FSC "
               f"{metrics['wedge_fsc']:.3f}")
    if metrics.get("contrast_inverted"):
        click.echo("note: the reconstruction has inverted contrast relative to the reference")
    if json_path is not None:
        write_metrics_json(metrics, json_path, force=force)
        click.echo(f"wrote {json_path}")
    if figure_path is not None:
        from .figures import evaluation_figure

        evaluation_figure(volume, truth, metrics, figure_path, force=force,
                          title=f"{recon.name} vs {reference.name}")
        click.echo(f"wrote {figure_path}")

# -- commands: gaussian engine --


@cli.command()
@_stack_options
@_volume_options
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Optimisation steps [default: 600; with --resume: the saved run's].")
@click.option("--max-gaussians", type=click.IntRange(min=1), default=60_000, show_default=True,
              help="Upper bound on the model's size (memory and time grow with it).")
@click.option("--views-per-step", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tilt views rendered and compared per step.")
@click.option("--init", "init", default="sirt", show_default=True, metavar="sirt|wbp|FILE",
              help="What seeds the model: a SIRT or WBP reconstruction of the same data, a "
                   "tomogram (.mrc, same size and polarity as the output), or a state file "
                   "(.h5) to refine with new settings or data.")
@click.option("--tilt-weight", type=click.Choice(["cos", "uniform", "etgs"]), default="cos",
              show_default=True,
              help="Per-view weight of the loss: high tilts are thicker and noisier.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds initialisation, view order and densification.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="HDF5 state file, saved every --save-every steps, at the end and on Ctrl-C "
                   "[default: OUTPUT with .state.h5].")
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Save the state every N steps (0: only at the end).")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Continue an interrupted run from its state file.")
@click.option("--voxel-size", type=float, default=None,
              help="Voxel size of the written tomogram in A [default: the stack's pixel size].")
@_runtime_options
def reconstruct(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast, output,
                thickness, width, output_contrast, force, iterations, max_gaussians,
                views_per_step, init, tilt_weight, seed, state_path, save_every, resume_path,
                voxel_size):
    """Reconstruct STACK as adaptive 3D Gaussians (the CryoETGS method).

    The model is seeded from a classical reconstruction, then fitted to the views through a
    differentiable projector (tilt-weighted L1 + D-SSIM), growing where the fit needs it.
    The tomogram is the model voxelised at the stack's pixel size (or --voxel-size).

    \b
    Example:
      taichi-etgs reconstruct TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          -o TS_01_gs.mrc
    """
    from .preprocess import density_views
    from .reconstruct import GaussianReconstruction, ReconstructConfig
    from .state import input_checksum, load_state

    _check_output(output, force)
    state_path = state_path or output.with_name(output.name.removesuffix(".mrc") + ".state.h5")
    series = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning)
    shape = _volume_shape(series, thickness, width)
    checksum = input_checksum(series.data)
    views = density_views(series.data, contrast)

    if resume_path is not None:
        state = load_state(resume_path)
        _check_state_matches(state, checksum, shape, resume_path, force)
        saved = {k: v for k, v in state.config.items() if not k.startswith("_")}
        config = ReconstructConfig(**saved)
        if iterations is not None:
            config.iterations = iterations
        run = GaussianReconstruction(views, series.tilts_deg, shape[0], config, width=shape[2],
                                     params=state.params)
        run.restore(state)
        click.echo(f"resuming {resume_path} at iteration {run.iteration}", err=True)
    else:
        config = ReconstructConfig(iterations=iterations or 600, max_gaussians=max_gaussians,
                                   views_per_step=views_per_step, tilt_weight=tilt_weight,
                                   seed=seed, init=init if init in ("sirt", "wbp") else "sirt")
        initial_volume, params, params_view_scale = None, None, 1.0
        if init not in ("sirt", "wbp"):
            init_path = Path(init)
            if init_path.suffix.lower() in (".h5", ".hdf5"):
                state = load_state(init_path)
                _check_state_matches(state, checksum, shape, init_path, force=True)
                params = state.params
                params_view_scale = float(state.geometry.get("view_scale", 1.0))
            else:
                from .io import read_volume
                from .preprocess import to_output_polarity

                volume, _ = read_volume(init_path)
                # The tomogram is in the input's polarity (what this tool writes by default).
                initial_volume = to_output_polarity(volume, contrast, "input")
        seed_from = config.init if initial_volume is None and params is None else init
        click.echo(f"seeding the model ({seed_from})", err=True)
        run = GaussianReconstruction(views, series.tilts_deg, shape[0], config, width=shape[2],
                                     initial_volume=initial_volume, params=params,
                                     params_view_scale=params_view_scale)
        click.echo(f"{run.params.n} Gaussians to start with", err=True)

    def save(r: GaussianReconstruction) -> None:
        r.save_state(state_path, checksum, {"pixel_size_A": series.pixel_size_A,
                                            "source": str(series.source)})

    _run_with_progress(run, save, save_every, state_path)
    pixel = _pixel_size(series)
    out_shape, factor = shape, 1.0
    if voxel_size is not None:
        if voxel_size <= 0:
            raise InputError(f"--voxel-size must be positive, got {voxel_size}")
        factor = voxel_size / pixel
        out_shape = tuple(max(1, round(n / factor)) for n in shape)
    volume = run.tomogram(voxel_size=factor, shape_zyx=out_shape)
    _write_tomogram(output, volume, pixel * factor, contrast, output_contrast, force,
                    f"gaussians {run.params.n}")


def _state_geometry(state, path: Path) -> tuple[tuple[int, int, int], float]:
    """Tomogram shape (z, y, x) and pixel size (A) a state was made for."""
    shape = tuple(int(n) for n in state.geometry.get("shape_zyx", ()))
    if len(shape) != 3:
        raise InputError("holds no tomogram geometry (shape_zyx)", path)
    pixel = float(state.geometry.get("pixel_size_A", 0.0)) or 1.0
    return shape, pixel


@cli.command()
@click.argument("state_path", metavar="STATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--angles", required=True, metavar="F|LIST",
              help="Tilt angles to synthesise: an angles file (.tlt/.rawtlt/.mdoc/.aln) or a "
                   "range START:STOP:STEP in degrees (STOP included), e.g. -90:90:1.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Stack of synthetic views to write (MRC).")
@click.option("--size", default=None, metavar="W,H",
              help="Detector width and height in pixels [default: the tomogram's X and Y].")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True, help="Polarity of the views: dark, like raw cryo-EM images.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@_runtime_options
def project(state_path, angles, output, size, contrast, force):
    """Synthesise projections of a fitted model at any tilts, measured or not."""
    from .io import read_tilt_angles, write_stack
    from .kernels.gaussian_projector import project_gaussians
    from .state import load_state

    _check_output(output, force)
    state = load_state(state_path)
    shape, pixel = _state_geometry(state, state_path)
    tilts = _parse_angles(angles, read_tilt_angles)
    width, height = shape[2], shape[1]
    if size:
        try:
            width, height = (int(v) for v in size.split(","))
        except ValueError:
            raise InputError(f"--size {size!r}: expected W,H in pixels, e.g. 512,512") from None
        if width < 1 or height < 1:
            raise InputError(f"--size {size!r}: sizes must be positive")
    start = time.perf_counter()
    views = project_gaussians(state.params, tilts, height, width)
    seconds = time.perf_counter() - start
    views *= float(state.geometry.get("view_scale", 1.0))
    if contrast == "dark":
        views = -views
    write_stack(output, views.astype("float32"), pixel, force=force,
                labels=[f"taichi-etgs {__version__} project", " ".join(sys.argv[1:])[:80]])
    click.echo(f"wrote {output} ({len(tilts)} views of {width} x {height}; "
               f"{len(tilts) / max(seconds, 1e-9):.0f} views/s for {state.params.n} Gaussians)")


def _parse_angles(text: str, read_file):
    import numpy as np

    if Path(text).exists() or ":" not in text:
        return read_file(text)
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"--angles {text!r}: expected a file or START:STOP:STEP") from None
    if step <= 0 or stop < start:
        raise InputError(f"--angles {text!r}: STEP must be positive and STOP >= START")
    return np.arange(start, stop + step / 2, step)


@cli.command()
@click.argument("state_path", metavar="STATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Volume to write (MRC, Z Y X).")
@click.option("--voxel-size", type=float, default=None,
              help="Voxel size in A [default: the reconstruction's].")
@click.option("--shape", default=None, metavar="NZ,NY,NX",
              help="Grid size [default: the tomogram's extent at that voxel size].")
@click.option("--output-contrast", type=click.Choice(["bright", "dark"]), default="bright",
              show_default=True, help="Polarity of the volume.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@_runtime_options
def voxelize(state_path, output, voxel_size, shape, output_contrast, force):
    """Write a fitted model as a volume on any grid (finer, coarser, cropped)."""
    from .kernels.voxelizer import voxelize_gaussians
    from .state import load_state

    _check_output(output, force)
    state = load_state(state_path)
    model_shape, pixel = _state_geometry(state, state_path)
    voxel = pixel if voxel_size is None else voxel_size
    if voxel <= 0:
        raise InputError(f"--voxel-size must be positive, got {voxel}")
    factor = voxel / pixel
    grid = tuple(max(1, round(n / factor)) for n in model_shape)
    if shape:
        try:
            grid = tuple(int(v) for v in shape.split(","))
        except ValueError:
            grid = ()
        if len(grid) != 3 or min(grid) < 1:
            raise InputError(f"--shape {shape!r}: expected three positive sizes NZ,NY,NX")
    volume = voxelize_gaussians(state.params, grid, voxel_size=factor)
    # Back to the units the model was fitted in, on the level it sits on.
    volume = (volume * float(state.geometry.get("view_scale", 1.0))
              + float(state.geometry.get("background", 0.0)))
    _write_tomogram(output, volume, voxel, "bright", output_contrast, force,
                    f"voxelize {state.params.n} Gaussians")


@cli.command()
@click.argument("volume_path", metavar="VOLUME", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="State file to write (.h5): can seed `reconstruct --init`, or be exported.")
@click.option("--max-gaussians", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Number of Gaussians (the octree uses the whole budget).")
@click.option("--iterations", type=click.IntRange(min=0), default=300, show_default=True,
              help="Volume-loss fitting steps after the octree initialisation.")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True,
              help="How density looks in VOLUME: dark (the raw images' polarity, what IMOD, "
                   "AreTomo and this tool write by default) or bright.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@_runtime_options
def gaussianize(volume_path, output, max_gaussians, iterations, contrast, seed, force):
    """Fit Gaussians to an existing tomogram (from any program).

    Seeds the model with the octree and fits it to the volume; prints how well the
    voxelised model reproduces it (PSNR). The model sits on the volume's median, which it
    does not represent (below-median voxels, mostly noise, come back as the median).
    """
    from tqdm import tqdm

    from .convert import gaussianize as fit
    from .io import read_volume
    from .state import input_checksum, save_state

    _check_output(output, force)
    volume, voxel = read_volume(volume_path)
    if contrast == "dark":
        volume = -volume
    with tqdm(total=iterations, desc="fit", unit="it", file=sys.stderr, disable=None) as bar:
        result = fit(volume, max_gaussians=max_gaussians, iterations=iterations, seed=seed,
                     progress=lambda i, loss: (bar.set_postfix(loss=f"{loss:.4f}"),
                                               bar.update(i - bar.n)))
    geometry = {"shape_zyx": list(volume.shape), "model_shape_zyx": list(volume.shape),
                "pixel_size_A": voxel, "view_scale": 1.0, "background": result.background,
                "source": str(volume_path)}
    save_state(output, result.params, None, 0, np.random.default_rng(seed).bit_generator.state,
               {"gaussianize_iterations": iterations, "max_gaussians": max_gaussians},
               geometry, input_checksum(volume), force=True)
    click.echo(f"wrote {output}: {result.params.n} Gaussians; the voxelised model reproduces "
               f"{volume_path.name} at PSNR {result.psnr_db:.1f} dB")


@cli.command()
@click.argument("state_path", metavar="STATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write: .ply (3D Gaussian splatting viewers) or .csv.")
@click.option("--origin", type=click.Choice(["centre", "corner", "index"]), default="index",
              show_default=True,
              help="Coordinates in A from: the tomogram centre, its corner, or voxel 0's "
                   "centre (index: overlays the MRC in ChimeraX and napari).")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
def export(state_path, output, origin, force):
    """Export a model's Gaussians (centres, scales, rotations, densities) for viewers."""
    from .convert import export_gaussians
    from .state import load_state

    state = load_state(state_path)
    shape, pixel = _state_geometry(state, state_path)
    export_gaussians(state.params, output, voxel_size_A=pixel, origin=origin, shape_zyx=shape,
                     force=force)
    click.echo(f"wrote {output} ({state.params.n} Gaussians, {pixel:g} A/voxel)")


def _check_state_matches(state, checksum: str, shape, path: Path, force: bool) -> None:
    geometry_shape = tuple(state.geometry.get("shape_zyx", ()))
    if state.input_checksum != checksum and not force:
        raise InputError("was made from other data (input checksum differs); use --force to "
                         "use it anyway", path)
    if geometry_shape and geometry_shape != tuple(shape) and not force:
        raise InputError(f"was made for a {'x'.join(map(str, geometry_shape))} (z, y, x) "
                         f"tomogram, not {'x'.join(map(str, shape))}; use --force to use it "
                         "anyway", path)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system ending the job), handled like Ctrl-C but exiting with 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _run_with_progress(run, save, save_every: int, state_path: Path) -> None:
    """Iterate with a progress bar; save the state periodically, at the end and on Ctrl-C
    or SIGTERM."""
    import signal

    from tqdm import tqdm

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _iterate(run, save, save_every, state_path, tqdm)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _iterate(run, save, save_every: int, state_path: Path, tqdm) -> None:
    start_iteration = run.iteration
    with tqdm(total=run.config.iterations, initial=start_iteration, desc="Gaussians",
              unit="it", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        def progress(info) -> None:
            bar.set_postfix(loss=f"{info.loss:.4f}", n=info.n_gaussians, refresh=False)
            bar.update(info.iteration - bar.n)
            if info.message:
                bar.write(info.message, file=sys.stderr)

        try:
            run.run(progress=progress, checkpoint=save, save_every=save_every)
        except KeyboardInterrupt:
            bar.close()
            save(run)
            click.echo(f"interrupted at iteration {run.iteration}; state saved to "
                       f"{state_path}; continue with --resume {state_path}", err=True)
            raise
    save(run)
    click.echo(f"state saved to {state_path}", err=True)


def main(args: list[str] | None = None) -> int:
    """Entry point; returns the exit code (so tests can call it without a subprocess).

    User errors print one line, ``error: ...``, and return 2; Ctrl-C returns 130.
    """
    try:
        cli.main(args=args, prog_name="taichi-etgs", standalone_mode=False)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt (and so SIGTERM's Terminated) into Abort.
        if isinstance(exc.__cause__, Terminated):
            click.echo("terminated", err=True)
            return 143
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except MemoryError:
        click.echo("error: out of memory; reduce the problem (e.g. --binning 2 or a smaller "
                   "--thickness)", err=True)
        return 1
    except Exception as exc:
        if os.environ.get("TAICHI_ETGS_DEBUG"):
            raise
        click.echo(f"error: internal error ({type(exc).__name__}: {exc}); please report it. "
                   "Set TAICHI_ETGS_DEBUG=1 to see the traceback.", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
