"""3D total variation of voxelised sub-volumes: the Gaussian model's regulariser.

The data term alone lets the Gaussians follow the noise of low-dose views (the held-out
score starts to rise within tens of iterations). Total variation on random voxelised
sub-volumes (R2-Gaussian's recipe: a 32^3 patch per step) penalises what noise builds,
small oscillating density, and spares edges. It acts through the voxeliser's backward
pass (:func:`taichi_etgs.gaussian.render.voxelize_gaussians_backward`). Its weight is
not a knob: the reconstruction raises it whenever the held-out views say the model has
started to fit noise (docs/method.md, "Validation").
"""

from __future__ import annotations

import numpy as np

__all__ = ["total_variation", "random_patch_origin"]


def total_variation(volume: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """Smoothed isotropic total variation (mean over voxels) and its gradient.

    ``TV = mean_v sqrt(dx^2 + dy^2 + dz^2 + eps^2) - eps`` with forward differences
    (zero across the far faces), ``eps`` keeping the gradient finite where the volume
    is flat.

    Parameters
    ----------
    volume: the sub-volume. [nz, ny, nx]
    eps: smoothing, in the volume's units (> 0).

    Returns
    -------
    (value, dTV / dvolume [nz, ny, nx], float64)
    """
    v = np.asarray(volume, dtype=np.float64)
    d = [np.zeros_like(v) for _ in range(3)]
    for axis in range(3):
        diff = np.diff(v, axis=axis)
        index = [slice(None)] * 3
        index[axis] = slice(0, v.shape[axis] - 1)
        d[axis][tuple(index)] = diff
    mag = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2 + eps * eps)
    n = v.size
    value = float(np.sum(mag - eps) / n)
    grad = np.zeros_like(v)
    for axis in range(3):
        q = d[axis] / mag / n  # dTV/d(diff) at each forward difference
        index_lo = [slice(None)] * 3
        index_hi = [slice(None)] * 3
        index_lo[axis] = slice(0, v.shape[axis] - 1)
        index_hi[axis] = slice(1, v.shape[axis])
        grad[tuple(index_lo)] -= q[tuple(index_lo)]
        grad[tuple(index_hi)] += q[tuple(index_lo)]
    return value, grad


def random_patch_origin(rng: np.random.Generator, grid_zyx: tuple[int, int, int],
                        patch_zyx: tuple[int, int, int]) -> tuple[float, float, float]:
    """Centre ``(x, y, z)`` of a patch drawn uniformly inside a centred grid, voxels."""
    centre = []
    for n, p in zip(grid_zyx[::-1], patch_zyx[::-1]):
        first = int(rng.integers(0, max(0, n - p) + 1))  # the patch's first voxel
        centre.append(first + p / 2.0 - n / 2.0)
    return tuple(centre)
