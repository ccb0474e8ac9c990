"""The view loss: SSIM kernels against the numpy reference and finite differences, tilt
weights, gain/offset fit."""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.gaussian.loss import (
    default_data_range,
    fit_gain_offset,
    ssim_views,
    ssim_views_and_grad,
    tilt_weights,
    view_loss,
)

from . import reference_loss as ref

SHAPE = (2, 12, 14)  # tiny: every pixel is within 5 px of a border in some direction


def _pair(rng: np.random.Generator, shape=SHAPE, dtype=np.float64):
    """Measured views (smooth structure + noise) and a rendering that differs from them by
    at least 0.05 everywhere (so no pixel sits on the L1 kink during finite differences)."""
    n, ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    base = np.stack([np.sin(0.5 * xx + t) * np.cos(0.4 * yy) for t in range(n)])
    measured = base + 0.3 * rng.standard_normal(shape)
    delta = rng.uniform(0.05, 0.4, shape) * rng.choice([-1.0, 1.0], shape)
    return (measured + delta).astype(dtype), measured.astype(dtype)


# ----------------------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------------------

def test_reference_matches_skimage_in_the_interior(rng):
    """Away from the borders (>= 5 px) padding plays no part, so the reference's SSIM map
    must equal scikit-image's Gaussian-weighted SSIM (same K1, K2, sigma, 11 taps)."""
    from skimage.metrics import structural_similarity

    x, y = _pair(rng, (1, 24, 26))
    data_range = default_data_range(y)
    _, full = structural_similarity(x[0], y[0], data_range=data_range, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    ours = ref.ssim_map(x, y, data_range)[0]
    # Both float64 with the same formula; only summation order differs.
    np.testing.assert_allclose(ours[5:-5, 5:-5], full[5:-5, 5:-5], rtol=1e-10, atol=1e-12)


def test_reference_gradient_matches_finite_differences(rng):
    x, y = _pair(rng)
    data_range = 3.0
    grad = ref.ssim_views_grad(x, y, data_range)
    h = 1e-6
    for idx in [(0, 0, 0), (0, 11, 13), (1, 5, 7), (1, 0, 6), (0, 6, 13)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (ref.ssim_views(xp, y, data_range) - ref.ssim_views(xm, y, data_range)) / (2 * h)
        # Float64 central differences: truncation ~h^2, rounding ~1e-16 / h = 1e-10.
        assert fd[idx[0]] == pytest.approx(grad[idx], rel=1e-6, abs=1e-9)
        assert fd[1 - idx[0]] == 0.0  # views are independent


# ----------------------------------------------------------------------------------------
# Kernels against the reference (float32)
# ----------------------------------------------------------------------------------------

def test_ssim_forward_matches_reference(taichi_arch, rng):
    x, y = _pair(rng, dtype=np.float32)
    data_range = default_data_range(y)
    got = ssim_views(x, y)
    want = ref.ssim_views(x, y, data_range)
    assert got.shape == (2,)
    # float32 kernels: 121-tap blurs of values ~1 and the cancellation in m_xx - mu_x^2
    # leave ~1e-7 error per pixel (2e-8 measured on the mean); 1e-6 leaves room for
    # other backends' fast-math rounding.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_ssim_of_identical_views_is_one(taichi_cpu, rng):
    _, y = _pair(rng, dtype=np.float32)
    # A1 = B1 and A2 = B2 hold to rounding, so S = 1 at every pixel, borders included.
    np.testing.assert_allclose(ssim_views(y, y), 1.0, rtol=0, atol=1e-6)
    s, g = ssim_views_and_grad(y, y)
    np.testing.assert_allclose(s, 1.0, rtol=0, atol=1e-6)
    # SSIM's maximum: the gradient vanishes there (relative to a typical gradient ~1/n_pix).
    assert np.abs(g).max() < 1e-4 / (SHAPE[1] * SHAPE[2])


def test_ssim_is_below_one_and_symmetric(taichi_cpu, rng):
    x, y = _pair(rng, dtype=np.float32)
    s_xy = ssim_views(x, y, data_range=4.0)
    s_yx = ssim_views(y, x, data_range=4.0)
    assert np.all(s_xy < 1.0)
    np.testing.assert_allclose(s_xy, s_yx, rtol=0, atol=1e-6)  # float32 rounding


def test_ssim_gradient_matches_reference(taichi_arch, rng):
    x, y = _pair(rng, dtype=np.float32)
    s, g = ssim_views_and_grad(x, y, data_range=3.0)
    want = ref.ssim_views_grad(x, y, 3.0)
    assert g.shape == SHAPE and g.dtype == np.float32
    np.testing.assert_allclose(s, ref.ssim_views(x, y, 3.0), rtol=0, atol=1e-6)
    # float32: the per-pixel partials divide by B1 B2 (down to C1 C2 ~ 1e-5), which
    # amplifies rounding; 3e-7 of the largest entry measured, 1e-5 allowed.
    np.testing.assert_allclose(g, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("data_term", ["rmse", "l1"])
def test_view_loss_matches_reference(taichi_arch, rng, data_term):
    x, y = _pair(rng, dtype=np.float32)
    w = np.array([0.5, 1.5])
    loss, grad = view_loss(x, y, w, lambda_dssim=0.2, data_range=3.0, data_term=data_term)
    want_loss, want_grad = ref.view_loss(x, y, w, 0.2, 3.0, data_term)
    assert isinstance(loss, float)
    assert loss == pytest.approx(want_loss, rel=1e-6)  # float32 pixels, float64 sums
    # As in test_ssim_gradient_matches_reference (2e-7 measured).
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-5 * np.abs(want_grad).max())


def test_device_buffers_give_the_same_loss(taichi_cpu, rng, monkeypatch):
    # The GPU keeps the SSIM's work arrays as Taichi arrays between calls; the CPU backend
    # runs the same path when asked, which must give the host arrays' numbers exactly
    # (the same kernels on the same values), also for a second shape and a repeated call
    # whose buffers are reused.
    from taichi_etgs.gaussian import loss

    x, y = _pair(rng, dtype=np.float32)
    w = np.array([0.5, 1.5])
    host = view_loss(x, y, w, lambda_dssim=0.2, data_range=3.0)
    monkeypatch.setattr(loss, "DEVICE_BUFFERS", True)
    for _ in range(2):
        device = view_loss(x, y, w, lambda_dssim=0.2, data_range=3.0)
        assert device[0] == host[0] and np.array_equal(device[1], host[1])
    one = ssim_views(x[:1], y[:1], data_range=3.0)
    np.testing.assert_array_equal(one, ssim_views(x, y, data_range=3.0)[:1])
    assert all(len(kept) <= 2 for name, kept in loss._BUFFERS.items() if name != "starts")


def test_dssim_is_weighted_once(taichi_cpu, rng):
    x, y = _pair(rng, dtype=np.float32)
    w = np.array([1.0, 3.0])
    ssim = ssim_views(x, y, data_range=3.0)
    l1 = np.abs(x.astype(np.float64) - y).mean(axis=(1, 2))
    dssim_only, _ = view_loss(x, y, w, lambda_dssim=1.0, data_range=3.0)
    assert dssim_only == pytest.approx(np.average(1 - ssim, weights=w), rel=1e-6)
    l1_only, g1 = view_loss(x, y, w, lambda_dssim=0.0, data_range=3.0, data_term="l1")
    assert l1_only == pytest.approx(np.average(l1, weights=w), rel=1e-6)
    # L1 alone: the gradient is w_t sign(r - m) / (sum w * n_pix), exactly.
    n_pix = SHAPE[1] * SHAPE[2]
    want = (w / w.sum())[:, None, None] * np.sign(x - y) / n_pix
    np.testing.assert_allclose(g1, want, rtol=1e-6)
    mixed, _ = view_loss(x, y, w, lambda_dssim=0.2, data_range=3.0, data_term="l1")
    assert mixed == pytest.approx(0.8 * l1_only + 0.2 * dssim_only, rel=1e-6)


def test_rmse_term(taichi_cpu, rng):
    # The default data term is each view's RMSE: its gradient is the misfit over
    # (n_pix rms), so the term has the views' units, like L1, whatever their noise.
    x, y = _pair(rng, dtype=np.float32)
    w = np.array([1.0, 3.0])
    e = x.astype(np.float64) - y
    rms = np.sqrt((e * e).mean(axis=(1, 2)))
    loss, grad = view_loss(x, y, w, lambda_dssim=0.0, data_range=3.0)
    assert loss == pytest.approx(np.average(rms, weights=w), rel=1e-6)
    n_pix = SHAPE[1] * SHAPE[2]
    want = (w / w.sum())[:, None, None] * e / (n_pix * rms[:, None, None])
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    # Twice the misfit, twice the term, the same gradient (units of the views).
    loss2, grad2 = view_loss(y + 2 * (x - y), y, w, lambda_dssim=0.0, data_range=3.0)
    assert loss2 == pytest.approx(2 * loss, rel=1e-5)
    np.testing.assert_allclose(grad2, grad, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    # A view rendered exactly has no gradient (not 0/0).
    exact = x.copy()
    exact[0] = y[0]
    _, g = view_loss(exact, y, w, lambda_dssim=0.0, data_range=3.0)
    assert np.all(g[0] == 0.0) and np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="data term"):
        view_loss(x, y, w, data_term="l2")


def test_zero_weight_view_has_no_gradient(taichi_cpu, rng):
    x, y = _pair(rng, dtype=np.float32)
    _, grad = view_loss(x, y, np.array([0.0, 1.0]), data_range=3.0)
    assert np.all(grad[0] == 0.0) and np.any(grad[1] != 0.0)


# ----------------------------------------------------------------------------------------
# Gradients against central finite differences (float64 kernels)
# ----------------------------------------------------------------------------------------

# Corners, edges (where zero padding matters) and interior pixels of both views.
_PIXELS = [(0, 0, 0), (0, 0, 13), (0, 11, 0), (1, 11, 13), (1, 0, 7), (0, 6, 0),
           (1, 6, 13), (0, 5, 6), (1, 3, 9), (1, 8, 2), (0, 2, 2), (1, 10, 11)]


@pytest.mark.parametrize("lambda_dssim,data_term", [(0.0, "rmse"), (0.2, "rmse"),
                                                     (0.0, "l1"), (0.2, "l1"), (1.0, "l1")])
def test_view_loss_gradient_finite_differences(taichi_f64, rng, lambda_dssim, data_term):
    x, y = _pair(rng)
    w = np.array([0.7, 1.3])
    data_range = 3.0
    _, grad = view_loss(x, y, w, lambda_dssim, data_range, data_term)
    assert grad.dtype == np.float64
    h = 1e-6  # below the 0.05 margin to the L1 kink: the loss is smooth on [x-h, x+h]

    def f(z):
        return view_loss(z, y, w, lambda_dssim, data_range, data_term)[0]

    for idx in _PIXELS:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (f(xp) - f(xm)) / (2 * h)
        # Truncation ~h^2 * f''' and rounding ~1e-16 * loss / h ~ 1e-10; gradients ~1e-3.
        assert fd == pytest.approx(grad[idx], rel=1e-5, abs=1e-9), idx
    for _ in range(2):  # whole-image directional derivatives
        d = rng.standard_normal(x.shape)
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
        assert fd == pytest.approx(float(np.sum(grad * d)), rel=1e-5, abs=1e-9)


def test_ssim_gradient_finite_differences(taichi_f64, rng):
    x, y = _pair(rng)
    s, g = ssim_views_and_grad(x, y, data_range=2.5)
    np.testing.assert_allclose(s, ref.ssim_views(x, y, 2.5), rtol=1e-12)
    h = 1e-6
    for idx in _PIXELS[:6]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (ssim_views(xp, y, 2.5) - ssim_views(xm, y, 2.5)) / (2 * h)
        assert fd[idx[0]] == pytest.approx(g[idx], rel=1e-5, abs=1e-9), idx


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------

def test_bad_inputs_raise(taichi_cpu, rng):
    x, y = _pair(rng, dtype=np.float32)
    with pytest.raises(ValueError, match="of one shape"):
        view_loss(x, y[:, :-1], None)
    with pytest.raises(ValueError, match="lambda_dssim"):
        view_loss(x, y, None, lambda_dssim=1.5)
    with pytest.raises(ValueError, match="one value per view"):
        view_loss(x, y, np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        view_loss(x, y, np.array([-1.0, 2.0]))
    with pytest.raises(ValueError, match="data range"):
        ssim_views(x, np.zeros_like(y))
    with pytest.raises(ValueError, match="positive"):
        ssim_views(x, y, data_range=0.0)


# ----------------------------------------------------------------------------------------
# Tilt weights
# ----------------------------------------------------------------------------------------

def test_tilt_weights_values():
    tilts = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
    cos = np.cos(np.deg2rad(tilts))
    np.testing.assert_allclose(tilt_weights(tilts, "cos"), cos / cos.mean(), rtol=1e-15)
    np.testing.assert_array_equal(tilt_weights(tilts, "uniform"), np.ones(5))
    # clip(1.5 - theta^2 / 3600, 0.5, 1.5): 0.5 at +-60, 1.25 at +-30, 1.5 at 0.
    etgs = np.array([0.5, 1.25, 1.5, 1.25, 0.5])
    np.testing.assert_allclose(tilt_weights(tilts, "etgs"), etgs / etgs.mean(), rtol=1e-15)
    # Clipped at 0.5 beyond 60 degrees.
    w = tilt_weights(np.array([-70.0, 0.0, 70.0]), "etgs")
    np.testing.assert_allclose(w, np.array([0.5, 1.5, 0.5]) / (2.5 / 3), rtol=1e-15)
    for scheme in ("cos", "uniform", "etgs"):
        assert tilt_weights(tilts, scheme).mean() == pytest.approx(1.0, rel=1e-15)


def test_tilt_weights_errors():
    with pytest.raises(InputError, match="unknown tilt weight scheme 'sin'"):
        tilt_weights(np.zeros(3), "sin")
    with pytest.raises(InputError, match="at least one"):
        tilt_weights(np.zeros(0))
    with pytest.raises(InputError, match="< 90"):
        tilt_weights(np.array([0.0, 90.0]), "cos")
    with pytest.raises(InputError, match="finite"):
        tilt_weights(np.array([0.0, np.nan]), "uniform")


# ----------------------------------------------------------------------------------------
# Gain and offset
# ----------------------------------------------------------------------------------------

def test_fit_gain_offset_recovers_known_values(rng):
    rendered = rng.standard_normal(SHAPE).astype(np.float32)
    gain_true = np.array([0.7, 2.5])
    tilts = np.array([0.0, 60.0])
    offset_true = 0.3 / np.cos(np.deg2rad(tilts))  # ice mean growing as 1/cos
    measured = gain_true[:, None, None] * rendered + offset_true[:, None, None]
    gain, offset = fit_gain_offset(rendered, measured)
    # Noise-free: exact up to float32 storage of the inputs.
    np.testing.assert_allclose(gain, gain_true, rtol=1e-6)
    np.testing.assert_allclose(offset, offset_true, rtol=0, atol=1e-6)
    # With noise it is the least-squares solution: residual orthogonal to (r, 1).
    noisy = measured + 0.1 * rng.standard_normal(SHAPE)
    gain, offset = fit_gain_offset(rendered, noisy)
    resid = noisy - gain[:, None, None] * rendered - offset[:, None, None]
    np.testing.assert_allclose(resid.sum(axis=(1, 2)), 0.0, atol=1e-9)
    np.testing.assert_allclose((resid * rendered).sum(axis=(1, 2)), 0.0, atol=1e-9)


def test_fit_offset_only_and_flat_rendering(rng):
    rendered = rng.standard_normal(SHAPE)
    measured = 3.0 * rendered + 1.0
    gain, offset = fit_gain_offset(rendered, measured, fit_gain=False)
    np.testing.assert_array_equal(gain, 1.0)
    np.testing.assert_allclose(offset, (measured - rendered).mean(axis=(1, 2)), rtol=1e-12)
    # An empty model renders zeros: the gain is undetermined and left at 1.
    gain, offset = fit_gain_offset(np.zeros(SHAPE), measured)
    np.testing.assert_array_equal(gain, 1.0)
    np.testing.assert_allclose(offset, measured.mean(axis=(1, 2)), rtol=1e-12)
