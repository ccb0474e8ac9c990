"""Small volumes the reconstruction tests share."""

from __future__ import annotations

import numpy as np


def gaussian_blobs(shape_zyx: tuple[int, int, int], n_blobs: int, sigma: float,
                   half_extent_zyx: tuple[float, float, float], seed: int = 3) -> np.ndarray:
    """``n_blobs`` isotropic Gaussians of std ``sigma`` (voxels), centres uniform within
    ``+-half_extent_zyx`` of the centre (centred voxel coordinates). float32 [nz, ny, nx]"""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) + 0.5 - n / 2 for n in shape_zyx), indexing="ij")
    volume = np.zeros(shape_zyx)
    extent = np.asarray(half_extent_zyx, dtype=np.float64)
    for _ in range(n_blobs):
        c = rng.uniform(-extent, extent)
        volume += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
                         / (2 * sigma ** 2))
    return volume.astype(np.float32)
