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
``rms`` (tests/test_dose.py, docs/method.md "Dose"; measured with 16 pixels of padding).

Views are filtered after removing their mean, without padding unless asked (as the phase
flip: a padded view's crop leaks the filtered frequencies into the others; with 16
pixels of mirror padding, the exposure filter lowered WBP's band FSC where it now raises
it, 0.431 -> 0.427 against 0.431 -> 0.433 without, bidirectional at 5 A), and get their
mean back.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NORMALISATIONS", "dose_weights", "exposure_filter_views"]


NORMALISATIONS = ("max", "rms", "none")


def _normaliser(k: np.ndarray, exposure: np.ndarray, voltage_kV: float,
                normalise: str) -> np.ndarray | float:
    """What every view's ``q`` is divided by, per frequency (:func:`dose_weights`), one
    view's ``q`` at a time: the largest ``q`` is the least exposed view's (``q`` falls
    with the exposure at every frequency)."""
    from ..simulation.imaging import exposure_filter

    if normalise == "max":
        return exposure_filter(k, float(exposure.min()), voltage_kV)
    if normalise == "rms":
        total = np.zeros(k.shape)
        for e in exposure:
            total += exposure_filter(k, float(e), voltage_kV) ** 2
        return np.sqrt(total / exposure.size)
    if normalise != "none":
        raise ValueError(f"unknown normalisation {normalise!r}; expected "
                         f"{', '.join(NORMALISATIONS)}")
    return 1.0


def dose_weights(shape: tuple[int, int], pixel_size_A: float, exposure_e_per_A2,
                 voltage_kV: float = 300.0, normalise: str = "max") -> np.ndarray:
    """The filter of each view on the rfft2 grid of ``shape``: ``q_i(k)`` divided, per
    frequency, by ``max_i q_i(k)`` ("max"), by ``sqrt(mean_i q_i(k)^2)`` ("rms", Grant &
    Grigorieff's), or not ("none"). [n, ky, kx]"""
    from ..simulation.imaging import _frequencies, exposure_filter

    k = _frequencies(shape, pixel_size_A)
    exposure = np.asarray(exposure_e_per_A2, dtype=np.float64).reshape(-1)
    norm = _normaliser(k, exposure, voltage_kV, normalise)
    return np.stack([exposure_filter(k, float(e), voltage_kV) / norm for e in exposure])


def exposure_filter_views(views: np.ndarray, pixel_size_A: float, exposure_e_per_A2,
                          voltage_kV: float = 300.0, pad: int = 0,
                          normalise: str = "max", progress=None, out=None) -> np.ndarray:
    """Exposure-filtered views (float32). [n, ny, nx]

    views: the views, any contrast. [n, ny, nx]
    exposure_e_per_A2: the mid-exposure of each view. [n]
    pad: mirror padding, pixels (at most one less than the view); none by default.
    normalise: "max", "rms" or "none" (:func:`dose_weights`).
    progress: called with the number of views done.
    out: where the views go (as :func:`~taichi_etgs.classical.phaseflip.phase_flip_views`'s);
        one view's filter at a time is computed, so memory holds one view's worth.
    """
    from ..simulation.imaging import _frequencies, exposure_filter

    views = views if hasattr(views, "shape") else np.asarray(views)
    n, ny, nx = views.shape
    exposure = np.asarray(exposure_e_per_A2, dtype=np.float64).reshape(-1)
    if exposure.size != n:
        raise ValueError(f"{exposure.size} exposures for {n} views")
    p = max(0, min(int(pad), ny - 1, nx - 1))
    shape = (ny + 2 * p, nx + 2 * p)
    k = _frequencies(shape, pixel_size_A)
    norm = _normaliser(k, exposure, voltage_kV, normalise)
    if out is None:
        out = np.empty(views.shape, dtype=np.float32)
    for t in range(n):
        v = np.asarray(views[t], dtype=np.float64)
        mean = v.mean()
        padded = np.pad(v - mean, p, mode="reflect")
        q = exposure_filter(k, float(exposure[t]), voltage_kV) / norm
        filtered = np.fft.irfft2(np.fft.rfft2(padded) * q, s=shape)
        out[t] = filtered[p:p + ny, p:p + nx] + mean
        if progress is not None:
            progress(t + 1)
    return out
