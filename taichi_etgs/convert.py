"""Convert an existing tomogram into Gaussians, and export Gaussians for viewers.

:func:`gaussianize` fits the Gaussian model (design.md section 3) directly to a volume
(a tomogram from any program, or a map): octree initialisation
(:func:`taichi_etgs.init.init_from_volume`), then Adam on a volume loss, the squared
difference between the voxelised model (:func:`~taichi_etgs.kernels.voxelizer.voxelize_gaussians`,
plus a constant background) and the volume.

:func:`export_gaussians` writes a model as CSV (one row per Gaussian, Angstrom) or as a
binary PLY that 3D Gaussian-splatting viewers open.

Background
----------
A sum of Gaussians with positive densities is positive, so the model represents
``volume - background`` and cannot go below ``background``. The default is the volume's
median, what :func:`~taichi_etgs.init.init_from_volume` subtracts by default: most voxels of
a tomogram are ice, whose level would otherwise cost Gaussians everywhere (and whose
below-median half is noise, not worth representing). The price: voxels below the median
are reproduced as the median. Measured on the package's phantom
(:func:`taichi_etgs.phantom.make_phantom`, 64 x 128 x 128, 20k Gaussians, 100 iterations):
2.8 % of the voxels lie below the ice level and hold 97 % of the remaining squared error,
PSNR 32.3 dB, correlation 0.98; with ``background`` at the volume's minimum, 44.3 dB and
0.999, but each iteration costs about 2.5 times more (the ice needs many medium-sized
Gaussians). For a map with a flat floor (zero solvent, a simulated volume), pass that floor.

Units and normalisation of the fit
----------------------------------
The fit runs on ``z = (volume - background) / std(volume)``. Densities are scaled back by
``std`` at the end, so the returned model is in the volume's units and
``voxelize_gaussians(result.params, shape) + result.background`` approximates the volume.
Why:

- The loss ``mean((model - z)^2)`` is then the MSE divided by the volume's variance
  (data-independent: 1 is the error of the best constant, the mean), and its gradient has
  the same size for every data set. Adam's steps do not depend on the gradient's scale
  anyway; what the normalisation fixes is the *parameter* scale: ``density_raw`` is a
  softplus argument, close to the density itself for densities above ~2 and to its
  logarithm below ~0.5, so a learning rate for it means the same thing only when densities
  are O(1), as they are on ``z``. On raw counts (densities ~1e3) the same step would be
  negligible; on a volume in 1e-3 units it would be a relative change.
- The initialisation's thresholds and the reported loss are data-independent too.

Learning rates (:data:`GAUSSIANIZE_LR`)
---------------------------------------
Unlike a tilt-series fit, the volume loss sees every voxel directly and the initialisation
is already close (each Gaussian sits on its cell's centroid with the cell's mass), so the fit
is a local polish, and it can take large steps:

- ``means_xyz``: 0.05 -> 0.005 voxel per step, **in voxels** (not in scene extents as in
  :data:`taichi_etgs.optim.DEFAULT_LR`): the detail to reproduce is voxel-sized whatever the
  volume's size, and the finest Gaussians have a std of 1 voxel; a Gaussian can move a
  couple of voxels over 100 steps of consistent sign, and no further.
- ``log_scales``: 0.1 -> 0.01, a relative size change per step. The one that matters most:
  the octree's scales (half a cell) make neighbouring Gaussians overlap for a smooth
  lattice, and sharp features need them to shrink by tens of percent quickly.
- ``quats_wxyz``: 0.05 -> 0.005 (about 6 degrees per step for a unit quaternion at start).
- ``density_raw``: 0.1 -> 0.01 (about 7 % of an O(1) density per step).

Each rate decays log-linearly by a factor of 10 over the run
(:func:`taichi_etgs.optim.lr_schedule`) after a short warm-up (:data:`WARMUP_STEPS`): Adam's
first step moves *every* parameter by about its learning rate whatever its gradient; the
warm-up keeps those steps small while the moments settle. Measured on the phantom above
(normalised loss after 100 iterations, 0.437 at the start): 0.056 at 0.25x these rates,
0.040 at 0.5x, 0.037 with these, 0.036 at 2x; the below-background voxels alone account
for 0.033 (see "Background"), so larger rates gain little and risk stability. Of the four,
the scales' rate matters most.

Frozen coarse Gaussians
-----------------------
Gaussians whose largest scale exceeds ``freeze_scale`` (2 voxels: the octree's cells of 8
voxels and more) keep their initial parameters, and their field is voxelised once. They
are the few leaves covering weak, smooth regions (705 of 20k on the phantom), but a
Gaussian's 4-sigma footprint is about 33 times its cell's volume at every octree level, so
together they cost more per pass than all the fine ones (72 % of the voxel evaluations
there). Freezing them made the 100 iterations 1.5 times faster (35 s instead of 53 s on two
busy cores) for a final loss of 0.0373 instead of 0.0366. ``freeze_scale=inf`` fits every
Gaussian.

Export coordinates
------------------
The model holds centred voxel coordinates (design.md section 2: voxel ``i`` of an axis of
length ``n`` is at ``i + 0.5 - n/2``). :func:`export_gaussians` converts them to Angstrom with
``voxel_size_A`` and one of three origins (``origin``):

- ``"centre"`` (default): ``x_A = x * voxel_size_A``; (0, 0, 0) is the tomogram's centre.
- ``"corner"``: ``x_A = (x + nx/2) * voxel_size_A``; the tomogram's box fills
  ``[0, nx * voxel_size_A)`` and voxel ``i``'s centre is at ``(i + 0.5) * voxel_size_A``.
- ``"index"``: ``x_A = (x + nx/2 - 0.5) * voxel_size_A``; voxel ``i``'s centre is at
  ``i * voxel_size_A``, which is where ChimeraX and napari draw voxel ``i`` of the MRC file
  (with the header origin at 0), so the Gaussians overlay the written tomogram.

``"corner"`` and ``"index"`` need the volume's ``shape_zyx``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from ._atomic import atomic_output
from .errors import InputError
from .gaussians import GaussianParams, density_raw_from_densities, normalize_quats
from .pipeline.outputs import check_writable

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_FORMATS",
    "EXPORT_ORIGINS",
    "GAUSSIANIZE_LR",
    "GaussianizeResult",
    "export_gaussians",
    "gaussianize",
    "ply_properties",
]

#: ``(lr_init, lr_final)`` per parameter group for :func:`gaussianize`; positions in voxels,
#: the rest unitless (module docstring).
GAUSSIANIZE_LR: dict[str, tuple[float, float]] = {
    "means_xyz": (5e-2, 5e-3),
    "log_scales": (1e-1, 1e-2),
    "quats_wxyz": (5e-2, 5e-3),
    "density_raw": (1e-1, 1e-2),
}
#: Iterations over which the learning rates rise from 1 % to their schedule.
WARMUP_STEPS = 10

#: Column names of the CSV export, in order.
CSV_COLUMNS: tuple[str, ...] = ("x_A", "y_A", "z_A", "scale1_A", "scale2_A", "scale3_A",
                                "qw", "qx", "qy", "qz", "density")
#: Formats :func:`export_gaussians` writes.
EXPORT_FORMATS: tuple[str, ...] = ("csv", "ply")
#: Coordinate origins :func:`export_gaussians` accepts (module docstring).
EXPORT_ORIGINS: tuple[str, ...] = ("centre", "corner", "index")

#: Zeroth-order real spherical harmonic, ``1 / (2 sqrt(pi))``: 3DGS viewers show colour
#: ``0.5 + SH_C0 * f_dc``.
SH_C0 = 0.28209479177387814
#: Higher-order SH coefficients of a degree-3 3DGS model (``3 * 16 - 3``).
N_SH_REST = 45
#: Quantile of the densities that maps to full opacity / white in the PLY's 3DGS fields.
PLY_DENSITY_QUANTILE = 0.99
#: Normalised densities are clipped to ``[eps, 1 - eps]`` before the logit.
PLY_OPACITY_EPS = 1e-4


@dataclass
class GaussianizeResult:
    """What :func:`gaussianize` returns.

    params: the fitted model, raw parameters in the working precision, densities in the
        volume's units (above ``background``). [N]
    background: the level the model sits on (by default the volume's median): the model
        approximates ``volume - background``.
    psnr_db: PSNR of ``voxelize_gaussians(params, shape) + background`` against the volume,
        dB, with the volume's ``max - min`` as data range.
    losses: loss per iteration, evaluated before that iteration's step: the MSE between the
        voxelised model (+ background) and the volume, divided by the volume's variance.
        [iterations]
    final_loss: the same loss for the returned model.
    seconds: wall time of the whole call.
    """

    params: GaussianParams
    background: float
    psnr_db: float
    losses: list[float] = field(default_factory=list)
    final_loss: float = float("nan")
    seconds: float = 0.0


def _check_volume(volume_zyx: np.ndarray) -> np.ndarray:
    v = np.asarray(volume_zyx)
    if v.ndim != 3 or v.size == 0:
        raise InputError(f"volume must be a non-empty 3-D array (nz, ny, nx); got shape "
                         f"{v.shape}")
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise InputError(f"volume must hold real numbers; got dtype {v.dtype}")
    if not np.all(np.isfinite(v)):
        raise InputError("volume contains NaN or infinite values")
    return v


def _psnr_db(mse: float, data_range: float) -> float:
    """``10 log10(range^2 / mse)``; inf for an exact fit."""
    return float("inf") if mse <= 0 else float(10.0 * math.log10(data_range ** 2 / mse))


def _concat(a: GaussianParams, b: GaussianParams) -> GaussianParams:
    """The Gaussians of ``a`` then those of ``b``. [N_a + N_b]"""
    return GaussianParams(*(np.concatenate([x, y]) for x, y in
                            zip((a.means_xyz, a.log_scales, a.quats_wxyz, a.density_raw),
                                (b.means_xyz, b.log_scales, b.quats_wxyz, b.density_raw))))


def _all_finite(p: GaussianParams) -> bool:
    return all(bool(np.all(np.isfinite(a))) for a in
               (p.means_xyz, p.log_scales, p.quats_wxyz, p.density_raw))


def gaussianize(volume_zyx: np.ndarray, *, max_gaussians: int = 50_000,
                iterations: int = 300, seed: int = 0,
                progress: Callable[[int, float], None] | None = None,
                background: float | None = None, lr_scale: float = 1.0,
                freeze_scale: float = 2.0) -> GaussianizeResult:
    """Fit Gaussians to a volume: octree initialisation, then Adam on a volume L2 loss.

    See the module docstring for the background, the normalisation, the learning rates and
    the frozen coarse Gaussians. The volume is expected in positive-density polarity (bright
    particles): the model represents only what stands above ``background``. Negate a
    dark-contrast tomogram first.

    Parameters
    ----------
    volume_zyx: the tomogram or map, any real dtype. [nz, ny, nx]
    max_gaussians: the model holds at most this many Gaussians (all seeded by the octree).
    iterations: Adam steps (each one voxelisation and its backward pass); 0 returns the
        initial model.
    seed: seeds the initialisation's tie-breaking; the result is deterministic on the CPU.
    progress: called after every iteration as ``progress(iteration, loss)``, ``iteration``
        counting completed steps from 1 and ``loss`` the normalised loss of that step (a
        step undone after a NaN is reported again when redone).
    background: the level the model sits on, volume units; None: the volume's median.
    lr_scale: multiplies every learning rate of :data:`GAUSSIANIZE_LR`.
    freeze_scale: Gaussians of the initial model whose largest scale exceeds this (voxels)
        are not optimised; ``float("inf")``: optimise all.

    Returns
    -------
    GaussianizeResult: the model (in the volume's units), background, PSNR and losses.

    Raises
    ------
    InputError: not a non-empty 3-D finite real volume; a constant volume (nothing to fit);
        ``max_gaussians < 1``; ``iterations < 0``; ``lr_scale <= 0``; ``freeze_scale <= 0``;
        a non-finite ``background``; the fit kept producing non-finite values even with
        learning rates divided by 1000.
    """
    from . import runtime
    from .init import init_from_volume
    from .kernels.voxelizer import voxelize_gaussians, voxelize_gaussians_backward
    from .optim import Adam, lr_schedule

    t_start = time.perf_counter()
    v = _check_volume(volume_zyx)
    if int(max_gaussians) < 1:
        raise InputError(f"max_gaussians must be >= 1; got {max_gaussians}")
    if int(iterations) < 0:
        raise InputError(f"iterations must be >= 0; got {iterations}")
    if not (lr_scale > 0 and math.isfinite(lr_scale)):
        raise InputError(f"lr_scale must be a positive number; got {lr_scale}")
    if not freeze_scale > 0:
        raise InputError(f"freeze_scale must be > 0 voxels; got {freeze_scale}")
    if background is not None and not math.isfinite(background):
        raise InputError(f"background must be a finite level; got {background}")
    iterations = int(iterations)
    shape = tuple(int(n) for n in v.shape)

    v64 = v.astype(np.float64, copy=False)
    background = float(np.median(v64)) if background is None else float(background)
    std = float(np.std(v64))
    data_range = float(v64.max() - v64.min())
    if not (std > 0 and data_range > 0):
        raise InputError("the volume is constant; there is nothing to fit")

    cfg = runtime.ensure_initialized()
    dtype = np.float64 if cfg.precision == "f64" else np.float32
    target = ((v64 - background) / std).astype(dtype)
    n_vox = target.size
    init = init_from_volume(target, int(max_gaussians), seed=seed,
                            background=0.0).astype(dtype)
    # Coarse Gaussians stay as initialised, and their field is computed once (see the
    # module docstring, "Frozen coarse Gaussians").
    frozen = init.scales().max(axis=1) > freeze_scale
    params = init.subset(~frozen)
    fixed = (voxelize_gaussians(init.subset(frozen), shape) - target if frozen.any()
             else -target)

    def loss_and_residual(p: GaussianParams) -> tuple[float, np.ndarray]:
        residual = voxelize_gaussians(p, shape)
        residual += fixed
        # float64 accumulation: a float32 sum of 1e6+ squares loses digits.
        r64 = residual.ravel().astype(np.float64)
        return float(np.dot(r64, r64)) / n_vox, residual

    opt = Adam(params, {g: lr_scale * lr[0] for g, lr in GAUSSIANIZE_LR.items()})
    losses: list[float] = []
    backoff = 1.0  # halved at every rollback
    good = (params.copy(), opt.state())  # the model before the latest step
    it = 0
    while it < iterations:
        loss, residual = loss_and_residual(params)
        # d/dmodel of mean((model - z)^2) is 2 (model - z) / n_vox.
        residual *= dtype(2.0 / n_vox)
        grads = voxelize_gaussians_backward(params, residual)
        if not (math.isfinite(loss) and _all_finite(grads)):
            # The latest step broke the model (a scale blown up, say): undo it and retry
            # with halved steps. Copies of N x 11 parameters cost little next to a pass.
            backoff *= 0.5
            if backoff < 1e-3:
                raise InputError("gaussianize: the fit kept producing NaN/Inf even at 1/1000 "
                                 "of the learning rates; check the input volume")
            params, opt = good[0].copy(), Adam.from_state(good[1])
            if it > 0:  # redo the step that broke it (its loss was the good model's)
                losses.pop()
                it -= 1
            continue
        good = (params.copy(), opt.state())
        opt.set_lr({g: lr_scale * backoff * lr_schedule(it, lr0, lr1, iterations,
                                                        warmup_steps=WARMUP_STEPS)
                    for g, (lr0, lr1) in GAUSSIANIZE_LR.items()})
        opt.step(params, grads)
        losses.append(loss)
        it += 1
        if progress is not None:
            progress(it, loss)

    final_loss, _ = loss_and_residual(params)
    if not (math.isfinite(final_loss) and _all_finite(params)):
        params = good[0]
        final_loss, _ = loss_and_residual(params)
    # The frozen Gaussians first (the octree's coarse-first order is kept for them).
    params = _concat(init.subset(frozen), params)
    # Back to the volume's units: the field is linear in the densities.
    rho = params.densities().astype(np.float64) * std
    rho = np.maximum(rho, np.finfo(dtype).tiny)  # softplus_inverse needs rho > 0
    params.density_raw = density_raw_from_densities(rho).astype(dtype)
    mse = final_loss * std * std  # the loss is MSE / variance, and var = std^2
    return GaussianizeResult(params=params, background=background,
                             psnr_db=_psnr_db(mse, data_range), losses=losses,
                             final_loss=final_loss, seconds=time.perf_counter() - t_start)


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------

def ply_properties(sh_rest: bool = False) -> tuple[str, ...]:
    """Vertex property names of the PLY export, in file order (all ``float``).

    The 3DGS layout first (``x y z nx ny nz f_dc_0..2 [f_rest_0..44] opacity scale_0..2
    rot_0..3``, as the reference implementation's ``save_ply`` writes it), then this
    project's physical fields ``sx sy sz density``. See :func:`export_gaussians`.
    """
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    if sh_rest:
        names += [f"f_rest_{i}" for i in range(N_SH_REST)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
              "sx", "sy", "sz", "density"]
    return tuple(names)


def _export_format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in EXPORT_FORMATS:
            ext = f"the extension {path.suffix!r}" if path.suffix else "a name without extension"
            raise InputError(f"cannot tell the export format from {ext}: name the file .ply "
                             f"(3D Gaussian splatting viewers) or .csv (a table)", path)
        return fmt
    f = str(fmt).lower().lstrip(".")
    if f not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; expected one of "
                         f"{', '.join(EXPORT_FORMATS)}", path)
    return f


def _positions_A(means_xyz: np.ndarray, voxel_size_A: float, origin: str,
                 shape_zyx: Sequence[int] | None) -> np.ndarray:
    """Centres in Angstrom for ``origin`` (module docstring). [N, 3]"""
    origin = {"center": "centre"}.get(origin, origin)
    if origin not in EXPORT_ORIGINS:
        raise InputError(f"unknown origin {origin!r}; expected one of "
                         f"{', '.join(EXPORT_ORIGINS)}")
    means = np.asarray(means_xyz, dtype=np.float64)
    if origin == "centre":
        return means * voxel_size_A
    if shape_zyx is None:
        raise InputError(f"origin={origin!r} needs the volume's shape_zyx")
    shape = [int(n) for n in shape_zyx]
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape_zyx must be three positive sizes; got {shape_zyx}")
    half_xyz = np.array(shape[::-1], dtype=np.float64) / 2.0
    shift = half_xyz if origin == "corner" else half_xyz - 0.5
    return (means + shift) * voxel_size_A


def _write_atomically(path: Path, write: Callable[[object], None], binary: bool) -> None:
    """Write through ``write(fh)`` into a temporary file next to ``path``, then rename."""
    text_mode = {} if binary else {"encoding": "utf-8", "newline": "\n"}
    with atomic_output(path) as tmp, open(tmp, "wb" if binary else "w", **text_mode) as fh:
        write(fh)


def _ply_bytes(pos_A: np.ndarray, scales_A: np.ndarray, quats: np.ndarray, rho: np.ndarray,
               sh_rest: bool, voxel_size_A: float, origin: str) -> tuple[bytes, np.ndarray]:
    """Header and vertex records of the PLY export."""
    names = ply_properties(sh_rest)
    records = np.zeros(rho.shape[0], dtype=[(name, "<f4") for name in names])
    for k, axis in enumerate("xyz"):
        records[axis] = pos_A[:, k]
        records[f"s{axis}"] = scales_A[:, k]
        records[f"scale_{k}"] = np.log(scales_A[:, k])
    for k in range(4):
        records[f"rot_{k}"] = quats[:, k]
    records["density"] = rho
    # 3DGS fields: opacity = logit(a), colour grey level a, where a is the density over a high
    # quantile of the densities (not the max: one outlier would make all else transparent).
    ref = float(np.quantile(rho, PLY_DENSITY_QUANTILE)) if rho.size else 1.0
    a = np.clip(rho / ref if ref > 0 else np.ones_like(rho), PLY_OPACITY_EPS,
                1.0 - PLY_OPACITY_EPS)
    records["opacity"] = np.log(a / (1.0 - a))
    for c in range(3):
        records[f"f_dc_{c}"] = (a - 0.5) / SH_C0
    header = ["ply", "format binary_little_endian 1.0",
              "comment taichi-etgs Gaussians: x y z sx sy sz in Angstrom "
              f"(origin {origin}, voxel size {voxel_size_A:g} A)",
              "comment sx sy sz: standard deviations along the Gaussian's axes "
              "(columns of R(rot)); density: peak value, volume units",
              "comment 3DGS fields: scale_k = ln(s_k / A), rot = (w, x, y, z), "
              "opacity = logit(a), f_dc = (a - 0.5) / 0.2820948, "
              f"a = clip(density / q{PLY_DENSITY_QUANTILE:g}(density), "
              f"{PLY_OPACITY_EPS:g}, {1 - PLY_OPACITY_EPS:g})",
              f"element vertex {rho.shape[0]}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii"), records


def export_gaussians(params: GaussianParams, path: str | PathLike, *,
                     voxel_size_A: float = 1.0, fmt: str | None = None,
                     origin: str = "centre", shape_zyx: Sequence[int] | None = None,
                     sh_rest: bool = False, force: bool = False) -> Path:
    """Write a Gaussian model as CSV or binary PLY, positions and scales in Angstrom.

    Centres are converted from centred voxel coordinates to Angstrom as ``origin`` says
    (module docstring, "Export coordinates"): by default (0, 0, 0) is the tomogram's centre.
    Quaternions are normalised and given the sign with ``w >= 0`` (q and -q are the same
    rotation). Scales are the standard deviations along each Gaussian's own axes (column k of
    the rotation matrix of ``(qw, qx, qy, qz)`` is axis k), not sorted. ``density`` is the
    peak density ``rho`` in the model's units (a :func:`gaussianize` model: the volume's
    units above its ``background``).

    **CSV**: a header line ``x_A,y_A,z_A,scale1_A,scale2_A,scale3_A,qw,qx,qy,qz,density``
    (:data:`CSV_COLUMNS`) then one row per Gaussian, 9 significant digits;
    ``np.loadtxt(path, delimiter=",", skiprows=1)`` reads it back.

    **PLY**: ``binary_little_endian 1.0``, one ``vertex`` element with N records of float32
    properties (:func:`ply_properties`), the de-facto 3D Gaussian-splatting layout first so
    that splatting viewers (SuperSplat, gsplat, nerfstudio, ...) open it:

    - ``x y z``: centres, Angstrom; ``nx ny nz``: zeros (unused normals);
    - ``f_dc_0..2``: a grey level ``a`` as the degree-0 SH colour, ``(a - 0.5) / SH_C0``;
      ``f_rest_0..44`` (zeros) only with ``sh_rest=True``, for tools that insist on degree-3
      SH (the reference 3DGS ``load_ply``);
    - ``opacity``: ``logit(a)`` (3DGS applies a sigmoid), where
      ``a = clip(rho / q99(rho), 1e-4, 1 - 1e-4)`` is the density normalised by its 99th
      percentile: the densest Gaussians are opaque and white, faint ones transparent and
      dark;
    - ``scale_0..2``: ``ln(s / 1 A)`` (3DGS applies ``exp``), the same axes as ``sx sy sz``;
    - ``rot_0..3``: the quaternion ``(w, x, y, z)``;

    then this project's fields: ``sx sy sz`` (standard deviations, Angstrom) and ``density``
    (``rho``). Viewers are alpha compositors, so what they show is an impression of the
    model, not its projections.

    Parameters
    ----------
    params: the model (N Gaussians), centred voxel coordinates.
    path: output file; the folder must exist.
    voxel_size_A: voxel size, Angstrom per voxel (> 0).
    fmt: "csv" or "ply"; None: from the file extension.
    origin: "centre" (default), "corner" or "index" (module docstring).
    shape_zyx: the volume's shape (nz, ny, nx); needed for origin "corner" and "index".
    sh_rest: add the 45 zero ``f_rest_*`` properties to the PLY.
    force: overwrite an existing file.

    Returns
    -------
    The path written.

    Raises
    ------
    InputError: the file exists and ``force`` is False; unknown format or origin; missing
        ``shape_zyx``; bad voxel size; non-finite parameters; the folder does not exist.
    """
    p = Path(path)
    kind = _export_format(p, fmt)
    if not (math.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise InputError(f"voxel size must be a positive number of Angstrom; got "
                         f"{voxel_size_A}", p)
    if not _all_finite(params):
        raise InputError("the model has non-finite parameters; nothing written", p)
    pos_A = _positions_A(params.means_xyz, float(voxel_size_A), origin, shape_zyx)
    check_writable(p, force)

    scales_A = params.scales().astype(np.float64) * voxel_size_A
    quats = normalize_quats(np.asarray(params.quats_wxyz, dtype=np.float64))
    quats = np.where(quats[:, :1] < 0, -quats, quats)
    rho = params.densities().astype(np.float64)

    if kind == "csv":
        table = np.column_stack([pos_A, scales_A, quats, rho])

        def write(fh) -> None:
            fh.write(",".join(CSV_COLUMNS) + "\n")
            np.savetxt(fh, table, fmt="%.9g", delimiter=",")

        _write_atomically(p, write, binary=False)
    else:
        origin_name = {"center": "centre"}.get(origin, origin)
        header, records = _ply_bytes(pos_A, scales_A, quats, rho, sh_rest,
                                     float(voxel_size_A), origin_name)

        def write(fh) -> None:
            fh.write(header)
            fh.write(records.tobytes())

        _write_atomically(p, write, binary=True)
    return p
