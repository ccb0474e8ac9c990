"""Exposure filtering of the views for WBP and SIRT (Grant & Grigorieff 2015).

A view taken after an exposure ``N`` (e/A^2) keeps the amplitude
``q(k, N) = exp(-N / (2 Ne(k)))`` of the specimen's signal at spatial frequency ``k``, the
critical exposure ``Ne(k)`` measured by Grant & Grigorieff
(:func:`taichi_etgs.simulation.imaging.exposure_filter`; ``N`` the view's mid-exposure,
prior dose + half its own, :attr:`taichi_etgs.io.dose.DoseSeries.exposure_e_per_A2`).
Each view is multiplied by its ``q``, so that at every frequency the views still holding
signal count for more than the damaged ones, and then divided by ``max_i q_i(k)`` over the
series (``normalise="max"``, the default): the least exposed view keeps its amplitudes
and the others are weighted relative to it.

Why not Grant & Grigorieff's normalisation of a movie's frames, ``sqrt(mean_i q_i(k)^2)``
(``normalise="rms"``, which keeps the series' total power per frequency): frames of a
movie measure the same Fourier coefficients, the views of a tilt series mostly measure
different ones (each its own central slice), so the division does not rebalance
redundant measurements; it raises the high frequencies of the least exposed views, noise
included. On simulated series (physical noise model, 120 e/A^2, 41 views, phase-flipped
WBP) the specimen band FSC (1/400-1/32 per A) went 0.398 -> 0.403 (dose-symmetric, 8 A)
and 0.396 -> 0.400 (bidirectional, 5 A) with ``max``, but down to 0.390 and 0.370 with
``rms`` (tests/test_dose.py, docs/method.md "Dose").

Views are filtered after removing their mean, with mirror padding against wrap-around (as
the phase flip), and get their mean back.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NORMALISATIONS", "dose_weights", "exposure_filter_views"]


NORMALISATIONS = ("max", "rms", "none")


def dose_weights(shape: tuple[int, int], pixel_size_A: float, exposure_e_per_A2,
                 voltage_kV: float = 300.0, normalise: str = "max") -> np.ndarray:
    """The filter of each view on the rfft2 grid of ``shape``: ``q_i(k)`` divided, per
    frequency, by ``max_i q_i(k)`` ("max"), by ``sqrt(mean_i q_i(k)^2)`` ("rms", Grant &
    Grigorieff's), or not ("none"). [n, ky, kx]"""
    from ..simulation.imaging import _frequencies, exposure_filter

    k = _frequencies(shape, pixel_size_A)
    exposure = np.asarray(exposure_e_per_A2, dtype=np.float64).reshape(-1)
    q = np.stack([exposure_filter(k, float(e), voltage_kV) for e in exposure])
    if normalise == "max":
        q /= q.max(axis=0)[None]
    elif normalise == "rms":
        q /= np.sqrt(np.mean(q ** 2, axis=0))[None]
    elif normalise != "none":
        raise ValueError(f"unknown normalisation {normalise!r}; expected "
                         f"{', '.join(NORMALISATIONS)}")
    return q


def exposure_filter_views(views: np.ndarray, pixel_size_A: float, exposure_e_per_A2,
                          voltage_kV: float = 300.0, pad: int = 16,
                          normalise: str = "max", progress=None) -> np.ndarray:
    """Exposure-filtered views (float32). [n, ny, nx]

    views: the views, any contrast. [n, ny, nx]
    exposure_e_per_A2: the mid-exposure of each view. [n]
    pad: mirror padding, pixels (at most one less than the view).
    normalise: "max", "rms" or "none" (:func:`dose_weights`).
    progress: called with the number of views done.
    """
    views = np.asarray(views)
    n, ny, nx = views.shape
    exposure = np.asarray(exposure_e_per_A2, dtype=np.float64).reshape(-1)
    if exposure.size != n:
        raise ValueError(f"{exposure.size} exposures for {n} views")
    p = max(0, min(int(pad), ny - 1, nx - 1))
    shape = (ny + 2 * p, nx + 2 * p)
    q = dose_weights(shape, pixel_size_A, exposure, voltage_kV, normalise)
    out = np.empty(views.shape, dtype=np.float32)
    for t in range(n):
        v = views[t].astype(np.float64)
        mean = v.mean()
        padded = np.pad(v - mean, p, mode="reflect")
        filtered = np.fft.irfft2(np.fft.rfft2(padded) * q[t], s=shape)
        out[t] = filtered[p:p + ny, p:p + nx] + mean
        if progress is not None:
            progress(t + 1)
    return out
