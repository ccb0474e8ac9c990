"""SIRT: simultaneous iterative reconstruction with row and column normalisation.

``x <- x + lambda C A^T R (b - A x)`` with ``R = 1 / (A 1)`` (inverse ray lengths) and
``C = 1 / (A^T 1)`` (inverse number of rays through each voxel), optionally projected onto
``x >= 0``. For ``0 < lambda < 2`` the residual ``||b - A x||_R`` decreases monotonically
(a projected Landweber iteration in the R-weighted norm); that is the residual reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..geometry import fov_padding
from .projector import VoxelProjector

__all__ = ["SirtResult", "sirt"]


@dataclass
class SirtResult:
    """A SIRT tomogram and the residual after each iteration."""

    volume: np.ndarray  # [nz, ny, nx]
    residuals: list[float] = field(default_factory=list)  # ||b - A x||_R per iteration


def sirt(views: np.ndarray, tilts_deg: np.ndarray, thickness: int, iterations: int = 30,
         relaxation: float = 1.0, positivity: bool = False,
         initial: np.ndarray | None = None, width: int | None = None,
         extend_fov: bool = True,
         progress: Callable[[int, float], None] | None = None) -> SirtResult:
    """Reconstruct a tomogram with SIRT.

    Parameters
    ----------
    views: tilt views in positive-density contrast. [n_tilts, ny, n_u]
    tilts_deg: tilt angles in degrees. [n_tilts]
    thickness: nz, the tomogram thickness in voxels.
    iterations: number of iterations (>= 1).
    relaxation: step lambda in (0, 2).
    positivity: clamp the volume at zero after every iteration.
    initial: starting volume (default zeros). [nz, ny, nx]
    width: nx of the tomogram (default n_u).
    extend_fov: reconstruct on a grid widened in X by :func:`~taichi_etgs.geometry.fov_padding`
        and crop, so that material the high tilts see outside the box is not piled onto
        the box's sides.
    progress: called after each iteration with (iteration, residual).

    Returns
    -------
    :class:`SirtResult` with the float32 volume [nz, ny, nx] and the residuals.
    """
    from ..kernels.elementwise import (
        safe_reciprocal_kernel,
        sirt_update_kernel,
        weighted_residual_kernel,
    )

    views = np.asarray(views)
    if views.ndim != 3:
        raise InputError(f"expected views (n_tilts, ny, n_u), got shape {views.shape}")
    if iterations < 1:
        raise InputError(f"--iterations must be at least 1, got {iterations}")
    if not 0.0 < relaxation < 2.0:
        raise InputError(f"the relaxation factor must be in (0, 2), got {relaxation}")
    n_tilts, ny, n_u = views.shape
    shape = (int(thickness), ny, n_u if width is None else int(width))
    if shape[0] < 1 or shape[2] < 1:
        raise InputError(f"impossible tomogram shape {shape}")
    pad = fov_padding(shape[0], tilts_deg) if extend_fov else 0
    inner = shape
    shape = (shape[0], shape[1], shape[2] + 2 * pad)
    projector = VoxelProjector(tilts_deg, shape, n_u)

    measured = projector.device(np.ascontiguousarray(views.transpose(1, 0, 2), np.float32))
    row_inv = projector.empty_views()
    col_inv = projector.empty_volume()
    ones_volume = projector.device(np.ones(projector.volume_shape_internal, np.float32))
    ones_views = projector.device(np.ones(projector.views_shape_internal, np.float32))
    projector.forward_internal(ones_volume, row_inv)
    projector.back_internal(ones_views, col_inv)
    # Rays that graze the volume for less than 1% of a voxel carry no usable information.
    safe_reciprocal_kernel(row_inv, 1e-2)
    safe_reciprocal_kernel(col_inv, 1e-6)
    del ones_volume, ones_views

    if initial is None:
        volume = projector.empty_volume()
    else:
        initial = np.asarray(initial, dtype=np.float32)
        if initial.shape != inner:
            raise InputError(f"the initial volume has shape {initial.shape}, expected {inner}")
        initial = np.pad(initial, ((0, 0), (0, 0), (pad, pad)))
        volume = projector.device(np.ascontiguousarray(initial.transpose(1, 0, 2)))
    work_views = projector.empty_views()
    correction = projector.empty_volume()
    residuals: list[float] = []
    for iteration in range(1, iterations + 1):
        projector.forward_internal(volume, work_views)
        residual = float(np.sqrt(weighted_residual_kernel(measured, work_views, row_inv)))
        projector.back_internal(work_views, correction)
        sirt_update_kernel(volume, correction, col_inv, float(relaxation), int(positivity))
        residuals.append(residual)
        if progress is not None:
            progress(iteration, residual)
    result = projector.host(volume).transpose(1, 0, 2)[:, :, pad:pad + inner[2]]
    result = np.ascontiguousarray(result)
    return SirtResult(volume=result, residuals=residuals)
