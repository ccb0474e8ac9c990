"""Weighted (filtered) back-projection with IMOD's radial filter and a SIRT-like option.

FBP in the geometry of docs/conventions.md: each view row is filtered along u with the ramp |f|
(spatial-domain discretisation, Kak & Slaney eq. 61, zero padded to avoid wrap-around),
times IMOD's radial low-pass (flat up to ``cutoff``, then a Gaussian fall-off of width
``falloff``, both in cycles/pixel), then back-projected with each view weighted by the
angular interval it stands for. For an evenly sampled 180 deg scan this is the textbook
inverse Radon transform; for a +-60 deg tilt series it is what IMOD's ``tilt`` computes
up to its scaling.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ..errors import InputError
from ..geometry import angular_weights_rad
from .projector import VoxelProjector

__all__ = ["ramp_filter", "sirt_like_factor", "filter_views", "weighted_back_projection",
           "padded_length", "DEFAULT_RADIAL"]

DEFAULT_RADIAL = (0.35, 0.035)


def padded_length(n_u: int) -> int:
    """The FFT length a view row of ``n_u`` pixels is padded to before its ramp filter."""
    return int(scipy.fft.next_fast_len(2 * n_u))


def ramp_filter(n_padded: int, radial: tuple[float, float] | None = DEFAULT_RADIAL) -> np.ndarray:
    """Frequency response of ramp x radial low-pass for a real FFT of ``n_padded``. [n//2+1]

    The ramp is the transform of the band-limited spatial kernel (h[0] = 1/4,
    h[odd n] = -1/(pi n)^2), which has the right (non-zero) DC term and no cupping.
    ``radial = (cutoff, falloff)`` in cycles/pixel; None disables the low-pass.
    """
    n = np.arange(n_padded)
    n = np.where(n > n_padded // 2, n - n_padded, n)
    h = np.zeros(n_padded)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = np.real(scipy.fft.rfft(h))
    if radial is not None:
        cutoff, falloff = radial
        if not (0 < cutoff <= 0.5) or falloff < 0:
            raise InputError(f"--radial {cutoff},{falloff}: the cutoff must be in (0, 0.5] "
                             "cycles/pixel and the fall-off >= 0")
        freq = scipy.fft.rfftfreq(n_padded)
        beyond = np.clip(freq - cutoff, 0.0, None)
        if falloff > 0:
            response = response * np.exp(-0.5 * (beyond / falloff) ** 2)
        else:
            response = response * (beyond == 0)
    return response


def sirt_like_factor(n_padded: int, iterations: int, thickness: float,
                     tilts_deg: np.ndarray) -> np.ndarray:
    """Factor turning the ramp into the response of ``iterations`` SIRT iterations. [n//2+1]

    Zeng (2012): Landweber iterations from zero equal FBP with the filter
    ``ramp * (1 - (1 - g)^k)``, ``g`` the per-iteration gain at each frequency. For this
    package's SIRT (row and column normalised, step 1) ``g(f) ~ mean(cos) / (T * Phi * |f|)``
    with ``T`` the thickness in voxels and ``Phi`` the tilt range in radians: the ray-sum
    normaliser is ``cos / T``, the voxel normaliser ``1 / n_tilts``, and the unweighted
    back-projection of all views has gain ``n_tilts / (Phi |f|)``.
    """
    if iterations < 1:
        raise InputError("--fake-sirt needs a number of iterations >= 1")
    tilts = np.deg2rad(np.asarray(tilts_deg, dtype=np.float64))
    span = max(np.ptp(tilts), np.deg2rad(1.0)) * (tilts.size / max(tilts.size - 1, 1))
    freq = scipy.fft.rfftfreq(n_padded)
    freq[0] = freq[1] / 2 if freq.size > 1 else 1.0  # DC: gain is finite for a finite object
    gain = np.minimum(1.0, np.mean(np.cos(tilts)) / (thickness * span * freq))
    return 1.0 - (1.0 - gain) ** iterations


def filter_views(views: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Filter each view row along u (last axis) with a real-FFT response. [.., n_u]"""
    n_u = views.shape[-1]
    n_padded = 2 * (response.size - 1)
    out = np.empty(views.shape, dtype=np.float32)
    # One view at a time keeps the float64 temporaries small for big stacks.
    for t in range(views.shape[0]):
        row = np.asarray(views[t], dtype=np.float64)
        # Pad with each row's edge values rather than zeros: a zero step at the edge of a
        # finite field of view would ring through the whole row.
        padded = np.pad(row, [(0, 0)] * (row.ndim - 1) + [(0, n_padded - n_u)], mode="edge")
        spectrum = scipy.fft.rfft(padded, axis=-1) * response
        out[t] = scipy.fft.irfft(spectrum, n=n_padded, axis=-1)[..., :n_u]
    return out


def weighted_back_projection(views: np.ndarray, tilts_deg: np.ndarray, thickness: int,
                             radial: tuple[float, float] | None = DEFAULT_RADIAL,
                             fake_sirt_iterations: int = 0, width: int | None = None,
                             projector: VoxelProjector | None = None) -> np.ndarray:
    """Reconstruct a tomogram by weighted back-projection.

    Parameters
    ----------
    views: tilt views in positive-density contrast. [n_tilts, ny, n_u]
    tilts_deg: tilt angles in degrees. [n_tilts]
    thickness: nz, the tomogram thickness in voxels.
    radial: (cutoff, falloff) of IMOD's radial filter in cycles/pixel, or None.
    fake_sirt_iterations: if > 0, shape the filter like that many SIRT iterations.
    width: nx of the tomogram (default n_u).
    projector: a matching projector to reuse (saves set-up in loops).

    Returns
    -------
    The tomogram, float32, in the views' units per voxel. [nz, ny, nx]
    """
    views = np.asarray(views)
    if views.ndim != 3:
        raise InputError(f"expected views (n_tilts, ny, n_u), got shape {views.shape}")
    n_tilts, ny, n_u = views.shape
    if thickness < 1:
        raise InputError(f"thickness must be at least 1 voxel, got {thickness}")
    n_padded = padded_length(n_u)
    response = ramp_filter(n_padded, radial)
    if fake_sirt_iterations:
        response = response * sirt_like_factor(n_padded, fake_sirt_iterations, thickness,
                                               tilts_deg)
    filtered = filter_views(views, response)
    nx = n_u if width is None else int(width)
    if projector is None:
        projector = VoxelProjector(tilts_deg, (int(thickness), ny, nx), n_u)
    return projector.back(filtered, angular_weights_rad(tilts_deg))
