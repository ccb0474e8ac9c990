"""Working with a fitted model: ``project``, ``voxelize``, ``gaussianize``, ``export``."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline.models import run_export, run_gaussianize, run_project, run_voxelize
from .app import cli, command, session
from .options import parse_angles, parse_int_triple, parse_size, runtime_options

_STATE = click.argument("state_path", metavar="STATE",
                        type=click.Path(dir_okay=False, path_type=Path))


@cli.command()
@command
@_STATE
@click.option("--angles", required=True, metavar="F|LIST",
              help="Tilt angles to synthesise: an angles file (.tlt/.rawtlt/.mdoc/.aln) or a "
                   "range START:STOP:STEP in degrees (STOP included), e.g. -90:90:1.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Stack of synthetic views to write (MRC), with its sidecar OUTPUT.json.")
@click.option("--size", default=None, metavar="W,H",
              help="Detector width and height in pixels [default: the tomogram's X and Y].")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True, help="Polarity of the views: dark, like raw cryo-EM images.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@runtime_options
def project(state_path, angles, output, size, contrast, force):
    """Synthesise projections of a fitted model at any tilts, measured or not.

    The angles are written beside the stack (OUTPUT with .tlt), one per line, as IMOD
    and this tool read them.

    \b
    Example:
      taichi-etgs project TS_01_gs.state.h5 --angles -90:90:2 -o TS_01_full_range.mrc
    """
    run_project(state_path, parse_angles(angles), output,
                size=None if size is None else parse_size(size), contrast=contrast,
                force=force, session=session())


@cli.command()
@command
@_STATE
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Volume to write (MRC, Z Y X), with its sidecar OUTPUT.json.")
@click.option("--voxel-size", type=float, default=None, metavar="A",
              help="Voxel size in A [default: the reconstruction's].")
@click.option("--shape", default=None, metavar="NZ,NY,NX",
              help="Grid size [default: the tomogram's extent at that voxel size].")
@click.option("--output-contrast", type=click.Choice(["input", "bright", "dark"]),
              default="input", show_default=True,
              help="Polarity of the volume: like the images the model was fitted to (what "
                   "reconstruct writes), or as asked.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@runtime_options
def voxelize(state_path, output, voxel_size, shape, output_contrast, force):
    """Write a fitted model as a volume on any grid (finer, coarser, cropped).

    On the reconstruction's grid the volume is the tomogram reconstruct wrote: the
    Gaussians and the ice slab, relative to the mean, in the polarity of the input
    images. The MRC origin places the volume over the reconstruction's tomogram.

    \b
    Example:
      taichi-etgs voxelize TS_01_gs.state.h5 --voxel-size 5 -o TS_01_gs_fine.mrc
    """
    run_voxelize(state_path, output, voxel_size=voxel_size,
                 shape=None if not shape else parse_int_triple(shape, "--shape"),
                 output_contrast=output_contrast, force=force, session=session())


@cli.command()
@command
@click.argument("volume_path", metavar="VOLUME", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="State file to write (.h5): can seed `reconstruct --init`, or be exported.")
@click.option("--max-gaussians", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Number of Gaussians (the octree uses the whole budget).")
@click.option("--iterations", type=click.IntRange(min=0), metavar="N", default=300,
              show_default=True,
              help="Volume-loss fitting steps after the octree initialisation.")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True,
              help="How density looks in VOLUME: dark (the raw images' polarity, what IMOD, "
                   "AreTomo and this tool write by default) or bright.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@runtime_options
def gaussianize(volume_path, output, max_gaussians, iterations, contrast, seed, force):
    """Fit Gaussians to an existing tomogram (from any program).

    Seeds the model with the octree and fits it to the volume; prints how well the
    voxelised model reproduces it (PSNR). The model sits on the volume's median, which it
    does not represent (below-median voxels, mostly noise, come back as the median).

    \b
    Example:
      taichi-etgs gaussianize TS_01_sirt.mrc -o TS_01_model.h5 --max-gaussians 100000
      taichi-etgs export TS_01_model.h5 -o TS_01_model.ply
    """
    run_gaussianize(volume_path, output, max_gaussians=max_gaussians, iterations=iterations,
                    contrast=contrast, seed=seed, force=force, session=session())


@cli.command()
@command
@_STATE
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write: .ply (3D Gaussian splatting viewers) or .csv.")
@click.option("--origin", type=click.Choice(["centre", "corner", "index"]), default="index",
              show_default=True,
              help="Coordinates in A from: the tomogram centre, its corner, or voxel 0's "
                   "centre (index: overlays the MRC in ChimeraX and napari).")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
def export(state_path, output, origin, force):
    """Export a model's Gaussians (centres, scales, rotations, densities) for viewers.

    \b
    Example:
      taichi-etgs export TS_01_gs.state.h5 -o TS_01_gs.ply
    """
    run_export(state_path, output, origin=origin, force=force, session=session())
