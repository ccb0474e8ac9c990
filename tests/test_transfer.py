"""The CTF in the forward model (taichi_etgs/gaussian/transfer.py): linear algebra and physics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from taichi_etgs.errors import InputError
from taichi_etgs.gaussian.transfer import Microscope, ViewFilter

SCOPE = Microscope(defocus_um=3.0, pixel_size_A=8.0)


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_adjoint_is_transpose_of_apply(rng):
    f = ViewFilter(SCOPE, (20, 24))
    x = rng.normal(size=(3, 20, 24))
    y = rng.normal(size=(3, 20, 24))
    ax, aty = f.apply(x), f.adjoint(y)
    assert ax.dtype == np.float64 and aty.dtype == np.float64
    lhs, rhs = np.vdot(ax, y), np.vdot(x, aty)
    assert abs(lhs) > 1e-3  # a real inner product, not 0 == 0
    # Both sides are the same float64 FFT chain in a different order: round-off only
    # (measured 1.5e-15).
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_float32_views_are_filtered_in_float32(rng):
    # A run's views and gradients are float32: filtered in float32 (faster FFTs), they
    # match the float64 chain to float32 round-off (measured 2.6e-7 of the largest value)
    # and the adjoint identity holds to it.
    f = ViewFilter(SCOPE, (40, 48))
    x = rng.normal(size=(3, 40, 48)).astype(np.float32)
    y = rng.normal(size=(3, 40, 48)).astype(np.float32)
    ax, aty = f.apply(x), f.adjoint(y)
    assert ax.dtype == np.float32 and aty.dtype == np.float32
    ax64, aty64 = f.apply(x.astype(np.float64)), f.adjoint(y.astype(np.float64))
    assert np.abs(ax - ax64).max() <= 2e-6 * np.abs(ax64).max()
    assert np.abs(aty - aty64).max() <= 2e-6 * np.abs(aty64).max()
    lhs, rhs = np.vdot(ax.astype(np.float64), y), np.vdot(x, aty.astype(np.float64))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_adjoint_of_a_single_view_pair(rng):
    # The same identity view by view: no cross-talk between views.
    f = ViewFilter(SCOPE, (12, 16), pad=4)
    x = rng.normal(size=(2, 12, 16))
    y = np.zeros((2, 12, 16))
    y[1] = rng.normal(size=(12, 16))
    ax = f.apply(x)
    assert np.vdot(ax[1], y[1]) == pytest.approx(np.vdot(x, f.adjoint(y)), rel=1e-10)  # round-off


def test_constant_view_maps_to_zero():
    f = ViewFilter(SCOPE, (16, 20))
    views = np.stack([np.full((16, 20), 5.0), np.full((16, 20), -2.5)])
    out = f.apply(views)
    # The mean is removed before filtering: only round-off of the mean subtraction
    # (|views| <= 5) can remain.
    assert np.abs(out).max() < 1e-12
    # Whereas a non-constant view does not vanish (so the check can fail).
    views[0, :, :10] += 1.0
    assert np.abs(f.apply(views)[0]).max() > 1e-2


def test_filter_is_the_negated_ctf_positive_at_low_frequency():
    f = ViewFilter(SCOPE, (16, 16))
    # Density views are negated images: H = -CTF = amplitude contrast at k = 0.
    assert f.h[0, 0] == pytest.approx(SCOPE.amplitude_contrast, abs=1e-12)  # exact formula
    assert f.h.shape == (16 + 2 * f.pad, (16 + 2 * f.pad) // 2 + 1)
    assert np.array_equal(f.h_rows, f.h[0])


def test_phase_flip_undoes_the_sign_of_the_ctf():
    f = ViewFilter(SCOPE, (64, 64))
    # A smooth random image with power past the CTF's first zero (~24 A at 3 um, i.e.
    # 0.33 cycles per 8 A pixel), where the CTF has flipped contrast.
    for seed in range(3):
        x = gaussian_filter(np.random.default_rng(seed).normal(size=(64, 64)), 1.0,
                            mode="wrap")[None]
        filtered = f.apply(x)
        flipped = f.phase_flip(filtered)
        assert flipped.shape == x.shape
        c_filtered, c_flipped = _corr(filtered, x), _corr(flipped, x)
        # Measured 0.84-0.86 -> 0.86-0.88 over seeds, the gain steady at 0.025 +- 0.002:
        # demand a gain of 0.01, well clear of seed-to-seed scatter.
        assert c_flipped > c_filtered + 0.01, (seed, c_filtered, c_flipped)


@pytest.mark.parametrize("ny", [8, 64])
def test_apply_rows_is_exact_row_average_of_apply(rng, ny):
    # A view whose rows all hold one profile has only ky = 0 content, and mirror padding
    # keeps it so (the border repeats the same rows): the 2D filter is the ky = 0 line
    # along u, equal to round-off at any height.
    nu = 48
    f = ViewFilter(SCOPE, (ny, nu))
    profile = rng.normal(size=nu)
    view = np.tile(profile, (ny, 1))[None]
    rows = f.apply_rows(profile)
    assert np.abs(rows).max() > 0.1
    np.testing.assert_allclose(f.apply(view)[0].mean(axis=0), rows, rtol=0,
                               atol=1e-12 * np.abs(rows).max())  # FFT round-off


def test_filter_matches_the_simulator_image_formation(rng):
    # The forward model must see what the microscope (the simulator's weak-phase model,
    # mirror-padded) makes of a projection dominated by an ice slab ending inside the view:
    # a zero border would ring there with hundreds of times the specimen's contrast.
    from taichi_etgs.preprocess import density_views
    from taichi_etgs.simulation.imaging import interaction_constant, physical_images

    ny, nu, pix = 32, 64, 8.0
    u = np.arange(nu) - nu / 2
    slab = 200.0 * np.clip((40 - np.abs(u)) / 10, 0, 1)  # a trapezoid: ice ending in view
    projection = slab[None, :] + gaussian_filter(rng.normal(size=(ny, nu)), 1.5)
    dose = 1e12  # e/A^2: Poisson noise ~1e-7 of the signal
    counts, _ = physical_images(projection[None], pix, 1, np.array([dose]), np.zeros(1),
                                np.random.default_rng(0), radiation_damage=False,
                                mean_free_path_A=1e30)
    measured = density_views(counts, "dark")[0] / (2 * interaction_constant(300.0) * pix
                                                  * dose * pix ** 2)
    f = ViewFilter(Microscope(3.0, pix), (ny, nu))
    predicted = f.apply(projection[None])[0]
    err = np.abs(predicted - measured).max() / np.abs(measured).max()
    # What lies past the border is a guess either way and the simulator mirrors a band as
    # wide as its delocalisation (7 px here, 16 px here): measured 1.2 % at the border.
    assert err < 0.05, err
    zero_padded = ViewFilter(Microscope(3.0, pix), (ny, nu), pad=0)
    err0 = np.abs(zero_padded.apply(projection[None])[0] - measured).max() / np.abs(measured).max()
    assert err0 > 10 * err  # measured 75 %: without padding the borders wrap around


def test_apply_rows_broadcasts_over_leading_axes(rng):
    f = ViewFilter(SCOPE, (8, 32))
    profiles = rng.normal(size=(3, 6, 32))
    out = f.apply_rows(profiles)
    assert out.shape == profiles.shape
    np.testing.assert_allclose(out[2, 4], f.apply_rows(profiles[2, 4]), rtol=0,
                               atol=1e-12)  # same FFT per row: round-off


# -- per-view and astigmatic CTF -------------------------------------------------------

PER_VIEW = Microscope(defocus_um=(2.0, 3.0, 4.5), pixel_size_A=8.0)
ASTIG = Microscope(defocus_um=(3.4, 2.5, 3.0), pixel_size_A=8.0, defocus2_um=(2.6, 2.5, 2.0),
                   astigmatism_deg=(30.0, 0.0, -75.0))


@pytest.mark.parametrize("scope", [PER_VIEW, ASTIG], ids=["per-view", "astigmatic"])
def test_per_view_adjoint_is_transpose_of_apply(rng, scope):
    f = ViewFilter(scope, (20, 24))
    index = np.array([2, 0, 1, 2])  # any views, in any order, repeated
    x = rng.normal(size=(4, 20, 24))
    y = rng.normal(size=(4, 20, 24))
    lhs, rhs = np.vdot(f.apply(x, index), y), np.vdot(x, f.adjoint(y, index))
    assert abs(lhs) > 1e-3
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)  # float64 FFT round-off (measured 1e-15)


@pytest.mark.parametrize("scope", [PER_VIEW, ASTIG], ids=["per-view", "astigmatic"])
def test_per_view_filter_is_each_views_own_filter(rng, scope):
    # View t of a per-view filter is the single-defocus filter of view t's constants.
    f = ViewFilter(scope, (16, 20))
    x = rng.normal(size=(3, 16, 20))
    out = f.apply(x, [1, 2, 0])
    for k, t in enumerate([1, 2, 0]):
        d1, d2, azimuth = scope.view(t)
        single = ViewFilter(Microscope(d1, 8.0, defocus2_um=d2, astigmatism_deg=azimuth),
                            (16, 20))
        np.testing.assert_allclose(out[k], single.apply(x[k:k + 1])[0], rtol=0,
                                   atol=1e-12)  # same FFT chain: round-off
    # And the views differ from one another (the per-view constants are used).
    assert np.abs(f.apply(x[:1], [0]) - f.apply(x[:1], [2])).max() > 0.1
    with pytest.raises(ValueError, match="2 view indices for 3 views"):
        f.apply(x, [0, 1])


def test_per_view_apply_rows_is_row_average_of_apply(rng):
    ny, nu = 8, 48
    f = ViewFilter(ASTIG, (ny, nu))
    profiles = rng.normal(size=(3, nu))
    index = [2, 1, 0]
    rows = f.apply_rows(profiles, index)
    views = np.repeat(profiles[:, None, :], ny, axis=1)
    np.testing.assert_allclose(f.apply(views, index).mean(axis=1), rows, rtol=0,
                               atol=1e-12 * np.abs(rows).max())  # FFT round-off
    # The Jacobian layout of the slab fit: views first, then anything, profiles last.
    stacked = f.apply_rows(np.stack([profiles, 2 * profiles], axis=1), index)
    np.testing.assert_allclose(stacked[:, 1], 2 * rows, rtol=0, atol=1e-12)


def test_astigmatic_ctf_follows_its_azimuth():
    from taichi_etgs.simulation.imaging import ctf_2d

    shape, pix = (64, 64), 5.0
    iso = ctf_2d(shape, pix, 3.0)
    np.testing.assert_array_equal(ctf_2d(shape, pix, 3.0, defocus2_um=3.0,
                                         astigmatism_deg=40.0), iso)
    # Along the azimuth the CTF is the isotropic one of defocus 1, across it of defocus 2.
    astig = ctf_2d(shape, pix, 3.5, defocus2_um=2.5, astigmatism_deg=0.0)
    np.testing.assert_allclose(astig[0, :], ctf_2d(shape, pix, 3.5)[0, :], atol=1e-12)
    np.testing.assert_allclose(astig[:, 0], ctf_2d(shape, pix, 2.5)[:, 0], atol=1e-12)
    # An azimuth of 90 degrees swaps them; +Y is the row index (ky > 0 for rows 1..).
    turned = ctf_2d(shape, pix, 3.5, defocus2_um=2.5, astigmatism_deg=90.0)
    np.testing.assert_allclose(turned[:, 0], ctf_2d(shape, pix, 3.5)[:, 0], atol=1e-12)
    # At 45 degrees the diagonal (kx = ky > 0) sees defocus 1.
    diag = ctf_2d(shape, pix, 3.5, defocus2_um=2.5, astigmatism_deg=45.0)
    k = np.arange(1, 20)
    np.testing.assert_allclose(diag[k, k], ctf_2d(shape, pix, 3.5)[k, k], atol=1e-12)
    assert np.abs(diag[k, k] - ctf_2d(shape, pix, 2.5)[k, k]).max() > 0.1


def test_config_per_view_ctf_survives_a_state_file_round_trip():
    import json

    from taichi_etgs.gaussian.fit import ReconstructConfig

    cfg = ReconstructConfig(defocus_per_view_um=[3.0, 3.1, 3.2],
                            defocus2_per_view_um=[2.8, 2.9, 3.0],
                            astigmatism_per_view_deg=[10.0, 11.0, 12.0], pixel_size_A=8.0)
    back = ReconstructConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.has_ctf
    assert back.microscope().view(2) == (3.2, 3.0, 12.0)
    assert back.select_views([2, 0]).defocus_per_view_um == [3.2, 3.0]
    with pytest.raises(InputError, match="one value per view"):
        ReconstructConfig(defocus_per_view_um=[3.0, 3.1], defocus2_per_view_um=[2.0],
                          pixel_size_A=8.0)
    with pytest.raises(InputError, match="pixel size"):
        ReconstructConfig(defocus_per_view_um=[3.0])
