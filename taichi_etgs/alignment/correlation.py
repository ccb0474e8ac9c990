"""Shifts between views and their predictions by band-passed cross-correlation.

Alignment lives in a band: the lowest frequencies hold the ice layer and the edges of the
field of view, which a prediction renders differently from a view (they biased shifts by
0.25-0.9 px on noise-free simulated views), and the highest hold mostly noise. Both images
are band-passed by a difference of Gaussians and faded to zero at their borders before the
correlation, so that the circular correlation of the FFT is the linear one near zero lag.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

__all__ = ["band_pass", "correlation_shifts"]


def band_pass(images: np.ndarray, low_sigma_px: float, high_sigma_px: float) -> np.ndarray:
    """Images less their means, band-passed by a difference of Gaussians and faded to zero
    over a tenth of each side at the borders. [n, ny, nx]

    low_sigma_px: sd of the low-pass Gaussian (removes noise).
    high_sigma_px: sd of the Gaussian whose blur is subtracted (removes the ice and edges).
    """
    images = np.asarray(images, dtype=np.float32)
    out = np.empty_like(images)
    for t, image in enumerate(images):
        low = ndimage.gaussian_filter(image, low_sigma_px, mode="nearest")
        out[t] = low - ndimage.gaussian_filter(low, high_sigma_px, mode="nearest")
    out -= out.mean(axis=(1, 2), keepdims=True)
    return out * _border_fade(images.shape[1:])


def _border_fade(shape: tuple[int, int]) -> np.ndarray:
    """A window that is 1 inside and falls to 0 along a half cosine over the outer tenth
    (at least 2 pixels) of each side. [ny, nx]"""
    def ramp(n: int) -> np.ndarray:
        width = max(2, n // 10)
        position = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n))
        return np.where(position >= width, 1.0,
                        0.5 - 0.5 * np.cos(np.pi * np.clip(position / width, 0.0, 1.0)))
    return np.outer(ramp(shape[0]), ramp(shape[1])).astype(np.float32)


def correlation_shifts(images: np.ndarray, references: np.ndarray,
                       max_shift_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The shift that moves each image onto its reference, and the correlation there.

    Both are band-passed already (:func:`band_pass`). The peak of the cross-correlation
    within ``max_shift_px`` of zero lag is refined to a fraction of a pixel by a parabola
    through it and its neighbours along each axis; a parabola is biased by up to 0.2 px
    at lags of a few pixels but not at zero, which is where repeated matching ends.

    Returns
    -------
    shifts_px: (dx, dy) per image: content of the image moved by it lands on the
        reference's (as :class:`~taichi_etgs.alignment.ViewAlignment` shifts). [n, 2]
    peaks: the normalised correlation at the integer peak. [n]
    """
    images = np.asarray(images, dtype=np.float32)
    n, ny, nx = images.shape
    spectrum = (scipy.fft.rfft2(np.asarray(references, np.float32))
                * np.conj(scipy.fft.rfft2(images)))
    correlation = scipy.fft.irfft2(spectrum, s=(ny, nx))
    norms = np.sqrt(np.sum(images.astype(np.float64) ** 2, axis=(1, 2))
                    * np.sum(np.asarray(references, np.float64) ** 2, axis=(1, 2)))
    lag_y = np.fft.fftfreq(ny, 1.0 / ny)
    lag_x = np.fft.fftfreq(nx, 1.0 / nx)
    outside = (lag_y[:, None] ** 2 + lag_x[None, :] ** 2) > max_shift_px ** 2
    shifts = np.zeros((n, 2))
    peaks = np.zeros(n)
    for t in range(n):
        c = np.where(outside, -np.inf, correlation[t])
        iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
        shifts[t] = (lag_x[ix] + _vertex(correlation[t, iy, [ix - 1, ix, (ix + 1) % nx]]),
                     lag_y[iy] + _vertex(correlation[t, [iy - 1, iy, (iy + 1) % ny], ix]))
        peaks[t] = correlation[t, iy, ix] / norms[t] if norms[t] > 0 else 0.0
    return shifts, peaks


def _vertex(values: np.ndarray) -> float:
    """The offset of a parabola's vertex through three equally spaced values, in (-0.5,
    0.5) when the middle one is the largest."""
    below, centre, above = (float(v) for v in values)
    curvature = below - 2.0 * centre + above
    if curvature >= 0.0:
        return 0.0
    return float(np.clip(0.5 * (below - above) / curvature, -0.5, 0.5))
