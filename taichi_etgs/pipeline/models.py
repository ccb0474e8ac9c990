"""Fitted models: synthetic projections, volumes on any grid, models from any tomogram,
exports for viewers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import sizes
from .outputs import check_writable
from .resume import RunRecord, state_geometry
from .session import Session
from .tomograms import check_finite, mrc_origin, relative_to_mean, write_tomogram

__all__ = ["GaussianizeResult", "model_volume", "run_export", "run_gaussianize",
           "run_project", "run_voxelize", "state_contrast"]


def _load_model(state_path, session: Session):
    from ..gaussian.state import load_state

    state = load_state(state_path)
    session.add_input("state", state_path)
    shape, pixel = state_geometry(state, state_path)
    return state, shape, pixel


def run_project(state_path: str | PathLike, angles: str | PathLike | Sequence[float],
                output: str | PathLike, *, size: tuple[int, int] | None = None,
                contrast: str = "dark", force: bool = False,
                session: Session | None = None) -> np.ndarray:
    """Synthesise views of a fitted model at any tilts; writes the stack and its angles
    (OUTPUT with .tlt) beside it. Returns the tilts.

    angles: an angles file (.tlt/.rawtlt/.mdoc/.aln) or the tilts in degrees.
    size: detector (width, height) in pixels (default: the tomogram's X and Y).
    contrast: "dark" (like raw images) or "bright".
    """
    from .._atomic import write_text_atomic
    from ..io import read_tilt_angles, write_stack

    session = session or Session()
    output = check_writable(output, force, probe=True)
    tlt_path = output.with_suffix(".tlt")
    if tlt_path == output:
        raise InputError("is the name of the .tlt written beside the views; name the stack "
                         ".mrc", output)
    check_writable(tlt_path, force, probe=True)
    state, shape, pixel = _load_model(state_path, session)
    if isinstance(angles, (str, PathLike)):
        tilts = read_tilt_angles(angles)
        session.add_input("angles", angles)
    else:
        tilts = np.asarray(angles, dtype=np.float64)
    width, height = shape[2], shape[1]
    if size is not None:
        width, height = (int(v) for v in size)
        if width < 1 or height < 1:
            raise InputError(f"--size {width},{height}: sizes must be positive")
    from ..resources import RunSize

    # The views, their scaled and polarity copies: three stacks' worth.
    sizes.check_resources(RunSize("wbp", 0, height, width, len(tilts), width),
                          [output.parent], final=True,
                          advice="fewer views (--angles) or a smaller --size")
    session.start_compute()
    from ..gaussian.render import project_gaussians

    start = time.perf_counter()
    views = project_gaussians(state.params, tilts, height, width)
    seconds = time.perf_counter() - start
    views *= state.geometry.view_scale
    if contrast == "dark":
        views = -views
    check_finite(views, state_path)
    write_stack(output, views.astype("float32"), pixel, force=force,
                labels=session.labels(f"project {state.params.n} Gaussians"))
    session.write_sidecar(output, {"what": "synthetic views", "n_views": len(tilts),
                                   "tilts_deg": np.asarray(tilts), "size_xy": [width, height],
                                   "pixel_size_A": pixel, "contrast": contrast,
                                   "n_gaussians": state.params.n,
                                   "angles_file": str(tlt_path)})
    write_text_atomic(tlt_path, "".join(f"{a:.4f}\n" for a in np.asarray(tilts, float)))
    session.say(f"wrote {output} ({len(tilts)} views of {width} x {height}; "
                f"{len(tilts) / max(seconds, 1e-9):.0f} views/s for {state.params.n} "
                f"Gaussians) and its angles {tlt_path}")
    return tilts


def run_voxelize(state_path: str | PathLike, output: str | PathLike, *,
                 voxel_size: float | None = None,
                 shape: tuple[int, int, int] | None = None, output_contrast: str = "input",
                 force: bool = False, session: Session | None = None) -> np.ndarray:
    """Write a fitted model as a volume on any grid (finer, coarser, cropped); returns it
    (bright, in the model's units, on the level of the reconstruction's tomogram).

    The volume is what ``reconstruct`` writes for the model (the Gaussians and the ice
    slab, relative to the mean of the reconstruction's box: a ``shape`` that crops it
    keeps the tomogram's level), and in the same polarity: ``output_contrast`` "input" is
    that of the stack the model was fitted to (dark unless it was read with
    ``--contrast bright``), or "bright" or "dark".
    voxel_size: A (default: the reconstruction's). shape: the grid (nz, ny, nx) (default:
    the tomogram's extent at that voxel size). The MRC origin places it over the
    reconstruction's tomogram.
    """
    from ..resources import RunSize

    session = session or Session()
    if output_contrast not in ("input", "bright", "dark"):
        raise InputError(f"unknown output contrast {output_contrast!r}; expected input, "
                         "bright or dark")
    output = check_writable(output, force, probe=True)
    state, model_shape, pixel = _load_model(state_path, session)
    voxel = pixel if voxel_size is None else float(voxel_size)
    if not (np.isfinite(voxel) and voxel > 0):
        raise InputError(f"--voxel-size must be a positive number of A, got {voxel}")
    factor = voxel / pixel
    grid = tuple(max(1, round(n / factor)) for n in model_shape)
    if shape is not None:
        grid = tuple(int(v) for v in shape)
        if len(grid) != 3 or min(grid) < 1:
            raise InputError(f"--shape {shape}: expected three positive sizes NZ,NY,NX")
    # The volume, its scaled copy and its polarity: three volumes, as for wbp.
    sizes.check_resources(RunSize("wbp", 0, grid[1], grid[2], grid[0], grid[2]),
                          [output.parent], final=True,
                          advice="a larger --voxel-size or a smaller --shape")
    session.start_compute()
    volume = model_volume(state, grid, factor)
    if shape is None:  # the reconstruction's box: on its own mean, as reconstruct writes it
        volume = relative_to_mean(volume)
    else:  # part of it, or more: on the level of the reconstruction's tomogram
        volume -= np.float32(np.mean(model_volume(state, model_shape), dtype=np.float64))
    origin = mrc_origin(grid, voxel, state.geometry.frame_A())
    write_tomogram(session, output, volume, voxel, state_contrast(state), output_contrast,
                   force, f"voxelize {state.params.n} Gaussians",
                   {"n_gaussians": state.params.n}, origin)
    return volume


def model_volume(state, shape_zyx, voxel_size: float = 1.0) -> np.ndarray:
    """A saved model voxelised on a centred grid of ``voxel_size`` tomogram voxels, as
    the run that saved it made its tomogram: the Gaussians and the ice slab, in the units
    of the views it was fitted to (bright). [nz, ny, nx]"""
    from ..gaussian.background import SlabBackground
    from ..gaussian.render import voxelize_gaussians

    volume = voxelize_gaussians(state.params, shape_zyx, voxel_size=voxel_size)
    slab = state.config.get("_slab")  # the run's fitted slab (edge 1 voxel)
    if slab is not None:
        slab = SlabBackground.from_vector(slab)
        if slab.density != 0.0:
            volume += slab.volume(shape_zyx, voxel_size)
    # As GaussianReconstruction.tomogram computes it: the two agree to float32 rounding.
    return (volume * state.geometry.view_scale).astype(np.float32)


def state_contrast(state) -> str:
    """The polarity of the images (or volume) a saved model was fitted to: "dark" or
    "bright" (states saved before it was recorded: their run's, else "dark")."""
    contrast = state.geometry.contrast
    if contrast is None:
        record = RunRecord.from_state(state)
        contrast = record.source.contrast if record is not None else "dark"
    return contrast


@dataclass
class GaussianizeResult:
    """A model fitted to a tomogram: its state file, size and how well it reproduces it."""

    output: Path
    n_gaussians: int
    psnr_db: float


def run_gaussianize(volume_path: str | PathLike, output: str | PathLike, *,
                    max_gaussians: int = 50_000, iterations: int = 300,
                    contrast: str = "dark", seed: int = 0, force: bool = False,
                    session: Session | None = None) -> GaussianizeResult:
    """Fit Gaussians to a tomogram from any program; writes the model as a state file.

    contrast: how density looks in the volume ("dark": the raw images' polarity).
    """
    from ..gaussian.gaussianize import gaussianize
    from ..gaussian.state import ModelGeometry, input_checksum, save_state
    from ..io import read_volume

    session = session or Session()
    output = check_writable(output, force, probe=True)
    volume, voxel = read_volume(volume_path)
    session.add_input("volume", volume_path)
    if contrast == "dark":
        volume = -volume
    session.start_compute()
    with session.progress(iterations, "fit") as bar:
        result = gaussianize(volume, max_gaussians=max_gaussians, iterations=iterations,
                             seed=seed,
                             progress=lambda i, loss: bar.update(i, loss=f"{loss:.4f}"))
    geometry = ModelGeometry(shape_zyx=tuple(volume.shape), model_shape_zyx=tuple(volume.shape),
                             pixel_size_A=voxel, background=result.background,
                             source=str(volume_path), contrast=contrast)
    save_state(output, result.params, None, 0, np.random.default_rng(seed).bit_generator.state,
               {"gaussianize_iterations": iterations, "max_gaussians": max_gaussians},
               geometry, input_checksum(volume), force=True)
    session.write_sidecar(output, {"what": "Gaussian model state (gaussianize)",
                                   "n_gaussians": result.params.n, "psnr_db": result.psnr_db,
                                   "shape_zyx": list(volume.shape), "voxel_size_A": voxel})
    session.say(f"wrote {output}: {result.params.n} Gaussians; the voxelised model reproduces "
                f"{Path(volume_path).name} at PSNR {result.psnr_db:.1f} dB")
    return GaussianizeResult(output, result.params.n, result.psnr_db)


def run_export(state_path: str | PathLike, output: str | PathLike, *,
               origin: str = "index", force: bool = False,
               session: Session | None = None) -> Path:
    """Export a model's Gaussians (.ply for 3D Gaussian-splatting viewers, or .csv).

    origin: coordinates in A from "centre", "corner" or "index" (voxel 0's centre).
    """
    from ..io.export import export_gaussians

    session = session or Session()
    state, shape, pixel = _load_model(state_path, session)
    path = export_gaussians(state.params, output, voxel_size_A=pixel, origin=origin,
                            shape_zyx=shape, force=force)
    session.write_sidecar(path, {"what": "Gaussian model export",
                                 "n_gaussians": state.params.n, "voxel_size_A": pixel,
                                 "origin": origin})
    session.say(f"wrote {path} ({state.params.n} Gaussians, {pixel:g} A/voxel)")
    return path


