"""Plain numpy/scipy reference of SSIM, its gradient, and the view loss (float64).

Independent of the Taichi kernels: the blur is ``scipy.ndimage.gaussian_filter1d`` with
``sigma=1.5, radius=5`` (11 normalised taps) and ``mode="constant", cval=0`` (zero padding),
the kernels' conventions. The gradient is derived per term: ``S = A1 A2 / (B1 B2)`` with
``sigma_xy = m_xy - mu_x mu_y`` and ``sigma_xx = m_xx - mu_x^2``; the chain rule through the
moments ``mu_x = G x``, ``m_xx = G x^2``, ``m_xy = G x y`` uses ``G^T``, applied as a
correlation with the flipped window (the window is symmetric, so it is the same filter).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

SIGMA = 1.5
RADIUS = 5


def blur(a: np.ndarray) -> np.ndarray:
    """Separable 11x11 Gaussian blur of each view, zero padding. [n, ny, nx]"""
    out = gaussian_filter1d(np.asarray(a, dtype=np.float64), SIGMA, axis=-1, mode="constant",
                            cval=0.0, radius=RADIUS)
    return gaussian_filter1d(out, SIGMA, axis=-2, mode="constant", cval=0.0, radius=RADIUS)


def blur_transpose(a: np.ndarray) -> np.ndarray:
    """``G^T a``: correlation with the flipped window (equal to ``blur`` for this window)."""
    flipped = np.asarray(a, dtype=np.float64)[..., ::-1, ::-1]
    return blur(flipped)[..., ::-1, ::-1]


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """Per-pixel SSIM of each view. [n, ny, nx]"""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mu_x, mu_y = blur(x), blur(y)
    s_xx = blur(x * x) - mu_x ** 2
    s_yy = blur(y * y) - mu_y ** 2
    s_xy = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * s_xy + c2)
            / ((mu_x ** 2 + mu_y ** 2 + c1) * (s_xx + s_yy + c2)))


def ssim_views(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """Mean SSIM per view. [n]"""
    return ssim_map(x, y, data_range).mean(axis=(1, 2))


def ssim_views_grad(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """``d ssim_views[t] / d x[t]``. [n, ny, nx]"""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pix = x.shape[1] * x.shape[2]
    mu_x, mu_y = blur(x), blur(y)
    s_xx = blur(x * x) - mu_x ** 2
    s_yy = blur(y * y) - mu_y ** 2
    s_xy = blur(x * y) - mu_x * mu_y
    lum_num = 2 * mu_x * mu_y + c1
    lum_den = mu_x ** 2 + mu_y ** 2 + c1
    cs_num = 2 * s_xy + c2
    cs_den = s_xx + s_yy + c2
    lum = lum_num / lum_den
    cs = cs_num / cs_den
    # Partials of S = lum * cs in the independent variables (mu_x, sigma_xx, sigma_xy).
    dlum_dmu = (2 * mu_y * lum_den - lum_num * 2 * mu_x) / lum_den ** 2
    dcs_dsxy = 2 / cs_den
    dcs_dsxx = -cs_num / cs_den ** 2
    d_mu = dlum_dmu * cs
    d_sxx = lum * dcs_dsxx
    d_sxy = lum * dcs_dsxy
    # sigma_xx = m_xx - mu_x^2 and sigma_xy = m_xy - mu_x mu_y: back to the moments.
    d_mu_total = d_mu + d_sxx * (-2 * mu_x) + d_sxy * (-mu_y)
    grad = blur_transpose(d_mu_total) + 2 * x * blur_transpose(d_sxx) + y * blur_transpose(d_sxy)
    return grad / n_pix


def view_loss(x: np.ndarray, y: np.ndarray, weights: np.ndarray, lambda_dssim: float,
              data_range: float, data_term: str = "rmse") -> tuple[float, np.ndarray]:
    """Tilt-weighted RMSE (or L1) + D-SSIM (D-SSIM weighted once) and its gradient."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    n_pix = x.shape[1] * x.shape[2]
    e = x - y
    if data_term == "rmse":
        error = np.sqrt((e * e).mean(axis=(1, 2)))
        d_error = e / (n_pix * error[:, None, None])
    else:
        error = np.abs(e).mean(axis=(1, 2))
        d_error = np.sign(e) / n_pix
    ssim = ssim_views(x, y, data_range)
    loss = float(np.sum(w * ((1 - lambda_dssim) * error + lambda_dssim * (1 - ssim))))
    grad = w[:, None, None] * ((1 - lambda_dssim) * d_error
                               - lambda_dssim * ssim_views_grad(x, y, data_range))
    return loss, grad
