"""Gaussian projector and voxeliser: against numpy references, physics, and gradients.

Sizes are tiny (a few Gaussians, detectors of a few hundred pixels): the point is the
formulas, conventions and derivatives, not speed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from taichi_etgs.gaussian import render
from taichi_etgs.gaussian.params import (
    GaussianParams,
    covariances_from_raw,
    densities_from_raw,
    density_raw_from_densities,
    quats_to_rotmats,
    softplus,
    softplus_inverse,
)
from taichi_etgs.gaussian.render import (
    CUTOFF_SIGMA,
    VOXEL_CUTOFF_SIGMA,
    project_gaussians,
    project_gaussians_backward,
    voxelize_gaussians,
    voxelize_gaussians_backward,
)

from .reference_gaussians import (
    image_space_grads_reference,
    line_integral_bruteforce,
    project_gaussians_reference,
    voxelize_gaussians_reference,
)

TILTS = np.array([0.0, 30.0, -30.0, 60.0, -60.0])
GROUPS = ["means_xyz", "log_scales", "quats_wxyz", "density_raw"]


def random_params(rng: np.random.Generator, n: int, extent_xyz: tuple[float, float, float],
                  log_scale_mean: float = 0.2) -> GaussianParams:
    """N Gaussians with centres uniform in +-extent, scales ~exp(N(mean, 0.3)), random
    rotations and densities softplus(N(0, 1))."""
    return GaussianParams(
        means_xyz=rng.uniform(-1, 1, (n, 3)) * np.asarray(extent_xyz),
        log_scales=rng.normal(log_scale_mean, 0.3, (n, 3)),
        quats_wxyz=rng.normal(size=(n, 4)),
        density_raw=rng.normal(size=n),
    )


# ------------------------------------------------------------------------------------------
# Activations (numpy only)
# ------------------------------------------------------------------------------------------

def test_activations_round_trip_and_rotation_convention(rng):
    x = np.array([-50.0, -3.0, 0.0, 2.0, 40.0])
    np.testing.assert_allclose(softplus(x), np.log1p(np.exp(x)), rtol=1e-12)
    dens = np.array([1e-6, 0.01, 1.0, 30.0])
    np.testing.assert_allclose(densities_from_raw(density_raw_from_densities(dens)), dens,
                               rtol=1e-10)
    with pytest.raises(ValueError):
        softplus_inverse(np.array([0.0]))
    # 90 degrees about +z maps x to y; R is a proper rotation for any non-zero quaternion.
    q = np.array([[np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]])
    np.testing.assert_allclose(quats_to_rotmats(q)[0] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                               atol=1e-12)
    rot = quats_to_rotmats(3.0 * rng.normal(size=(5, 4)))
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    # Sigma = R diag(s^2) R^T: axis k of the Gaussian (column k of R) has variance s_k^2.
    p = random_params(rng, 4, (1, 1, 1))
    cov = covariances_from_raw(p.log_scales, p.quats_wxyz)
    r = p.rotations()
    for k in range(3):
        axis = r[:, :, k]
        np.testing.assert_allclose(np.einsum("ni,nij,nj->n", axis, cov, axis),
                                   p.scales()[:, k] ** 2, rtol=1e-12)
    back = GaussianParams.from_activated(p.means_xyz, p.scales(), p.densities(), p.quats_wxyz)
    np.testing.assert_allclose(back.density_raw, p.density_raw, rtol=1e-10)
    with pytest.raises(ValueError, match="quats_wxyz"):
        GaussianParams(p.means_xyz, p.log_scales, p.quats_wxyz[:, :3], p.density_raw)


# ------------------------------------------------------------------------------------------
# Projector: formula, convention, physics
# ------------------------------------------------------------------------------------------

def test_closed_form_matches_bruteforce_line_integral():
    """The closed form is the line integral of the 3D field (pins the formula)."""
    p = GaussianParams.from_activated([[1.3, -0.7, 0.9]], [[1.2, 2.0, 0.9]], [0.8],
                                      [[0.9, 0.3, -0.4, 0.2]])
    for tilt in (0.0, 30.0, -60.0, 45.0):
        numeric = line_integral_bruteforce(p, tilt, 16, 18, half_length=14.0, step=0.05)
        closed = project_gaussians_reference(p, [tilt], 16, 18, cutoff_sigma=None,
                                             pixel_area=False)[0]
        # Midpoint rule on a Gaussian over +-14 voxels (> 7 sigma) is exact to rounding.
        np.testing.assert_allclose(numeric, closed, rtol=0, atol=1e-9 * closed.max())


def test_kernel_matches_box_integrated_line_integral(taichi_cpu):
    """Pixel-area term: the kernel approximates the line integral averaged over each pixel."""
    p = GaussianParams.from_activated([[1.3, -0.7, 0.9]], [[1.2, 2.0, 0.9]], [0.8],
                                      [[0.9, 0.3, -0.4, 0.2]])
    for tilt in (30.0, -60.0):
        numeric = line_integral_bruteforce(p, tilt, 16, 18, half_length=12.0, step=0.1,
                                           subpixels=8)
        kernel = project_gaussians(p, [tilt], 16, 18)[0]
        uncut = project_gaussians_reference(p, [tilt], 16, 18, cutoff_sigma=None)[0]
        # Box vs Gaussian(1/12) blur plus 8x8 sub-sampling: < 4e-4 of the peak measured
        # at these scales (>= 0.9 px); the 3.5-sigma cut adds up to exp(-3.5^2/2) = 0.22 %.
        np.testing.assert_allclose(uncut, numeric, rtol=0, atol=1e-3 * numeric.max())
        np.testing.assert_allclose(kernel, numeric, rtol=0,
                                   atol=(1e-3 + np.exp(-CUTOFF_SIGMA ** 2 / 2)) * numeric.max())


@pytest.fixture(params=["cpu", "gpu"])
def projector_path(request, monkeypatch):
    """Both kernel paths of the projector (per-row gather, per-pair scatter) on any arch."""
    monkeypatch.setattr(render, "_FORCE_PATH", request.param)
    return request.param


def test_forward_matches_reference(taichi_arch, projector_path, rng):
    p = random_params(rng, 12, (10.0, 8.0, 6.0))
    ny, nu = 24, 32
    views = project_gaussians(p, TILTS, ny, nu)
    ref = project_gaussians_reference(p, TILTS, ny, nu)
    assert views.shape == (TILTS.size, ny, nu) and views.dtype == np.float32
    # float32 kernel vs float64 reference: a few ulp per term of ~12 summed Gaussians.
    np.testing.assert_allclose(views, ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_off_centre_gaussian_lands_where_the_convention_says(taichi_arch):
    """(x, y, z) = (5, -3, 7) projects to u = x cos + z sin, v = y (docs/conventions.md)."""
    p = GaussianParams.from_activated([[5.0, -3.0, 7.0]], [[1.0, 1.0, 1.0]], [1.0])
    ny, nu = 24, 32
    v, u = np.meshgrid(np.arange(ny) + 0.5 - ny / 2, np.arange(nu) + 0.5 - nu / 2, indexing="ij")
    for tilt in (60.0, -60.0):
        view = project_gaussians(p, [tilt], ny, nu)[0].astype(np.float64)
        u_expected = 5.0 * np.cos(np.deg2rad(tilt)) + 7.0 * np.sin(np.deg2rad(tilt))
        # Centroid of a sampled, symmetric Gaussian (sigma ~1 px): exact up to the cut.
        assert np.sum(u * view) / view.sum() == pytest.approx(u_expected, abs=0.02)
        assert np.sum(v * view) / view.sum() == pytest.approx(-3.0, abs=0.02)
        i, j = np.unravel_index(np.argmax(view), view.shape)
        assert abs(u[i, j] - u_expected) <= 0.5 and abs(v[i, j] + 3.0) <= 0.5
    # +60 and -60 differ by the sign of the z term: 8.56 vs -3.56, never mirrored.
    plus = project_gaussians(p, [60.0], ny, nu)[0]
    assert np.sum(u * plus) / plus.sum() > 8.0


def test_shifted_views_are_the_views_moved(taichi_cpu, projector_path, rng):
    """A view's shift (du, dv) moves its projection by exactly that: whole pixels give the
    reference of a wider detector cut where the view moved to, a fraction the reference of
    the model moved by ``du (cos, 0, sin) + dv (0, 1, 0)``; views left at (0, 0) are the
    plain projection, bit for bit."""
    p = random_params(rng, 12, (6.0, 5.0, 4.0))
    ny, nu = 24, 32
    shifts = np.array([[2.0, -1.0], [0.0, 0.0], [-3.0, 2.0], [0.4, -0.7], [0.0, 0.0]])
    views = project_gaussians(p, TILTS, ny, nu, shifts)
    wide = project_gaussians_reference(p, TILTS, ny + 8, nu + 8)  # 4 px all round
    # float32 kernel vs float64 reference, as in test_forward_matches_reference.
    tol = {"rtol": 1e-4, "atol": 1e-5 * wide.max()}
    for t in (0, 2):
        du, dv = shifts[t].astype(int)
        np.testing.assert_allclose(views[t], wide[t, 4 - dv:4 - dv + ny, 4 - du:4 - du + nu],
                                   **tol)
    du, dv = shifts[3]
    c, s = np.cos(np.deg2rad(TILTS[3])), np.sin(np.deg2rad(TILTS[3]))
    moved = p.copy()
    moved.means_xyz = moved.means_xyz + [du * c, dv, du * s]
    np.testing.assert_allclose(views[3], project_gaussians_reference(moved, TILTS[3:4], ny, nu)[0],
                               **tol)
    np.testing.assert_array_equal(views[[1, 4]], project_gaussians(p, TILTS, ny, nu)[[1, 4]])


def test_views_moved_by_many_rows_bring_gaussians_from_off_the_detector(taichi_cpu,
                                                                        projector_path, rng):
    """Moves along v of up to 5 px, whole and half rows of both signs included, each view's
    different: the CPU pass reads another row list per view (whole rows) and lists only
    the fractions' spread, so Gaussians just above and below the detector, which only some
    views' moves bring onto it, must still be drawn. Reference: the model moved by
    ``du (cos, 0, sin) + dv (0, 1, 0)``, projected without moves."""
    ny, nu = 16, 24
    p = random_params(rng, 30, (8.0, 11.0, 4.0))  # y up to +-11: beyond the detector's +-8
    shifts = np.array([[0.3, 4.6], [0.0, -5.0], [-1.0, 0.5], [0.7, -0.5], [0.0, 2.0]])
    views = project_gaussians(p, TILTS, ny, nu, shifts)
    for t in range(TILTS.size):
        c, s = np.cos(np.deg2rad(TILTS[t])), np.sin(np.deg2rad(TILTS[t]))
        moved = p.copy()
        moved.means_xyz = moved.means_xyz + [shifts[t, 0] * c, shifts[t, 1], shifts[t, 0] * s]
        ref = project_gaussians_reference(moved, TILTS[t:t + 1], ny, nu)[0]
        # float32 kernel vs float64 reference, as in test_forward_matches_reference.
        np.testing.assert_allclose(views[t], ref, rtol=1e-4, atol=1e-5 * ref.max())


@pytest.mark.parametrize("group", GROUPS)
def test_shifted_projector_gradients_match_finite_differences(taichi_f64, projector_problem,
                                                              group, projector_path):
    params, ny, nu, weights = projector_problem
    shifts = np.array([[0.3, -0.7], [0.0, 0.0], [-1.2, 2.4], [0.5, 0.5], [0.0, -1.6]])

    def loss(p):
        return float(np.sum(weights * project_gaussians(p, TILTS, ny, nu, shifts)))

    out = project_gaussians_backward(params, TILTS, weights, shifts)
    _assert_grad_close(getattr(out.grads, group), _finite_difference(loss, params, group, 1e-6))
    if group == "means_xyz":
        plain = project_gaussians_backward(params, TILTS, weights)
        assert not np.allclose(out.grads.means_xyz, plain.grads.means_xyz)


def test_shifts_must_be_one_pair_per_view(taichi_cpu, rng):
    p = random_params(rng, 3, (4.0, 4.0, 4.0))
    with pytest.raises(ValueError, match="shifts_uv"):
        project_gaussians(p, TILTS, 8, 8, np.zeros((TILTS.size - 1, 2)))
    with pytest.raises(ValueError, match="shifts_uv"):
        project_gaussians_backward(p, TILTS, np.zeros((TILTS.size, 8, 8)),
                                   np.full((TILTS.size, 2), np.nan))


def test_mass_conservation(taichi_cpu):
    """Sum of a view = rho (2 pi)^(3/2) sqrt(det Sigma) for a Gaussian inside the detector."""
    p = GaussianParams.from_activated([[0.7, -1.2, 1.5]], [[2.5, 1.1, 1.7]], [1.3],
                                      [[0.6, -0.2, 0.7, 0.3]])
    mass = 1.3 * (2 * np.pi) ** 1.5 * np.sqrt(np.linalg.det(p.covariances()[0]))
    views = project_gaussians(p, np.linspace(-60, 60, 7), 48, 48)
    # The 3.5-sigma cut drops exp(-3.5^2 / 2) = 0.22 % of the mass; sampling adds < 1e-6.
    np.testing.assert_allclose(views.sum(axis=(1, 2)), mass, rtol=2.5e-3)
    np.testing.assert_allclose(views.sum(axis=(1, 2)), mass * (1 - np.exp(-CUTOFF_SIGMA ** 2 / 2)),
                               rtol=5e-4)


def test_far_away_and_empty_inputs(taichi_cpu):
    p = GaussianParams.from_activated([[1e9, -3e8, 5.0], [0.0, 0.0, 0.0]],
                                      [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [1.0, 1.0])
    views = project_gaussians(p.subset([0]), [0.0, 45.0], 8, 8)
    assert np.all(views == 0)
    out = project_gaussians_backward(p.subset([0]), [0.0, 45.0], np.ones((2, 8, 8)))
    assert np.all(out.grads.means_xyz == 0) and out.visible_views[0] == 0
    empty = p.subset(slice(0, 0))
    assert project_gaussians(empty, TILTS, 4, 5).shape == (TILTS.size, 4, 5)
    assert project_gaussians_backward(empty, TILTS, np.zeros((TILTS.size, 4, 5))).grads.n == 0
    assert voxelize_gaussians(empty, (2, 3, 4)).shape == (2, 3, 4)
    assert np.all(voxelize_gaussians(p.subset([0]), (4, 4, 4)) == 0)


# ------------------------------------------------------------------------------------------
# Gradients (float64, central finite differences of the kernels' own forward)
# ------------------------------------------------------------------------------------------

def _finite_difference(loss, params: GaussianParams, group: str, eps: float) -> np.ndarray:
    arr = getattr(params, group)
    fd = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        values = []
        for sign in (1.0, -1.0):
            p = params.copy()
            getattr(p, group)[idx] += sign * eps
            values.append(loss(p))
        fd[idx] = (values[0] - values[1]) / (2 * eps)
    return fd


def _assert_grad_close(analytic: np.ndarray, fd: np.ndarray) -> None:
    # float64, eps = 1e-6: truncation ~eps^2 and rounding ~1e-16 |L| / eps, both < 1e-9
    # of the gradients here; a wrong term in the chain rule is off by O(1).
    scale = np.abs(fd).max()
    assert scale > 0
    np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-7 * scale)


@pytest.fixture
def projector_problem(rng):
    params = random_params(rng, 4, (5.0, 4.0, 4.0))
    ny, nu = 16, 20
    weights = rng.normal(size=(TILTS.size, ny, nu))
    return params, ny, nu, weights


@pytest.mark.parametrize("group", GROUPS)
def test_projector_gradients_match_finite_differences(taichi_f64, projector_problem, group,
                                                      projector_path):
    params, ny, nu, weights = projector_problem

    def loss(p):
        return float(np.sum(weights * project_gaussians(p, TILTS, ny, nu)))

    out = project_gaussians_backward(params, TILTS, weights)
    assert out.grads.means_xyz.dtype == np.float64
    _assert_grad_close(getattr(out.grads, group), _finite_difference(loss, params, group, 1e-6))


@pytest.fixture
def voxel_problem(rng):
    params = random_params(rng, 3, (2.5, 2.0, 2.0), log_scale_mean=0.0)
    return params, (8, 9, 10), rng.normal(size=(8, 9, 10))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("voxel_size, origin", [(1.0, None), (0.8, (0.3, -0.2, 0.4))])
def test_voxelizer_gradients_match_finite_differences(taichi_f64, voxel_problem, group,
                                                      voxel_size, origin):
    params, shape, weights = voxel_problem

    def loss(p):
        return float(np.sum(weights * voxelize_gaussians(p, shape, voxel_size, origin)))

    grads = voxelize_gaussians_backward(params, weights, voxel_size, origin)
    _assert_grad_close(getattr(grads, group), _finite_difference(loss, params, group, 1e-6))


def test_densification_statistic_sums_all_views(taichi_cpu, rng):
    """sum over views of |dL/d(u, v)| in pixel units, and the count of views seen in."""
    ny, nu = 16, 20
    params = random_params(rng, 5, (5.0, 4.0, 4.0))
    params.means_xyz[3] = [11.0, 0.0, 0.0]  # half off the detector at some tilts only
    params.means_xyz[4] = [0.0, 30.0, 0.0]  # off the detector at every tilt
    weights = rng.normal(size=(TILTS.size, ny, nu))
    out = project_gaussians_backward(params, TILTS, weights)
    grads_uv, visible = image_space_grads_reference(params.astype(np.float64), TILTS, weights)
    np.testing.assert_array_equal(out.visible_views, visible.sum(axis=1))
    assert out.visible_views[4] == 0 and 0 < out.visible_views[3]
    expected = np.linalg.norm(grads_uv, axis=2).sum(axis=1)
    # float32 kernel sums vs float64 finite differences (eps 1e-5, error ~1e-9).
    np.testing.assert_allclose(out.uv_grad_norm_sum, expected, rtol=1e-4,
                               atol=1e-5 * expected.max())


# ------------------------------------------------------------------------------------------
# Voxeliser
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("voxel_size, origin", [(1.0, None), (0.75, (0.5, -0.3, 0.2))])
def test_voxelizer_matches_reference(taichi_arch, rng, voxel_size, origin):
    params = random_params(rng, 8, (4.0, 4.0, 3.0))
    shape = (10, 12, 14)
    vol = voxelize_gaussians(params, shape, voxel_size, origin)
    ref = voxelize_gaussians_reference(params, shape, voxel_size, origin)
    assert vol.shape == shape and vol.dtype == np.float32
    # float32 kernel vs float64 reference.
    np.testing.assert_allclose(vol, ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_voxelizer_mass_and_zero_tilt_consistency(taichi_cpu):
    p = GaussianParams.from_activated([[0.4, -0.6, 0.3]], [[1.6, 1.0, 1.3]], [0.9],
                                      [[0.8, 0.3, -0.3, 0.4]])
    mass = p.masses()[0]
    # The 4-sigma cut of a 3D Gaussian drops P(chi2_3 > 16) = 0.11 % of the mass;
    # sampling on the grid adds < 1e-5.
    k = VOXEL_CUTOFF_SIGMA
    tail = math.erfc(k / math.sqrt(2)) + math.sqrt(2 / math.pi) * k * math.exp(-k * k / 2)
    for h in (1.0, 0.5):
        n = round(24 / h)
        vol = voxelize_gaussians(p, (n, n, n), voxel_size=h)
        assert vol.sum() * h ** 3 == pytest.approx(mass * (1 - tail), rel=3e-4)
    # At voxel size 1, summing along Z is the 0-degree view (same pixel blur, same mass);
    # the two cuts (4 sigma in 3D, 3.5 sigma in 2D) differ by < 0.3 % of the peak.
    vol = voxelize_gaussians(p, (24, 16, 18))
    view = project_gaussians(p, [0.0], 16, 18)[0]
    np.testing.assert_allclose(vol.sum(axis=0), view, rtol=0, atol=3e-3 * view.max())


def test_voxelizer_chunking_gives_the_same_volume(taichi_cpu, rng, monkeypatch):
    params = random_params(rng, 6, (3.0, 3.0, 3.0))
    whole = voxelize_gaussians(params, (9, 10, 11))
    grads_whole = voxelize_gaussians_backward(params, whole)
    monkeypatch.setattr(render, "MAX_PAIRS_PER_CHUNK", 5)  # one Gaussian per chunk
    chunked = voxelize_gaussians(params, (9, 10, 11))
    grads_chunked = voxelize_gaussians_backward(params, whole)
    # Atomic adds in another order: float32 rounding only.
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6 * whole.max())
    np.testing.assert_allclose(grads_chunked.log_scales, grads_whole.log_scales, rtol=1e-4,
                               atol=1e-5 * np.abs(grads_whole.log_scales).max())
