"""Total variation and patch placement (taichi_etgs/gaussian/regularize.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from taichi_etgs.gaussian.regularize import random_patch_origin, total_variation


@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_gradient_matches_central_differences(rng, eps):
    vol = rng.normal(size=(5, 6, 7))
    value, grad = total_variation(vol, eps)
    assert grad.shape == vol.shape and grad.dtype == np.float64
    h = 1e-6
    # Corners, faces, edges (where forward differences stop) and interior voxels.
    voxels = [(0, 0, 0), (4, 5, 6), (0, 3, 6), (4, 0, 2), (2, 5, 3), (2, 3, 4), (1, 1, 1),
              (3, 4, 0)]
    for idx in voxels:
        up, down = vol.copy(), vol.copy()
        up[idx] += h
        down[idx] -= h
        fd = (total_variation(up, eps)[0] - total_variation(down, eps)[0]) / (2 * h)
        # TV is smooth for eps > 0; central differences err by ~h^2 |f'''| (~1e-12 /
        # eps^2) plus round-off ~1e-16 |TV| / h (~1e-10): 1e-7 relative to the gradient's
        # scale (1 / n_voxels) covers both.
        scale = np.abs(grad).max()
        assert abs(fd - grad[idx]) < 1e-7 * scale, (idx, fd, grad[idx])
    assert value > 0


def test_gradient_inner_product_with_volume(rng):
    # TV is 1-homogeneous up to eps: <grad, v> = sum |d|^2 / |d|_eps / n, a check of
    # the whole gradient at once (not just sampled voxels).
    vol = rng.normal(size=(4, 5, 6))
    eps = 0.1
    _, grad = total_variation(vol, eps)
    d = [np.zeros_like(vol) for _ in range(3)]
    d[0][:-1] = np.diff(vol, axis=0)
    d[1][:, :-1] = np.diff(vol, axis=1)
    d[2][:, :, :-1] = np.diff(vol, axis=2)
    sq = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    expected = np.sum(sq / np.sqrt(sq + eps * eps)) / vol.size
    assert np.vdot(grad, vol) == pytest.approx(expected, rel=1e-12)  # float64 round-off


def test_constant_volume_has_zero_tv_and_gradient():
    value, grad = total_variation(np.full((6, 5, 4), 3.7), eps=0.01)
    # sqrt(eps^2) - eps is exact in IEEE arithmetic; allow round-off anyway.
    assert abs(value) < 1e-15
    assert np.abs(grad).max() < 1e-15


def test_noisy_volume_has_more_tv_than_smoothed(rng):
    noisy = rng.normal(size=(12, 12, 12))
    smooth = uniform_filter(noisy, size=3, mode="wrap")
    tv_noisy, _ = total_variation(noisy, eps=0.01)
    tv_smooth, _ = total_variation(smooth, eps=0.01)
    # Averaging 27 voxels cuts the differences about 3-5x; ask for 2x.
    assert tv_noisy > 2.0 * tv_smooth > 0


def test_tv_spares_a_clean_edge_more_than_oscillation():
    # Same jump height, one edge versus alternating planes: TV penalises the oscillation.
    n = 8
    step = np.zeros((n, n, n))
    step[:, :, n // 2:] = 1.0
    stripes = np.zeros((n, n, n))
    stripes[:, :, ::2] = 1.0
    assert total_variation(stripes, 0.01)[0] > 5 * total_variation(step, 0.01)[0]


def _voxel_centres(n):
    return np.arange(n) + 0.5 - n / 2.0


GRIDS = [((32, 32, 32), (8, 8, 8)),      # even room everywhere
         ((20, 17, 33), (8, 8, 8)),      # odd room along y and x
         ((21, 19, 10), (6, 7, 10)),     # patch as wide as the grid along x
         ((9, 9, 9), (4, 5, 2))]


@pytest.mark.parametrize("grid, patch", GRIDS)
def test_patch_stays_inside_and_on_voxel_centres(grid, patch):
    rng = np.random.default_rng(3)
    for _ in range(500):
        centre_xyz = random_patch_origin(rng, grid, patch)
        assert len(centre_xyz) == 3
        for c, n, p in zip(centre_xyz, grid[::-1], patch[::-1]):
            centres = c + _voxel_centres(p)  # patch voxel j at c + j + 0.5 - p/2
            # Inside the grid: first and last patch voxel centres are grid voxel centres.
            assert centres[0] >= _voxel_centres(n)[0] and centres[-1] <= _voxel_centres(n)[-1]
            # On the grid's voxel centres (exact: half-integers and integers in float).
            offset = centres[0] - _voxel_centres(n)[0]
            assert offset == round(offset), (c, n, p)


@pytest.mark.parametrize("grid, patch", [((20, 17, 33), (8, 8, 8))])
def test_patch_reaches_every_position(grid, patch):
    rng = np.random.default_rng(4)
    covered = [np.zeros(n, dtype=bool) for n in grid[::-1]]
    for _ in range(2000):
        centre_xyz = random_patch_origin(rng, grid, patch)
        for axis, (c, n, p) in enumerate(zip(centre_xyz, grid[::-1], patch[::-1])):
            first = int(round(c - p / 2.0 + n / 2.0))  # index of the patch's first voxel
            covered[axis][first:first + p] = True
    # Drawn uniformly inside the grid, patches cover every voxel of every axis.
    for axis in range(3):
        assert covered[axis].all(), (axis, np.flatnonzero(~covered[axis]))
