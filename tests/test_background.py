"""The ice slab model (taichi_etgs/gaussian/background.py): Jacobian, physics,
voxelisation, fitting."""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.gaussian.background import (
    MIN_EXPLAINED,
    SLAB_PARAMETERS,
    SlabBackground,
    _averaged_columns,
    fit_slab,
)
from taichi_etgs.gaussian.transfer import Microscope, ViewFilter

# Midpoint quadrature over a grid that ends 8 edge widths outside each face: the
# integrand's tails beyond it hold ~exp(-8) = 3.4e-4 voxel of density per face, i.e. a
# relative deficit of ~2 exp(-8) / T (4.5e-5 for T = 15); the step (0.25 voxel on an
# analytic integrand) adds nothing measurable. 2e-4 covers that with a margin.
QUADRATURE_RTOL = 2e-4


def _sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _columns(nu):
    return np.arange(nu) + 0.5 - nu / 2.0


# --------------------------------------------------------------------------- Jacobian

def test_jacobian_matches_central_differences():
    # Inclined slab, both ends inside the detector at every tilt, asymmetric faces.
    slab = SlabBackground(1.3, -5.2, 6.7, -12.3, 10.8, angle_rad=0.15, edge=1.0)
    tilts = np.array([-50.0, -20.0, 0.0, 30.0, 55.0])
    nu = 48
    _, jac = slab.profiles(tilts, nu, with_jacobian=True)
    assert jac.shape == (tilts.size, nu, 6)
    v = slab.vector()
    h = 1e-5  # voxels / radians / density units: truncation ~h^2, round-off ~1e-16/h
    for k, name in enumerate(SLAB_PARAMETERS):
        up, down = v.copy(), v.copy()
        up[k] += h
        down[k] -= h
        fd = (SlabBackground.from_vector(up, slab.edge).profiles(tilts, nu)[0]
              - SlabBackground.from_vector(down, slab.edge).profiles(tilts, nu)[0]) / (2 * h)
        scale = np.abs(jac[..., k]).max()
        assert scale > 0, name
        err = np.abs(fd - jac[..., k]).max() / scale
        if name in ("z_lo", "z_hi"):
            # The zeta quadrature grid spans [z_lo - 8 edge, z_hi + 8 edge] and moves with
            # the faces: the finite difference sees integrand (~sigmoid(-8) = 3.4e-4 of the
            # plateau) enter and leave at the grid's ends and the nodes shift, while the
            # Jacobian is the derivative at a fixed grid. Measured 3.4e-4; 1e-3 relative.
            assert err < 1e-3, (name, err)
        else:
            # Exact derivative of the same quadrature: only finite-difference error
            # (measured <= 6e-10).
            assert err < 1e-7, (name, err)


# --------------------------------------------------------------------------- physics

def test_untilted_wide_slab_projects_to_density_times_thickness():
    c, z_lo, z_hi = 0.7, -6.0, 9.0
    slab = SlabBackground(c, z_lo, z_hi, -1e4, 1e4)  # far wider than the detector
    p, jac = slab.profiles([0.0], 32)
    assert jac is None
    np.testing.assert_allclose(p, c * (z_hi - z_lo), rtol=QUADRATURE_RTOL)


@pytest.mark.parametrize("tilt", [-60.0, -25.0, 40.0, 55.0])
def test_tilted_open_slab_projects_to_thickness_over_cos(tilt):
    c, z_lo, z_hi = 0.7, -6.0, 9.0
    slab = SlabBackground(c, z_lo, z_hi, -1e4, 1e4)
    p, _ = slab.profiles([tilt], 32)
    expected = c * (z_hi - z_lo) / np.cos(np.deg2rad(tilt))
    np.testing.assert_allclose(p, expected, rtol=QUADRATURE_RTOL)


def _half_height_crossings(u, p, half):
    """Linearly interpolated u where p first rises through and last falls through half."""
    up = np.where((p[:-1] < half) & (p[1:] >= half))[0][0]
    down = np.where((p[:-1] >= half) & (p[1:] < half))[0][-1]
    u_left = u[up] + (half - p[up]) / (p[up + 1] - p[up])
    u_right = u[down] + (p[down] - half) / (p[down] - p[down + 1])
    return u_left, u_right


