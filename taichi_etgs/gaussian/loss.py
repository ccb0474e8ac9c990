"""The image loss of the Gaussian reconstruction: tilt-weighted RMSE (or L1) + D-SSIM
(docs/method.md, "Loss and optimisation").

For rendered views ``r_t`` and measured views ``m_t`` (``t`` = view, ``P = ny nx`` pixels),
per-view weights ``w_t`` and ``lambda = lambda_dssim``:

    L = sum_t w_t [ (1 - lambda) E_t + lambda (1 - SSIM(r_t, m_t)) ] / sum_t w_t

with the data term ``E_t = sqrt(mean_p (r_t - m_t)^2)``, the view's RMSE (the default), or
``E_t = mean_p |r_t - m_t|`` (L1, as CryoETGS and 3DGS). Why the RMSE: the views' noise
is close to Gaussian, for which squared errors use the data fully and absolute errors
waste about a third of it (the median's efficiency, 2/pi); the square root keeps the term
in the views' units, like L1, so that its balance with D-SSIM and the learning rates
hold, and weighs a view by ``1 / rms``, less where its own noise is larger. On the
benchmark sweep it raised the feature-band FSC at 13 of 14 data sets (docs/method.md).

D-SSIM enters once, with weight ``lambda`` (CryoETGS's reference code applied it twice).
The gradient is exact: ``(r_t - m_t) / (P E_t)`` for the RMSE (0 for a perfect view),
``sign(r - m) / P`` (0 where equal) for L1, the analytic SSIM gradient of
:mod:`taichi_etgs.kernels.ssim` for the other.

SSIM uses an 11 x 11 Gaussian window (sigma 1.5 px) with zero padding and averages over
every pixel (see the kernel module for why). Its constants are ``C1 = (0.01 L)^2`` and
``C2 = (0.03 L)^2``, where ``L`` (``data_range``) is the dynamic range of the *measured* data.
Views reach the loss normalised (about zero mean, unit standard deviation over the whole
stack), so pixel values have no fixed range: by default ``L = max - min`` of the measured
views passed in. A reconstruction that feeds a few views per step should compute ``L`` once
on the whole (normalised) stack and pass it every time, so that the constants, and hence the
loss, do not change from batch to batch. ``L`` depends only on the measured data, so it does
not enter the gradient.

Gain and offset: see :func:`fit_gain_offset`.

Computations run in Taichi's working precision (float32; float64 when the runtime was
started with ``precision="f64"``); per-view sums are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import runtime
from ..errors import InputError

__all__ = [
    "DATA_TERMS",
    "DEFAULT_DATA_TERM",
    "DEFAULT_LAMBDA_DSSIM",
    "TILT_WEIGHT_SCHEMES",
    "default_data_range",
    "fit_gain_offset",
    "ssim_views",
    "ssim_views_and_grad",
    "tilt_weights",
    "view_loss",
]

#: Weight of the D-SSIM term (CryoETGS and 3DGS use 0.2).
DEFAULT_LAMBDA_DSSIM = 0.2
#: Names accepted as the data term of :func:`view_loss`.
DATA_TERMS = ("rmse", "l1")
#: The data term by default (docs/method.md, "Loss and optimisation").
DEFAULT_DATA_TERM = "rmse"
#: Names accepted by :func:`tilt_weights`.
TILT_WEIGHT_SCHEMES = ("cos", "uniform", "etgs")

# SSIM's stabilising constants as fractions of the data range (Wang et al. 2004).
_K1 = 0.01
_K2 = 0.03


# ----------------------------------------------------------------------------------------
# Tilt weights
# ----------------------------------------------------------------------------------------

def tilt_weights(tilts_deg: np.ndarray, scheme: str = "cos") -> np.ndarray:
    """Per-view loss weights, normalised to mean 1.

    High tilts see a thicker specimen (path length ``t / cos(theta)``) and so carry more
    noise and more inelastic scattering; the weights lower their say in the loss.

    Parameters
    ----------
    tilts_deg: tilt angles, degrees. [n_views]
    scheme: ``"cos"``: ``cos(theta)``; ``"uniform"``: all equal; ``"etgs"``:
        ``clip(1.5 - theta_deg^2 / 3600, 0.5, 1.5)`` (CryoETGS's weighting).

    Returns
    -------
    weights: float64, mean 1. [n_views]

    Raises
    ------
    InputError: unknown scheme, no tilts, non-finite tilts, or ``"cos"`` with a tilt of
        90 degrees or more (its weight would not be positive).
    """
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    if tilts.size == 0:
        raise InputError("tilt weights need at least one tilt angle")
    if not np.all(np.isfinite(tilts)):
        raise InputError("tilt angles must be finite numbers")
    if scheme == "cos":
        if np.any(np.abs(tilts) >= 90.0):
            raise InputError(f"tilt weight scheme 'cos' needs |tilt| < 90 degrees; got "
                             f"{tilts[np.abs(tilts) >= 90.0][0]:g}")
        w = np.cos(np.deg2rad(tilts))
    elif scheme == "uniform":
        w = np.ones_like(tilts)
    elif scheme == "etgs":
        w = np.clip(1.5 - tilts ** 2 / 3600.0, 0.5, 1.5)
    else:
        raise InputError(f"unknown tilt weight scheme {scheme!r}; expected one of "
                         f"{', '.join(TILT_WEIGHT_SCHEMES)}")
    return w / w.mean()


# ----------------------------------------------------------------------------------------
# SSIM and the view loss
# ----------------------------------------------------------------------------------------

def _work_dtype() -> type:
    cfg = runtime.ensure_initialized()
    return np.float64 if cfg.precision == "f64" else np.float32


def _check_views(rendered: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rendered)
    m = np.asarray(measured)
    if r.ndim != 3 or r.shape != m.shape:
        raise ValueError(f"rendered and measured must be view stacks [n_views, ny, nx] of one "
                         f"shape; got {r.shape} and {m.shape}")
    if min(r.shape) < 1:
        raise ValueError(f"empty view stack: shape {r.shape}")
    return r, m


def default_data_range(measured: np.ndarray) -> float:
    """``max - min`` of the measured views: the SSIM data range ``L`` used when none is given.

    measured: views. [n_views, ny, nx] (any shape works)

    Raises
    ------
    ValueError: the range is zero or not finite (constant or NaN-containing data).
    """
    m = np.asarray(measured)
    value = float(np.max(m)) - float(np.min(m))
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"the measured views have no usable data range ({value}); "
                         f"they are constant or contain NaN/Inf")
    return value


def _resolve_range(data_range: float | None, measured: np.ndarray) -> float:
    if data_range is None:
        return default_data_range(measured)
    value = float(data_range)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range}")
    return value


def _check_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per view ({n}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return w


def _ssim_and_data(r: np.ndarray, m: np.ndarray, data_range: float, power: int,
                   coefficients: Callable[[np.ndarray, np.ndarray],
                                          tuple[np.ndarray, np.ndarray]] | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-view mean SSIM, per-view mean ``|r - m|^power``, and the combined gradient.

    The gradient ``coef_ssim[t] * d(sum_p S)/dr + coef_data[t] * D(r - m)`` (``D`` the sign
    for ``power`` 1, the identity for 2) is computed only when ``coefficients`` is given:
    it maps the per-view SSIM and data means to ``(coef_ssim, coef_data)``, so that a
    term's factor may depend on the views' own misfit (the RMSE's ``1 / rms``).
    """
    from ..kernels import ssim as kern

    dtype = _work_dtype()
    r = np.ascontiguousarray(r, dtype=dtype)
    m = np.ascontiguousarray(m, dtype=dtype)
    n, ny, nx = r.shape
    n_pix = ny * nx
    need_grad = coefficients is not None
    d_shape = (3, n, ny, nx) if need_grad else (3, 1, 1, 1)
    buffer = _device_buffer if _on_device() else _host_buffer
    r_k, m_k = buffer("r", r.shape, dtype, r), buffer("m", m.shape, dtype, m)

    moments = buffer("moments", (5, n, ny, nx), dtype)
    kern.row_blur_moments_kernel(r_k, m_k, moments)
    dmaps = buffer("dmaps", d_shape, dtype)
    dmaps_blurred = buffer("dmaps_blurred", d_shape, dtype)
    rows = np.empty((2, n, ny), dtype=np.float64)
    kern.ssim_rows_kernel(moments, r_k, m_k, (_K1 * data_range) ** 2,
                          (_K2 * data_range) ** 2, dmaps, dmaps_blurred, rows, int(need_grad),
                          int(power))
    ssim = rows[0].sum(axis=1) / n_pix
    data = rows[1].sum(axis=1) / n_pix
    grad = None
    if need_grad:
        coef_ssim, coef_data = coefficients(ssim, data)
        grad = buffer("grad", r.shape, dtype)
        kern.ssim_grad_kernel(dmaps_blurred, r_k, m_k,
                              np.ascontiguousarray(coef_ssim, dtype=dtype),
                              np.ascontiguousarray(coef_data, dtype=dtype), grad, int(power))
        if not isinstance(grad, np.ndarray):
            grad = grad.to_numpy()
    return ssim, data, grad


#: Keep the SSIM's work arrays on the device (None: when Taichi runs on a GPU). A NumPy
#: array passed to a Taichi kernel on a GPU is copied there and back at every launch:
#: the SSIM's five moment maps and six derivative maps made about 400 MB of copies per
#: step on 8 views of 512 x 512 (host copies cost nothing on the CPU).
DEVICE_BUFFERS: bool | None = None
_BUFFERS: dict = {}


def _on_device() -> bool:
    if DEVICE_BUFFERS is not None:
        return DEVICE_BUFFERS
    cfg = runtime.current()
    return cfg is not None and cfg.arch != "cpu"


def _host_buffer(name: str, shape: tuple, dtype, values: np.ndarray | None = None):
    return values if values is not None else np.empty(shape, dtype=dtype)


def _device_buffer(name: str, shape: tuple, dtype, values: np.ndarray | None = None):
    """A Taichi array kept between calls, holding ``values`` when given. Each name keeps
    its two latest shapes (a fit's steps and its validations), so that memory does not
    grow with the sizes a long session sees; all are dropped when Taichi restarts."""
    from .._ti import ti

    if _BUFFERS.get("starts") != runtime.starts():
        _BUFFERS.clear()
        _BUFFERS["starts"] = runtime.starts()
    kept = _BUFFERS.setdefault(name, {})
    key = (tuple(shape), np.dtype(dtype).str)
    array = kept.pop(key, None)
    if array is None:
        array = ti.ndarray(ti.f64 if np.dtype(dtype) == np.float64 else ti.f32, tuple(shape))
    kept[key] = array  # the latest last
    while len(kept) > 2:
        kept.pop(next(iter(kept)))
    if values is not None:
        array.from_numpy(values)
    return array


def ssim_views(rendered: np.ndarray, measured: np.ndarray,
               data_range: float | None = None) -> np.ndarray:
    """Mean SSIM of each rendered view against its measured view.

    Parameters
    ----------
    rendered: views. [n_views, ny, nx]
    measured: views. [n_views, ny, nx]
    data_range: ``L`` of ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``; None: ``max - min`` of
        ``measured`` (:func:`default_data_range`).

    Returns
    -------
    ssim: float64, 1 for identical views. [n_views]
    """
    r, m = _check_views(rendered, measured)
    ssim, _, _ = _ssim_and_data(r, m, _resolve_range(data_range, m), 1, None)
    return ssim


def ssim_views_and_grad(rendered: np.ndarray, measured: np.ndarray,
                        data_range: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM of each view and its gradient with respect to the rendered views.

    Parameters
    ----------
    rendered: views. [n_views, ny, nx]
    measured: views. [n_views, ny, nx]
    data_range: as in :func:`ssim_views`.

    Returns
    -------
    ssim: float64. [n_views]
    grad: ``d ssim[t] / d rendered[t]``, working precision. [n_views, ny, nx]
    """
    r, m = _check_views(rendered, measured)
    n_pix = r.shape[1] * r.shape[2]
    n = r.shape[0]
    ssim, _, grad = _ssim_and_data(r, m, _resolve_range(data_range, m), 1,
                                   lambda ssim, data: (np.full(n, 1.0 / n_pix), np.zeros(n)))
    return ssim, grad


def view_loss(rendered: np.ndarray, measured: np.ndarray, weights: np.ndarray | None,
              lambda_dssim: float = DEFAULT_LAMBDA_DSSIM,
              data_range: float | None = None,
              data_term: str = DEFAULT_DATA_TERM) -> tuple[float, np.ndarray]:
    """Tilt-weighted data term + D-SSIM loss and its exact gradient with respect to the
    rendering.

    ``L = sum_t w_t [(1 - lambda) E_t + lambda (1 - SSIM_t)] / sum_t w_t``, with ``E_t`` the
    view's RMSE ``sqrt(mean (r_t - m_t)^2)`` (``data_term="rmse"``) or its mean absolute
    error ``mean |r_t - m_t|`` (``"l1"``).

    Parameters
    ----------
    rendered: views rendered from the model. [n_views, ny, nx]
    measured: measured views, same normalisation (and gain/offset, :func:`fit_gain_offset`)
        as the rendering is compared in. [n_views, ny, nx]
    weights: per-view weights (:func:`tilt_weights`), >= 0; None: all equal. [n_views]
    lambda_dssim: weight of D-SSIM, in [0, 1].
    data_range: SSIM data range ``L``; None: ``max - min`` of ``measured`` (pass the whole
        stack's range when ``rendered`` holds only some views).
    data_term: ``"rmse"`` or ``"l1"`` (:data:`DATA_TERMS`).

    Returns
    -------
    loss: the scalar loss (float64 accumulation).
    grad_rendered: ``dL / d rendered``, working precision. [n_views, ny, nx]

    Raises
    ------
    ValueError: shapes disagree, weights invalid, lambda outside [0, 1], no data range,
        unknown data term.
    """
    r, m = _check_views(rendered, measured)
    lam = float(lambda_dssim)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda_dssim must be in [0, 1], got {lambda_dssim}")
    if data_term not in DATA_TERMS:
        raise ValueError(f"unknown data term {data_term!r}; expected one of "
                         f"{', '.join(DATA_TERMS)}")
    n, ny, nx = r.shape
    w = _check_weights(weights, n)
    w_norm = w / w.sum()
    n_pix = ny * nx
    power = 2 if data_term == "rmse" else 1

    def coefficients(ssim: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coef_data = (1.0 - lam) * w_norm / n_pix
        if power == 2:  # d rms / d r = (r - m) / (n_pix rms); 0 for a perfect view
            rms = np.sqrt(data)
            coef_data = np.where(rms > 0, coef_data / np.where(rms > 0, rms, 1.0), 0.0)
        return -lam * w_norm / n_pix, coef_data

    ssim, data, grad = _ssim_and_data(r, m, _resolve_range(data_range, m), power,
                                      coefficients)
    error = np.sqrt(data) if power == 2 else data
    loss = float(np.sum(w_norm * ((1.0 - lam) * error + lam * (1.0 - ssim))))
    return loss, grad


# ----------------------------------------------------------------------------------------
# Gain and offset
# ----------------------------------------------------------------------------------------

def fit_gain_offset(rendered: np.ndarray, measured: np.ndarray, *,
                    fit_gain: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-view least-squares gain and offset with ``measured ~ gain * rendered + offset``.

    Closed form per view: ``gain = cov(r, m) / var(r)``, ``offset = mean(m) - gain mean(r)``
    (means over the view's pixels, float64). Where ``var(r)`` is zero (or below 1e-12 of
    ``mean(r^2)``: a flat rendering, e.g. an empty model) the gain is not determined and is
    set to 1, leaving the offset to match the means. With ``fit_gain=False`` the gain is 1
    and ``offset = mean(m - r)``.

    How the reconstruction uses it
    ------------------------------
    Measured views carry an arbitrary gain (dose, detector) and offset per view, and the
    ice slab's mean grows as ``1 / cos(theta)``; the model's projections ``r_t`` have
    neither. The plan:

    1. The measured stack is normalised once as a whole (one mean and one standard
       deviation, so the relative intensities of the views survive), and ``data_range`` of
       :func:`view_loss` is taken from it once.
    2. After initialisation (Gaussians seeded from a classical reconstruction of that same
       stack), ``(gain_t, offset_t) = fit_gain_offset(render(model), measured)``.
    3. Each iteration compares ``r'_t = gain_t r_t + offset_t`` with ``m_t``:
       ``loss, g = view_loss(r', m, w)``, and back-propagates ``gain_t * g_t`` into the
       projector's backward pass. Gain and offset get no gradient.
    4. They are refitted with the current rendering every K iterations (with
       densification): a block-coordinate step, exact for a least-squares loss and close
       for L1 + D-SSIM. By default only the offset is fitted (``fit_gain=False``: the 1/cos
       ice term); per-view gains are for data with uneven exposure, and are then divided by
       their mean over views so that the model's density scale stays the one set at
       initialisation (a common factor between all gains and all densities is free).

    Parameters
    ----------
    rendered: views rendered from the model. [n_views, ny, nx]
    measured: measured views. [n_views, ny, nx]
    fit_gain: fit the gain too (else gain = 1).

    Returns
    -------
    gain: float64. [n_views]
    offset: float64. [n_views]
    """
    r_all, m_all = _check_views(rendered, measured)
    n = r_all.shape[0]
    gain = np.ones(n)
    offset = np.zeros(n)
    for t in range(n):  # one view at a time: float64 copies of a view, not of the stack
        r = np.asarray(r_all[t], dtype=np.float64).reshape(-1)
        m = np.asarray(m_all[t], dtype=np.float64).reshape(-1)
        r_mean = r.mean()
        m_mean = m.mean()
        if fit_gain:
            dr = r - r_mean
            var = np.dot(dr, dr) / r.size
            if var > 1e-12 * max(np.dot(r, r) / r.size, np.finfo(np.float64).tiny):
                gain[t] = np.dot(dr, m - m_mean) / r.size / var
        offset[t] = m_mean - gain[t] * r_mean
    return gain, offset
