"""Fit Gaussians to an existing tomogram (``taichi-etgs gaussianize``).

:func:`gaussianize` fits the Gaussian model (docs/method.md) directly to a volume
(a tomogram from any program, or a map): octree initialisation
(:func:`taichi_etgs.gaussian.seeding.init_from_volume`), then Adam on a volume loss, the
squared difference between the voxelised model
(:func:`~taichi_etgs.gaussian.render.voxelize_gaussians`, plus a constant background) and
the volume.

A model is written for viewers by :func:`taichi_etgs.io.export.export_gaussians`.

Background
----------
A sum of Gaussians with positive densities is positive, so the model represents ``volume -
background`` and cannot go below ``background``. The default is the volume's median, what
:func:`~taichi_etgs.gaussian.seeding.init_from_volume` subtracts by default: most voxels of
a tomogram are ice, whose level would otherwise cost Gaussians everywhere (and whose
below-median half is noise, not worth representing). The price: voxels below the median are
reproduced as the median. Measured on the package's phantom
(:func:`taichi_etgs.simulation.phantom.make_phantom`, 64 x 128 x 128, 20k Gaussians, 100
iterations): 2.8 % of the voxels lie below the ice level and hold 97 % of the remaining
squared error, PSNR 32.3 dB, correlation 0.98; with ``background`` at the volume's minimum,
44.3 dB and 0.999, but each iteration costs about 2.5 times more (the ice needs many
medium-sized Gaussians). For a map with a flat floor (zero solvent, a simulated volume),
pass that floor.

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
  :data:`taichi_etgs.gaussian.optim.DEFAULT_LR`): the detail to reproduce is voxel-sized
  whatever the volume's size, and the finest Gaussians have a std of 1 voxel; a Gaussian can move a
  couple of voxels over 100 steps of consistent sign, and no further.
- ``log_scales``: 0.1 -> 0.01, a relative size change per step. The one that matters most:
  the octree's scales (half a cell) make neighbouring Gaussians overlap for a smooth
  lattice, and sharp features need them to shrink by tens of percent quickly.
- ``quats_wxyz``: 0.05 -> 0.005 (about 6 degrees per step for a unit quaternion at start).
- ``density_raw``: 0.1 -> 0.01 (about 7 % of an O(1) density per step).

Each rate decays log-linearly by a factor of 10 over the run
(:func:`taichi_etgs.gaussian.optim.lr_schedule`) after a short warm-up
(:data:`WARMUP_STEPS`): Adam's first step moves *every* parameter by about its learning rate
whatever its gradient; the warm-up keeps those steps small while the moments settle.
Measured on the phantom above (normalised loss after 100 iterations, 0.437 at the start):
0.056 at 0.25x these rates, 0.040 at 0.5x, 0.037 with these, 0.036 at 2x; the
below-background voxels alone account for 0.033 (see "Background"), so larger rates gain
little and risk stability. Of the four, the scales' rate matters most.

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
"""


from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .params import GaussianParams, density_raw_from_densities

__all__ = ["GAUSSIANIZE_LR", "GaussianizeResult", "gaussianize"]

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
    from .. import runtime
    from .optim import Adam, lr_schedule
    from .render import voxelize_gaussians, voxelize_gaussians_backward
    from .seeding import init_from_volume

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
