"""Voxel projector: reference, adjointness, analytic line integrals, sign convention."""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.classical.projector import VoxelProjector, back_project, forward_project
from taichi_etgs.errors import InputError
from taichi_etgs.geometry import centred_coordinates, project_point

from .reference_projector import back_reference, forward_reference

TILTS = np.array([-60.0, -45.0, -30.0, -3.0, 0.0, 17.0, 45.0, 60.0, 89.0, -90.0])


def test_forward_and_back_match_numpy_reference(taichi_arch, rng):
    # Odd/even and unequal sizes catch off-by-half-pixel errors in the centring.
    volume = rng.random((7, 3, 10)).astype(np.float32)
    n_u = 13
    views = forward_project(volume, TILTS, n_u=n_u)
    # float32 accumulation of ~10 terms: 1e-5 relative of the largest value is ample.
    np.testing.assert_allclose(views, forward_reference(volume, TILTS, n_u), rtol=1e-5,
                               atol=1e-5 * views.max())
    y = rng.random(views.shape).astype(np.float32)
    back = back_project(y, TILTS, nz=7, nx=10)
    ref = back_reference(y, TILTS, 7, 10)
    np.testing.assert_allclose(back, ref, rtol=1e-5, atol=1e-5 * ref.max())


@pytest.mark.parametrize("shape,n_u", [((24, 5, 40), 40), ((9, 4, 31), 44)])
def test_adjointness(taichi_cpu, rng, shape, n_u):
    tilts = np.arange(-60.0, 61.0, 3.0)
    projector = VoxelProjector(tilts, shape, n_u)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal((tilts.size, shape[1], n_u)).astype(np.float32)
    lhs = float(np.sum(projector.forward(x).astype(np.float64) * y))
    rhs = float(np.sum(x.astype(np.float64) * projector.back(y)))
    # Same weights both ways; only float32 summation order differs.
    assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs))


def _gaussian_blob(shape, centre_xyz, sigma):
    nz, ny, nx = shape
    z = centred_coordinates(nz)[:, None, None]
    y = centred_coordinates(ny)[None, :, None]
    x = centred_coordinates(nx)[None, None, :]
    r2 = (x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2
    return np.exp(-0.5 * r2 / sigma**2).astype(np.float32)


@pytest.mark.parametrize("tilt", [-60.0, -30.0, 0.0, 30.0, 60.0])
def test_gaussian_blob_matches_analytic_line_integral(taichi_cpu, tilt):
    shape, centre, sigma = (40, 24, 64), (6.0, -3.0, 4.0), 2.5
    views = forward_project(_gaussian_blob(shape, centre, sigma), np.array([tilt]))[0]
    u0, v0 = project_point(*centre, tilt)
    u = centred_coordinates(shape[2])[None, :]
    v = centred_coordinates(shape[1])[:, None]
    # Line integral of exp(-r^2 / 2 sigma^2) along the beam: sqrt(2 pi) sigma in-plane.
    analytic = np.sqrt(2 * np.pi) * sigma * np.exp(-0.5 * ((u - u0) ** 2 + (v - v0) ** 2)
                                                   / sigma**2)
    # Linear interpolation of a sigma = 2.5 voxel blob: ~1% of the peak.
    np.testing.assert_allclose(views, analytic, atol=0.015 * analytic.max())
    peak_v, peak_u = np.unravel_index(np.argmax(views), views.shape)
    assert abs(centred_coordinates(shape[2])[peak_u] - u0) <= 0.5
    assert abs(centred_coordinates(shape[1])[peak_v] - v0) <= 0.5


@pytest.mark.parametrize("tilt", [0.0, 60.0, -60.0])
def test_ball_chords_match_analytic(taichi_cpu, tilt):
    # A ball of radius 9 voxels at (x, y, z) = (-5, 2, 3), voxelised with 4^3 supersampling
    # so the partial-volume edge is right to a few percent.
    nz, ny, nx, radius, centre = 32, 24, 48, 9.0, (-5.0, 2.0, 3.0)
    sub = 4
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    ball = np.zeros((nz, ny, nx))
    z = centred_coordinates(nz)[:, None, None]
    y = centred_coordinates(ny)[None, :, None]
    x = centred_coordinates(nx)[None, None, :]
    for dz in offsets:
        for dy in offsets:
            for dx in offsets:
                r2 = ((x + dx - centre[0]) ** 2 + (y + dy - centre[1]) ** 2
                      + (z + dz - centre[2]) ** 2)
                ball += r2 <= radius**2
    ball /= sub**3
    view = forward_project(ball.astype(np.float32), np.array([tilt]))[0]
    u0, v0 = project_point(*centre, tilt)
    u = centred_coordinates(nx)[None, :]
    v = centred_coordinates(ny)[:, None]
    d2 = (u - u0) ** 2 + (v - v0) ** 2
    chord = 2 * np.sqrt(np.clip(radius**2 - d2, 0, None))
    inner = d2 < (radius - 2) ** 2  # away from the rim, where pixel averaging dominates
    # Chords are ~10-18 voxels long; voxelisation and interpolation leave < 0.3 voxel.
    np.testing.assert_allclose(view[inner], chord[inner], atol=0.3)
    assert abs(view.sum() - ball.sum()) < 1e-3 * ball.sum()  # mass is conserved


def test_off_centre_point_lands_where_the_convention_says(taichi_cpu):
    # One bright voxel at x = 9.5, z = 5.5: at +60 deg it must land at
    # u = 9.5 cos + 5.5 sin = 9.51 (a mirrored Z would give -0.01), at -60 deg at -0.01.
    shape = (20, 4, 40)
    volume = np.zeros(shape, np.float32)
    iz, ix = 15, 29  # centres: z = 15.5 - 10 = 5.5, x = 29.5 - 20 = 9.5
    volume[iz, 1, ix] = 1.0
    x, z = ix + 0.5 - shape[2] / 2, iz + 0.5 - shape[0] / 2
    views = forward_project(volume, np.array([60.0, -60.0]))
    u = centred_coordinates(shape[2])
    for view, tilt in zip(views, (60.0, -60.0)):
        centroid = float(np.sum(view[1] * u) / np.sum(view[1]))
        expected = x * np.cos(np.deg2rad(tilt)) + z * np.sin(np.deg2rad(tilt))
        # The footprint is a triangle of half-width max(|cos|, |sin|) = 0.87 sampled at
        # pixel centres, whose centroid can sit ~0.02 px off; the mirror is 9.5 px away.
        assert centroid == pytest.approx(expected, abs=0.05)
        assert view[[0, 2, 3]].max() == 0.0  # the tilt axis is Y: rows never mix


def test_projector_rejects_bad_shapes(taichi_cpu):
    with pytest.raises(InputError, match="3D volume"):
        forward_project(np.zeros((4, 4), np.float32), np.array([0.0]))
    with pytest.raises(InputError, match="NaN"):
        forward_project(np.zeros((4, 4, 4), np.float32), np.array([np.nan]))
    with pytest.raises(InputError, match="do not match"):
        VoxelProjector(np.array([0.0, 10.0]), (4, 4, 4)).back(np.zeros((3, 4, 4), np.float32))