@pytest.mark.parametrize("tilt", [-45.0, -30.0, 0.0, 30.0, 60.0])
def test_slab_ending_in_view_gives_trapezoid_moving_with_tilt(tilt):
    # Faces off centre (mid-plane z_m = 3) so that the sign of the tilt's shift shows.
    c, z_lo, z_hi, x_lo, x_hi = 0.9, -2.0, 8.0, -30.0, 25.0
    thickness, z_mid = z_hi - z_lo, 0.5 * (z_lo + z_hi)
    slab = SlabBackground(c, z_lo, z_hi, x_lo, x_hi)
    nu = 128
    u = _columns(nu)
    p = slab.profiles([tilt], nu)[0][0]
    theta = np.deg2rad(tilt)
    plateau = c * thickness / np.cos(theta)
    # The middle of the trapezoid sees the full thickness along the beam.
    np.testing.assert_allclose(p[nu // 2], plateau, rtol=QUADRATURE_RTOL)
    assert p.max() <= plateau * (1 + QUADRATURE_RTOL)
    # Outside the ends, nothing (beyond the ramps, > 8 edge widths away).
    assert abs(p[0]) < 1e-6 * plateau and abs(p[-1]) < 1e-6 * plateau
    # u = x cos(theta) + z sin(theta): the end x = x_hi spans, over the slab's depth,
    # u in [x_hi cos + z_lo sin, x_hi cos + z_hi sin]; the ramp is odd about its middle
    # (the z profile is symmetric about z_m, sigmoid(a) + sigmoid(-a) = 1), so half the
    # plateau is reached exactly at u = x_hi cos(theta) + z_m sin(theta) (and likewise
    # at the x_lo end). The opposite sign convention would put it 2 z_m |sin| = 3 voxels
    # (at 30 deg) away.
    u_left, u_right = _half_height_crossings(u, p, 0.5 * plateau)
    # Linear interpolation between columns one voxel apart, at the ramp's inflection
    # point: measured <= 2e-3 voxel.
    assert u_right == pytest.approx(x_hi * np.cos(theta) + z_mid * np.sin(theta), abs=0.01)
    assert u_left == pytest.approx(x_lo * np.cos(theta) + z_mid * np.sin(theta), abs=0.01)


# --------------------------------------------------------------------------- volume

def test_volume_density_inside_and_zero_outside():
    slab = SlabBackground(1.7, -9.0, 8.0, -20.0, 18.0, angle_rad=0.1, edge=1.0)
    nz, ny, nx = 48, 3, 80
    vol = slab.volume((nz, ny, nx))
    assert vol.shape == (nz, ny, nx) and vol.dtype == np.float32
    assert np.array_equal(vol[:, 0], vol[:, 2])  # nothing depends on y
    z = _columns(nz)[:, None]
    x = _columns(nx)[None, :]
    ca, sa = np.cos(slab.angle_rad), np.sin(slab.angle_rad)
    xi, zeta = x * ca + z * sa, -x * sa + z * ca
    # Distance inside the slab (positive) or outside it (negative), in edge widths.
    depth = np.minimum.reduce([zeta - slab.z_lo, slab.z_hi - zeta, xi - slab.x_lo,
                               slab.x_hi - xi])
    inside, outside = depth > 6.0, depth < -8.0
    assert inside.sum() > 100 and outside.sum() > 100
    # Six edge widths inside every face: sigmoid(6)^4 = 0.990, so within 1.1%.
    np.testing.assert_allclose(vol[:, 1][inside], slab.density, rtol=0.011)
    # Eight edge widths outside a face: at most sigmoid(-8) = 3.4e-4 of the density.
    assert np.abs(vol[:, 1][outside]).max() < 3.4e-4 * slab.density


def test_volume_voxel_size_scales_coordinates():
    # Sampling at spacing 2 equals sampling at spacing 1 a slab with every length halved.
    slab = SlabBackground(1.2, -10.0, 7.0, -30.0, 26.0, angle_rad=-0.2, edge=2.0)
    half = SlabBackground(1.2, -5.0, 3.5, -15.0, 13.0, angle_rad=-0.2, edge=1.0)
    a = slab.volume((20, 1, 36), voxel_size=2.0)
    b = half.volume((20, 1, 36), voxel_size=1.0)
    # Both are float32 casts of the same float64 numbers up to rounding of the scaled
    # coordinates: a few float32 ulps.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert a.max() > 1.0  # the slab is in the grid, so the comparison is not 0 == 0


def test_volume_projection_matches_profiles(taichi_cpu):
    from taichi_etgs.classical.projector import forward_project

    # Inclined slab, ends and faces inside the box by more than 8 edge widths at every
    # tilt, so the box does not cut it.
    slab = SlabBackground(1.0, -6.0, 5.0, -20.0, 18.0, angle_rad=0.1, edge=1.0)
    nz, ny, nx = 40, 2, 80
    tilts = np.array([-60.0, -35.0, -10.0, 0.0, 20.0, 45.0, 60.0])
    views = forward_project(slab.volume((nz, ny, nx)), tilts)
    p, _ = slab.profiles(tilts, nx)
    assert views.shape == (tilts.size, ny, nx)
    # Voxel sampling of 1-voxel-wide soft edges and Joseph's linear interpolation along
    # the ray (float32) against the continuous quadrature: measured 2.3e-3 of the plateau,
    # all at the ramps; 1e-2 of the largest value.
    for row in range(ny):
        assert np.abs(views[:, row] - p).max() < 1e-2 * p.max()
    # Mass per view is conserved by both (float32 sums; measured 8e-5): 1e-3 relative.
    np.testing.assert_allclose(views[:, 0].sum(axis=1), p.sum(axis=1), rtol=1e-3)


# --------------------------------------------------------------------------- fit_slab

class RunawaySlab(RuntimeError):
    """fit_slab evaluated a slab whose quadrature grid would be absurdly large."""


@pytest.fixture
def bounded_quadrature(monkeypatch):
    """Refuse slabs whose zeta grid would span more than 4 * 10 * (width + thickness)
    voxels (the module's own 'far' is 10 (width + thickness)): a runaway step would
    otherwise allocate gigabytes on a shared machine. Set ``limit`` before fitting."""
    original = SlabBackground._zeta_grid
    state = {"limit": np.inf}

    def guarded(self):
        span = abs(self.z_hi - self.z_lo) + 16.0 * self.edge
        if not np.isfinite(span) or span > state["limit"]:
            raise RunawaySlab(f"quadrature over {span:.3g} voxels for {self}")
        return original(self)

    monkeypatch.setattr(SlabBackground, "_zeta_grid", guarded)
    return state


TILTS = np.arange(-60.0, 61.0, 10.0)


def _measured(slab, nu, transfer=None, seed=0):
    p, _ = slab.profiles(TILTS, nu)
    if transfer is not None:
        p = transfer(p)
    offsets = np.random.default_rng(seed).normal(0.0, 3.0, size=(TILTS.size, 1))
    return p + offsets  # the per-view offset fit_slab must ignore


def _assert_recovered(fitted, true, explained):
    # Noise-free data: the fit should be essentially exact; the brief's bounds are
    # half a voxel on faces and ends and 2% on the density.
    for name in ("z_lo", "z_hi", "x_lo", "x_hi"):
        assert getattr(fitted, name) == pytest.approx(getattr(true, name), abs=0.5), name
    assert fitted.density == pytest.approx(true.density, rel=0.02)
    assert explained > 0.99  # noise-free: all of the centred variance is the slab


@pytest.mark.parametrize("true", [
    SlabBackground(0.8, -11.3, 12.6, -31.4, 32.3, angle_rad=0.03),
    # 16.4 voxels: thin enough that wide-edge stages once collapsed it to a sheet.
    SlabBackground(0.8, -7.3, 9.1, -31.4, 32.3, angle_rad=0.04),
], ids=["thick", "thin"])
def test_fit_slab_recovers_box_slab(bounded_quadrature, true):
    # SHREC-style box: the slab fills the box's width, faces inside, slightly inclined.
    nz, nx = 32, 64
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    fitted, explained = fit_slab(_measured(true, nx), TILTS, nz, nx)
    _assert_recovered(fitted, true, explained)


def test_coarse_voxels_hold_the_sharp_slabs_mean_over_their_width():
    # A quarter-voxel face voxelised at 4 model voxels a voxel: each voxel must hold the
    # slab's mean over its width (here from 64 samples a voxel), within 0.06 of the density
    # (measured 0.05: the logistic only matches the box's variance). Sampled at the
    # centres with the slab's own edge, the faces' voxels were off by 0.19 and 0.23.
    slab = SlabBackground(1.0, -10.3, 9.6, -1e4, 1e4, edge=0.25)
    nz, h = 8, 4.0
    coarse = slab.volume((nz, 1, 2), voxel_size=h)[:, 0, 0]
    mean = slab.volume((nz * 64, 1, 2), voxel_size=h / 64)[:, 0, 0].reshape(nz, 64).mean(axis=1)
    np.testing.assert_allclose(coarse, mean, rtol=0, atol=0.06)
    # At the model's own voxels the slab keeps its edge.
    z = np.arange(24) + 0.5 - 12.0
    np.testing.assert_allclose(slab.volume((24, 1, 1))[:, 0, 0],
                               _sigmoid((z + 10.3) / 0.25) * _sigmoid((9.6 - z) / 0.25),
                               rtol=1e-6)


def test_fit_slab_finds_the_faces_of_a_sharp_slab(bounded_quadrature):
    # Ice ends sharply and a detector pixel averages over its width: a slab of edge 0.05
    # voxel, its profiles averaged over 8 positions across each pixel. The fit must put
    # faces and ends within 0.05 voxel (measured 0.02; with its edges stopping at 1 voxel,
    # as before, it widened the slab by 0.24 voxel per face: at 8 A a misplaced face of
    # an isolated box costs a tenth of the band FSC per half voxel).
    nz, nx = 48, 64
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    true = SlabBackground(0.8, -18.9, 19.5, -30.7, 31.4, angle_rad=0.02, edge=0.05)
    centres = _columns(nx)
    measured = np.mean([true.profiles(TILTS, nx, u=centres + (k + 0.5) / 8 - 0.5)[0]
                        for k in range(8)], axis=0)
    fitted, explained = fit_slab(measured, TILTS, nz, nx)
    for name in ("z_lo", "z_hi", "x_lo", "x_hi"):
        assert getattr(fitted, name) == pytest.approx(getattr(true, name), abs=0.05), name
    assert fitted.density == pytest.approx(true.density, rel=0.005)
    assert explained > 0.9999


def test_fit_slab_on_a_wide_detector_fits_averaged_columns(bounded_quadrature):
    # 600 columns are fitted as 200 averages of 3 (the odd count checks the groups'
    # centres): the slab must come out as from the full profiles, within the same bounds.
    nz, nx = 96, 600
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    true = SlabBackground(0.8, -40.3, 37.6, -251.4, 262.3, angle_rad=0.02)
    fitted, explained = fit_slab(_measured(true, nx), TILTS, nz, nx)
    _assert_recovered(fitted, true, explained)
    assert fitted.angle_rad == pytest.approx(true.angle_rad, abs=0.002)


def test_averaged_columns_centres():
    rows = np.arange(14, dtype=np.float64)[None, :] + 0.5 - 7.0  # each column's centre
    averaged, centres = _averaged_columns(rows, 4)  # 3 groups, the central 12 columns
    np.testing.assert_allclose(averaged[0], centres)
    np.testing.assert_allclose(centres, [-4.0, 0.0, 4.0])


def test_fit_slab_recovers_box_slab_through_transfer(bounded_quadrature):
    nz, nx = 32, 64
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    true = SlabBackground(0.8, -11.3, 12.6, -31.4, 32.3, angle_rad=0.03)
    ctf = ViewFilter(Microscope(defocus_um=3.0, pixel_size_A=8.0), (8, nx))
    fitted, explained = fit_slab(_measured(true, nx, ctf.apply_rows), TILTS, nz, nx,
                                 transfer=ctf.apply_rows)
    _assert_recovered(fitted, true, explained)
    # The filter matters: fitting the filtered profiles without it does not explain them.
    _, explained_without = fit_slab(_measured(true, nx, ctf.apply_rows), TILTS, nz, nx)
    assert explained_without < explained - 0.05


def test_fit_slab_through_the_simulators_microscope(bounded_quadrature):
    # The slab's projections imaged as the simulator images them (weak-phase CTF on
    # mirror-padded views, electron counts): the fit through ViewFilter must find the same
    # faces and ends. With the zero-padded filter of before the border rang: faces at
    # -7.6 / +9.0 against -11.3 / +12.6 here, 69 % of the variance explained.
    from taichi_etgs.preprocess import density_views
    from taichi_etgs.simulation.imaging import physical_images

    nz, nx, ny = 32, 64, 16
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    true = SlabBackground(0.8, -11.3, 12.6, -31.4, 32.3, angle_rad=0.03)
    projections = np.repeat(true.profiles(TILTS, nx)[0][:, None, :], ny, axis=1)
    counts, _ = physical_images(projections, 8.0, 1, np.full(TILTS.size, 1e9),
                                np.zeros(TILTS.size), np.random.default_rng(0),
                                radiation_damage=False, mean_free_path_A=1e30)
    rows = density_views(counts, "dark").mean(axis=1)
    ctf = ViewFilter(Microscope(defocus_um=3.0, pixel_size_A=8.0), (ny, nx))
    fitted, explained = fit_slab(rows, TILTS, nz, nx, transfer=ctf.apply_rows)
    for name in ("z_lo", "z_hi", "x_lo", "x_hi"):  # half a voxel, as for noise-free fits
        assert getattr(fitted, name) == pytest.approx(getattr(true, name), abs=0.5), name
    assert explained > 0.98  # the two paddings differ in width: not quite all


def test_fit_slab_rejects_white_noise(bounded_quadrature):
    nz, nx = 32, 64
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    noise = np.random.default_rng(7).normal(size=(TILTS.size, nx))
    fitted, explained = fit_slab(noise, TILTS, nz, nx)
    # Nothing slab-like explains MIN_EXPLAINED of white noise: the untrusted result.
    assert MIN_EXPLAINED > 0
    assert fitted.density == 0.0
    assert explained == 0.0
    # ... an open slab, so that the per-view offset alone carries the ice.
    assert fitted.x_lo < -nx and fitted.x_hi > nx


def test_fit_slab_keeps_quadrature_bounded(bounded_quadrature):
    nz, nx = 48, 96
    bounded_quadrature["limit"] = 40.0 * (nz + nx)
    true = SlabBackground(0.8, -11.6, 12.4, -47.4, 48.3)
    p, _ = true.profiles(TILTS, nx)
    fitted, explained = fit_slab(p, TILTS, nz, nx)
    _assert_recovered(fitted, true, explained)


@pytest.mark.parametrize("slab", [
    SlabBackground(0.8, -11.3, 12.6, -31.4, 32.3, angle_rad=0.03),  # ends in view
    SlabBackground(1.3, -7.3, 9.1, -900.0, 900.0, angle_rad=-0.02, edge=2.0),  # open
    # Thick and sharp: most nodes lie inside, away from faces and ends, and are counted by
    # the kernel instead of summed.
    SlabBackground(0.8, -30.2, 29.7, -40.4, 41.3, angle_rad=0.05),
    SlabBackground(0.8, -30.2, 29.7, -900.0, 900.0),
])
def test_project_kernel_matches_the_numpy_reference(taichi_cpu, slab):
    # The fit's evaluations (the Taichi kernel) against profiles() (numpy), both float64
    # over the same nodes: the summation order differs (the kernel counts the saturated
    # nodes) and the logistic is written with exp instead of tanh; 1e-12 of the largest
    # value allowed, round-off of a few hundred terms.
    tilts = np.array([-60.0, -33.0, 0.0, 12.5, 58.0])
    columns = np.random.default_rng(3).uniform(-40.0, 40.0, 70)  # fit_slab's averaged columns
    for with_jacobian, u in ((False, None), (True, None), (True, columns)):
        want, want_jac = slab.profiles(tilts, 70, with_jacobian=with_jacobian, u=u)
        got, got_jac = slab.project(tilts, 70, with_jacobian=with_jacobian, u=u)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
        if with_jacobian:
            np.testing.assert_allclose(got_jac, want_jac, rtol=0,
                                       atol=1e-12 * np.abs(want_jac).max())
        else:
            assert got_jac is None



def test_project_moves_each_view_by_its_shift(taichi_cpu):
    # A view whose misalignment the model carries: its profile sampled at u - shift, as
    # profiles() gives it (same summation as above: 1e-12 of the largest value).
    slab = SlabBackground(0.8, -11.3, 12.6, -31.4, 32.3, angle_rad=0.03)
    tilts = np.array([-60.0, -33.0, 0.0, 12.5, 58.0])
    shifts = np.array([0.4, 0.0, -1.7, 0.4, 2.0])
    u = np.arange(70) + 0.5 - 35.0
    got, got_jac = slab.project(tilts, 70, with_jacobian=True, u_shift=shifts)
    for t, shift in enumerate(shifts):
        want, want_jac = slab.profiles(tilts[t:t + 1], 70, with_jacobian=True, u=u - shift)
        np.testing.assert_allclose(got[t], want[0], rtol=0, atol=1e-12 * np.abs(want).max())
        np.testing.assert_allclose(got_jac[t], want_jac[0], rtol=0,
                                   atol=1e-12 * np.abs(want_jac).max())
    assert not np.allclose(got[0], slab.project(tilts[:1], 70)[0][0])


def test_a_slab_ends_within_the_box_only_when_it_spans_it():
    # The axis search (prealign_views) runs only for such a slab: an isolated specimen.
    width = 128
    assert SlabBackground(1.0, -16, 16, -64, 64).ends_within(width)
    assert not SlabBackground(0.0, -16, 16, -64, 64).ends_within(width)  # no slab
    assert not SlabBackground(1.0, -16, 16, -1600, 1600).ends_within(width)  # runs past
    assert not SlabBackground(1.0, -7, 9, 6, 14).ends_within(width)  # a lump of specimen
