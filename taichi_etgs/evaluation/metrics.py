"""Quality of a reconstruction against a reference volume: ``taichi-etgs evaluate``.

Normalisation (the same for every method)
-----------------------------------------
Reconstructions come in arbitrary units, offsets and polarities. Before any metric, the
reconstruction is mapped onto the reference by the affine least-squares fit
``a * recon + b ~ reference`` (:func:`normalise_to_reference`). PSNR and SSIM then use
the reference's range ``max - min`` as the data range. The fit may return a negative
gain ``a``: a reconstruction of inverted contrast is then scored like its positive and
flagged by ``contrast_inverted: true`` in :func:`evaluate`'s result (it is not
penalised, since the polarity of the output is a convention, but it is reported).
Every metric of :func:`evaluate` (including the correlation and the FSCs) is computed
on the normalised volume, so the correlation is never negative; a negative gain is the
only trace of an inversion.

Fourier shell correlation
-------------------------
Shells of width ``1 / (N voxel)`` (``N`` the largest dimension) from 0 to Nyquist, shell
``i`` holding the frequencies ``|k|`` that round to ``i / N``; frequencies in 1/A. Shell 0
is the DC term. No mask or apodisation. A shell where one volume has no power (below
1e-12 of the other's) scores 0; one where neither has is NaN.

The resolution at a threshold (:func:`resolution_at`) is the first crossing below it,
searched from shell 1 (the first shell after DC) and interpolated linearly in frequency
between shells >= 1 only. DC is never used: after the affine fit it is exactly 1, and
interpolating between it and a low shell 1 gave resolutions coarser than the box itself
(about 17,000 A for WBP in the 5,120 A box of the paper benchmark). So the result is
never coarser than the box (``1 / freq[1] = N * voxel``): a curve already below the
threshold at shell 1 reports exactly that, and a curve that never crosses reports
Nyquist (``2 * voxel``).

Band FSC
--------
A resolution is one crossing of a noisy curve; at low SNR it jumps between shells. The
band FSC is the mean FSC over the shells whose frequency lies in a feature band,
by default ``[1/400, 1/32]`` per A (features of 32-400 A: membranes, filaments,
ribosome-sized particles), NaN shells skipped (:func:`band_average`). A box too small or a
voxel too coarse for the band to hold any shell uses the nearest shell on each side of
the band instead. ``wedge_band_fsc`` is the same mean over the missing-wedge FSC.

Specimen scores
---------------
In a tomogram of a slab the ice layer's z-profile (the mean density of each XY plane)
carries most of the power at low ``kz`` with ``kx = ky = 0``, and so dominates the low
shells, and the missing wedge, whatever the specimen inside looks like. The
``specimen_*`` scores of :func:`evaluate` remove each XY plane's mean from both
normalised volumes before the FFT (this zeroes the ``kx = ky = 0`` line), so that they
score the specimen's structure rather than the slab.

Missing-wedge FSC
-----------------
For a single-axis tilt series about Y with tilts up to ``max_tilt``, Fourier voxels whose
direction in the kx-kz plane lies within ``90 - max_tilt`` degrees of the beam axis kz
(``|kz| > |kx| tan(max_tilt)``, any ky) were never measured. :func:`wedge_fsc` is the
FSC over those voxels only: how much of the unmeasured information a method recovers.
It is not 0 for WBP: a finite box smears every measured central slice by about
``1 / thickness`` across the wedge boundary (and the reference is cut by the same box), so
compare a method's value with WBP's on the same data. Shells with fewer than 8 wedge
voxels are NaN.
The scalar ``wedge_fsc`` of :func:`evaluate` is the mean of that curve over the shells
from the first non-DC shell up to half the Nyquist frequency, where the wedge has
enough voxels and the signal is strong enough for the number to mean something.

Half maps
---------
:func:`half_map_fsc` is the FSC of two independent reconstructions of the same
specimen (e.g. from the even and odd tilts), for data without a ground truth. No fit is
needed: the FSC is invariant to each volume's gain, and the offset only changes DC,
which no score uses.

JSON
----
``metrics_to_json`` writes through the package's one JSON encoder
(:mod:`taichi_etgs.pipeline.jsonio`, strict mode): ``inf`` (PSNR of identical volumes) as
the string ``"inf"`` (``float("inf")`` reads it back) and NaN (empty shells) as ``null``.
"""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path

import numpy as np

from .._atomic import write_text_atomic
from ..errors import InputError
from ..pipeline import jsonio
from ..pipeline.outputs import check_writable

__all__ = [
    "DEFAULT_BAND_PER_A",
    "affine_fit",
    "band_average",
    "correlation",
    "evaluate",
    "fsc",
    "half_map_fsc",
    "metrics_to_json",
    "normalise_to_reference",
    "psnr",
    "resolution_at",
    "ssim3d",
    "wedge_fsc",
    "write_metrics_json",
]

_MIN_WEDGE_VOXELS = 8
_EMPTY_POWER = 1e-12
_SSIM_BAND_VOXELS = 4_000_000
_WEDGE_SUMMARY_FRACTION = 0.5  # of Nyquist
# Features of 32-400 A (module notes, "Band FSC").
DEFAULT_BAND_PER_A: tuple[float, float] = (1 / 400, 1 / 32)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _check_pair(recon: np.ndarray, reference: np.ndarray,
                names: tuple[str, str] = ("reconstruction", "reference"),
                advice: str = "reconstruct with the reference's thickness and width",
                ) -> tuple[np.ndarray, np.ndarray]:
    recon = np.asarray(recon)
    reference = np.asarray(reference)
    for name, vol in zip(names, (recon, reference)):
        if vol.ndim != 3:
            raise InputError(f"the {name} must be a 3D volume (z, y, x), got shape "
                             f"{vol.shape}")
    if recon.shape != reference.shape:
        raise InputError(
            f"{names[0]} is {_shape_text(recon.shape)} (z,y,x) but the {names[1]} is "
            f"{_shape_text(reference.shape)} (z,y,x); both must have the same shape "
            f"({advice})")
    for name, vol in zip(names, (recon, reference)):
        if not np.isfinite(vol).all():
            raise InputError(f"the {name} contains NaN or Inf values")
    return recon, reference


def affine_fit(recon: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` minimising ``||a * recon + b - reference||^2``.

    ``a`` may be negative (inverted contrast); ``a = 0`` when ``recon`` is constant.
    """
    r = np.asarray(recon, dtype=np.float64).ravel()
    g = np.asarray(reference, dtype=np.float64).ravel()
    r_mean, g_mean = r.mean(), g.mean()
    rc = r - r_mean
    var = float(np.dot(rc, rc))
    a = float(np.dot(rc, g - g_mean)) / var if var > 0 else 0.0
    return a, float(g_mean - a * r_mean)


def normalise_to_reference(recon: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``a * recon + b`` with the affine least-squares fit to the reference (float64).

    See the module notes; the gain ``a`` may be negative.

    Parameters
    ----------
    recon: reconstruction. [nz, ny, nx]
    reference: reference (ground truth). [nz, ny, nx]
    """
    a, b = affine_fit(recon, reference)
    return a * np.asarray(recon, dtype=np.float64) + b


def psnr(recon: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio, dB: ``10 log10(data_range^2 / MSE)``.

    No normalisation here (see :func:`evaluate`). ``data_range`` defaults to the
    reference's ``max - min``. Identical volumes give ``float('inf')``.

    Raises
    ------
    ValueError: the data range is not positive (a constant reference).
    """
    r = np.asarray(recon, dtype=np.float64)
    g = np.asarray(reference, dtype=np.float64)
    if data_range is None:
        data_range = float(g.max() - g.min())
    if not data_range > 0:
        raise ValueError(f"PSNR needs a positive data range, got {data_range}")
    mse = float(np.mean((r - g) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim3d(recon: np.ndarray, reference: np.ndarray, data_range: float | None = None,
           win_size: int = 7) -> float:
    """Mean structural similarity over 3D windows (Wang et al. 2004).

    The algorithm of scikit-image's ``structural_similarity`` with its defaults
    (uniform ``win_size``^3 window, K1 = 0.01, K2 = 0.03, sample covariances, the
    borders within half a window excluded from the mean), in numpy/scipy, a band of Z
    slices at a time (bounded memory; the same result). ``data_range`` defaults to the
    reference's ``max - min``; the window shrinks (odd, >= 3) to fit a thin volume.
    """
    from scipy.ndimage import uniform_filter

    x_all = np.asarray(recon)
    y_all = np.asarray(reference)
    if data_range is None:
        data_range = float(np.max(y_all)) - float(np.min(y_all))
    if not data_range > 0:
        raise ValueError(f"SSIM needs a positive data range, got {data_range}")
    win = min(int(win_size), *x_all.shape)
    win -= 1 - win % 2
    if win < 3:
        raise ValueError(f"volume {x_all.shape} is too thin for SSIM (needs >= 3 voxels)")
    n = win ** 3
    cov_norm = n / (n - 1.0)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    pad = (win - 1) // 2
    nz, ny, nx = x_all.shape
    step = max(1, _SSIM_BAND_VOXELS // (ny * nx))
    total, count = 0.0, 0
    for z0 in range(pad, nz - pad, step):
        z1 = min(nz - pad, z0 + step)
        # Each band carries a halo of ``pad`` slices: the filtered values inside are exact.
        x = x_all[z0 - pad:z1 + pad].astype(np.float64)
        y = y_all[z0 - pad:z1 + pad].astype(np.float64)
        ux = uniform_filter(x, size=win)
        uy = uniform_filter(y, size=win)
        vx = cov_norm * (uniform_filter(x * x, size=win) - ux * ux)
        vy = cov_norm * (uniform_filter(y * y, size=win) - uy * uy)
        vxy = cov_norm * (uniform_filter(x * y, size=win) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        inner = s[pad:-pad, pad:-pad, pad:-pad]
        total += float(inner.sum())
        count += inner.size
    return total / count


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation coefficient of two volumes; 0 if either is constant."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / den) if den > 0 else 0.0


def _fourier_grid(shape: tuple[int, int, int], n_shells: int | None):
    """|k| (cycles/voxel), kx, kz, half-space weights and the shell spacing."""
    nz, ny, nx = shape
    kz = np.fft.fftfreq(nz)[:, None, None]
    ky = np.fft.fftfreq(ny)[None, :, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    radius = np.sqrt(kz ** 2 + ky ** 2 + kx ** 2)
    if n_shells is None:
        n_shells = max(shape) // 2 + 1
    n_shells = int(n_shells)
    if n_shells < 2:
        raise ValueError(f"need at least 2 shells, got {n_shells}")
    dk = 0.5 / (n_shells - 1)
    # rfft keeps kx >= 0: every other coefficient stands for itself and its conjugate.
    weight = np.full(kx.shape, 2.0)
    weight[..., 0] = 1.0
    if nx % 2 == 0:
        weight[..., -1] = 1.0
    return radius, kx, kz, weight, n_shells, dk


def _shell_correlation(fa: np.ndarray, fb: np.ndarray, index: np.ndarray, weight: np.ndarray,
                       n_shells: int, select: np.ndarray | None = None,
                       min_count: float = 1) -> np.ndarray:
    w = np.broadcast_to(weight, fa.shape)
    ok = index < n_shells
    if select is not None:
        ok = ok & select
    idx = index[ok]
    ww = w[ok]
    cross = np.bincount(idx, weights=ww * (fa[ok] * np.conj(fb[ok])).real, minlength=n_shells)
    pa = np.bincount(idx, weights=ww * np.abs(fa[ok]) ** 2, minlength=n_shells)
    pb = np.bincount(idx, weights=ww * np.abs(fb[ok]) ** 2, minlength=n_shells)
    count = np.bincount(idx, weights=ww, minlength=n_shells)
    # A volume whose power in a shell is below 1e-12 of the other's (amplitude 1e-6;
    # float32 rounding leaves ~1e-14) has nothing there: its "correlation" would only be
    # that of rounding errors, so the shell scores 0.
    has_a = (pa > 0) & (pa >= _EMPTY_POWER * pb)
    has_b = (pb > 0) & (pb >= _EMPTY_POWER * pa)
    out = np.full(n_shells, np.nan)
    populated = count >= min_count
    good = populated & has_a & has_b
    out[good] = cross[good] / np.sqrt(pa[good] * pb[good])
    # One volume empty in the shell, the other not: nothing in common.
    out[populated & (has_a != has_b)] = 0.0
    return out


def _spectral_curves(a: np.ndarray, b: np.ndarray, max_tilt_deg: float | None,
                     n_shells: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(shell frequencies in cycles/voxel, FSC, missing-wedge FSC or None); one FFT each."""
    radius, kx, kz, weight, n_shells, dk = _fourier_grid(a.shape, n_shells)
    index = np.rint(radius / dk).astype(np.int64)
    del radius
    fa = np.fft.rfftn(np.asarray(a, dtype=np.float64))
    fb = np.fft.rfftn(np.asarray(b, dtype=np.float64))
    curve = _shell_correlation(fa, fb, index, weight, n_shells)
    wedge = None
    if max_tilt_deg is not None:
        missing = np.abs(kz) > np.abs(kx) * math.tan(math.radians(max_tilt_deg))
        missing = np.broadcast_to(missing, index.shape)
        wedge = _shell_correlation(fa, fb, index, weight, n_shells, missing,
                                   _MIN_WEDGE_VOXELS)
    return np.arange(n_shells) * dk, curve, wedge


def _check_band(band_per_A: tuple[float, float]) -> None:
    try:
        low, high = (float(v) for v in band_per_A)
    except (TypeError, ValueError):
        raise InputError(f"the band must be two frequencies (low, high) in 1/A, got "
                         f"{band_per_A!r}") from None
    if not 0 < low <= high < math.inf:
        raise InputError(f"the band must satisfy 0 < low <= high (1/A), got {band_per_A!r}")


def _check_tilt(max_tilt_deg: float) -> None:
    if not 0.0 <= max_tilt_deg < 90.0:
        raise InputError(f"the maximum tilt must be in [0, 90) degrees, got {max_tilt_deg}")


def fsc(a: np.ndarray, b: np.ndarray, voxel_size_A: float = 1.0,
        n_shells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two volumes (see the module notes).

    Parameters
    ----------
    a, b: volumes of one shape. [nz, ny, nx]
    voxel_size_A: voxel size, A (sets the frequency units).
    n_shells: shells from 0 to Nyquist inclusive; default ``max(shape) // 2 + 1``.

    Returns
    -------
    (freq_per_A [n_shells], fsc [n_shells]); 0 where only one volume has power in a
    shell (the other's below 1e-12 of it), NaN where neither has.
    """
    a, b = _check_pair(a, b)
    freq, curve, _ = _spectral_curves(a, b, None, n_shells)
    return freq / voxel_size_A, curve


def wedge_fsc(a: np.ndarray, b: np.ndarray, max_tilt_deg: float, voxel_size_A: float = 1.0,
              n_shells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FSC over the missing wedge only (see the module notes).

    Parameters
    ----------
    a, b: volumes of one shape. [nz, ny, nx]
    max_tilt_deg: largest |tilt| of the series, degrees (a symmetric range is assumed).
    voxel_size_A: voxel size, A.
    n_shells: as in :func:`fsc`.

    Returns
    -------
    (freq_per_A [n_shells], fsc [n_shells]); NaN for shells with fewer than 8 wedge
    voxels (shell 0 always).
    """
    a, b = _check_pair(a, b)
    _check_tilt(max_tilt_deg)
    freq, _, curve = _spectral_curves(a, b, max_tilt_deg, n_shells)
    return freq / voxel_size_A, curve


def resolution_at(freq_per_A: np.ndarray, fsc_curve: np.ndarray, threshold: float) -> float:
    """Resolution (A) where an FSC curve first drops below ``threshold``.

    Parameters
    ----------
    freq_per_A: shell frequencies, 1/A, from DC (shell 0) to Nyquist (the last shell).
        [n_shells]
    fsc_curve: FSC per shell; NaN for empty shells. [n_shells]
    threshold: e.g. 0.5 or 0.143.

    Returns
    -------
    float, A. The crossing is searched from shell 1 on, skipping NaN shells, and
    interpolated linearly in frequency between the last shell >= 1 at or above the
    threshold and the first below it. Shell 0 (DC) is never used: it is 1 after the
    affine fit and would put the crossing below the box's own frequency. Hence the
    result is at most ``1 / freq[1]`` (the box size): that is the value when no shell
    from 1 on reaches the threshold before the curve is below it (the first non-NaN shell
    >= 1 is already below). A curve that never drops below gives Nyquist,
    ``1 / freq[-1]`` (2 voxels). NaN when every shell from 1 on is NaN.

    Raises
    ------
    ValueError: the arrays differ in length, hold fewer than 2 shells, or shell 1's
        frequency is not positive.
    """
    freq = np.asarray(freq_per_A, dtype=np.float64)
    curve = np.asarray(fsc_curve, dtype=np.float64)
    if freq.shape != curve.shape or freq.ndim != 1 or freq.size < 2:
        raise ValueError(f"need two 1D arrays of one length >= 2, got {freq.shape} and "
                         f"{curve.shape}")
    if not freq[1] > 0:
        raise ValueError(f"shell 1 must have a positive frequency, got {freq[1]}")
    valid = [i for i in range(1, freq.size) if np.isfinite(curve[i])]
    if not valid:
        return float("nan")
    prev = None  # last valid shell >= 1 at or above the threshold
    for i in valid:
        if curve[i] < threshold:
            if prev is None:
                # Below from the first measured shell on: nothing resolved beyond the box.
                return float(1.0 / freq[1])
            t = (curve[prev] - threshold) / (curve[prev] - curve[i])
            return float(1.0 / (freq[prev] + t * (freq[i] - freq[prev])))
        prev = i
    return float(1.0 / freq[-1])


def band_average(freq_per_A: np.ndarray, curve: np.ndarray,
                 band_per_A: tuple[float, float] = DEFAULT_BAND_PER_A) -> float:
    """Mean of an FSC curve over the shells whose frequency lies in ``band_per_A``.

    Parameters
    ----------
    freq_per_A: shell frequencies, 1/A. [n_shells]
    curve: FSC (or missing-wedge FSC) per shell; NaN shells are skipped. [n_shells]
    band_per_A: (low, high) frequency, 1/A, both included; default ``(1/400, 1/32)``.

    Returns
    -------
    float. DC (frequency 0) is never used. When no non-NaN shell lies in the band (a box
    too small or a voxel too coarse for it), the mean of the nearest non-NaN shell below
    the band and the nearest above it (whichever exist) is returned instead, so that a
    number is always reported; NaN only when no shell beyond DC is finite.

    Raises
    ------
    ValueError: the band is not ``0 < low <= high`` or the arrays differ in length.
    """
    freq = np.asarray(freq_per_A, dtype=np.float64)
    values = np.asarray(curve, dtype=np.float64)
    if freq.shape != values.shape:
        raise ValueError(f"frequencies {freq.shape} and curve {values.shape} differ")
    low, high = (float(v) for v in band_per_A)
    if not 0 < low <= high:
        raise ValueError(f"the band must satisfy 0 < low <= high, got {band_per_A}")
    usable = (freq > 0) & np.isfinite(values)
    # A relative margin so that shells computed as k / (N voxel) sit inside a band edge
    # given as the same number written differently (1/32 vs 0.03125).
    eps = 1e-9 * high
    inside = usable & (freq >= low - eps) & (freq <= high + eps)
    if inside.any():
        return float(np.mean(values[inside]))
    below = np.flatnonzero(usable & (freq < low))
    above = np.flatnonzero(usable & (freq > high))
    chosen = [idx for idx in (below[-1:], above[:1]) if idx.size]
    if not chosen:
        return float("nan")
    return float(np.mean(values[np.concatenate(chosen)]))


def _remove_plane_means(volume: np.ndarray) -> np.ndarray:
    """``volume`` minus the mean of each XY plane (the slab's z-profile), float64."""
    v = np.asarray(volume, dtype=np.float64)
    return v - v.mean(axis=(1, 2), keepdims=True)


def half_map_fsc(half1: np.ndarray, half2: np.ndarray, voxel_size_A: float,
                 band_per_A: tuple[float, float] = DEFAULT_BAND_PER_A) -> dict:
    """FSC of two half maps (independent reconstructions of the same specimen).

    No affine fit: the FSC does not depend on either map's gain, and an offset only
    changes DC, which no score uses (module notes). Any two tomograms of one shape from
    any program can be compared.

    Parameters
    ----------
    half1, half2: the two half maps. [nz, ny, nx]
    voxel_size_A: voxel size, A.
    band_per_A: (low, high) frequency band of ``band_fsc``, 1/A.

    Returns
    -------
    dict with ``freq_per_A`` and ``fsc`` (lists, shells 0..Nyquist),
    ``fsc0143_resolution_A``, ``fsc05_resolution_A`` (:func:`resolution_at`),
    ``band_fsc`` (:func:`band_average` over ``band_per_A``), ``band_per_A``,
    ``voxel_size_A`` and ``shape_zyx``.

    Raises
    ------
    InputError: shapes differ, a map is not 3D or holds NaN/Inf, or the voxel size or
        band is impossible.
    """
    half1, half2 = _check_pair(half1, half2, names=("half map 1", "half map 2"),
                               advice="both halves must come from one reconstruction "
                                      "geometry")
    if not voxel_size_A > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_A}")
    _check_band(band_per_A)
    freq, curve, _ = _spectral_curves(half1, half2, None, None)
    freq = freq / voxel_size_A
    return {
        "freq_per_A": freq.tolist(),
        "fsc": curve.tolist(),
        "fsc0143_resolution_A": resolution_at(freq, curve, 0.143),
        "fsc05_resolution_A": resolution_at(freq, curve, 0.5),
        "band_fsc": band_average(freq, curve, band_per_A),
        "band_per_A": [float(v) for v in band_per_A],
        "voxel_size_A": float(voxel_size_A),
        "shape_zyx": list(half1.shape),
    }


def evaluate(recon: np.ndarray, reference: np.ndarray, voxel_size_A: float,
             max_tilt_deg: float = 60.0,
             band_per_A: tuple[float, float] = DEFAULT_BAND_PER_A) -> dict:
    """Every metric of a reconstruction against a reference.

    Parameters
    ----------
    recon: reconstruction, any units and polarity. [nz, ny, nx]
    reference: ground truth. [nz, ny, nx]
    voxel_size_A: voxel size, A.
    max_tilt_deg: largest |tilt| of the series, for the missing-wedge FSC.
    band_per_A: (low, high) frequency band of the band FSCs, 1/A; default
        ``(1/400, 1/32)``, features of 32-400 A.

    Returns
    -------
    dict with ``psnr`` (dB; ``inf`` for a perfect match), ``ssim``, ``correlation``,
    ``fsc05_resolution_A``, ``fsc0143_resolution_A``, ``wedge_fsc`` (scalar summary),
    ``band_fsc`` and ``wedge_band_fsc`` (mean FSC and missing-wedge FSC over the band;
    module notes, "Band FSC"), ``specimen_band_fsc`` and ``specimen_wedge_band_fsc``
    (the same after removing each XY plane's mean from both volumes, so the ice layer's
    z-profile does not dominate the low kz frequencies; module notes, "Specimen
    scores"), ``band_per_A``, ``contrast_inverted``, ``fit_gain``, ``fit_offset``,
    ``normalisation``, ``voxel_size_A``, ``max_tilt_deg``, ``shape_zyx`` and ``curves``
    (``{"fsc": {"freq_per_A": [...], "fsc": [...]}, "wedge_fsc": {...},
    "specimen_fsc": {...}, "specimen_wedge_fsc": {...}}``).
    All metrics use the normalised reconstruction (module notes).

    Raises
    ------
    InputError: shapes differ, a volume is not 3D or not finite, the reference is
        constant, or the voxel size / tilt / band is impossible.
    """
    recon, reference = _check_pair(recon, reference)
    if not voxel_size_A > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_A}")
    ref = np.asarray(reference, dtype=np.float64)
    data_range = float(ref.max() - ref.min())
    if not data_range > 0:
        raise InputError("the reference volume is constant; nothing to compare against")
    _check_tilt(max_tilt_deg)
    _check_band(band_per_A)
    gain, offset = affine_fit(recon, ref)
    norm = gain * np.asarray(recon, dtype=np.float64) + offset
    freq, curve, wcurve = _spectral_curves(norm, ref, max_tilt_deg, None)
    freq = freq / voxel_size_A
    wfreq = freq
    nyquist = 0.5 / voxel_size_A
    band = (wfreq > 0) & (wfreq <= _WEDGE_SUMMARY_FRACTION * nyquist + 1e-12) \
        & np.isfinite(wcurve)
    wedge_summary = float(np.mean(wcurve[band])) if band.any() else float("nan")
    # Specimen scores: one more pair of FFTs, on the volumes without their z-profile.
    _, scurve, swcurve = _spectral_curves(_remove_plane_means(norm), _remove_plane_means(ref),
                                          max_tilt_deg, None)
    return {
        "psnr": psnr(norm, ref, data_range),
        "ssim": ssim3d(norm, ref, data_range),
        "correlation": correlation(norm, ref),
        "fsc05_resolution_A": resolution_at(freq, curve, 0.5),
        "fsc0143_resolution_A": resolution_at(freq, curve, 0.143),
        "wedge_fsc": wedge_summary,
        "band_fsc": band_average(freq, curve, band_per_A),
        "wedge_band_fsc": band_average(wfreq, wcurve, band_per_A),
        "specimen_band_fsc": band_average(freq, scurve, band_per_A),
        "specimen_wedge_band_fsc": band_average(wfreq, swcurve, band_per_A),
        "band_per_A": [float(v) for v in band_per_A],
        "contrast_inverted": bool(gain < 0),
        "fit_gain": gain,
        "fit_offset": offset,
        "normalisation": "affine least-squares fit a*recon+b to the reference; PSNR and "
                         "SSIM with the reference's max-min as data range",
        "voxel_size_A": float(voxel_size_A),
        "max_tilt_deg": float(max_tilt_deg),
        "shape_zyx": list(reference.shape),
        "curves": {
            "fsc": {"freq_per_A": freq.tolist(), "fsc": curve.tolist()},
            "wedge_fsc": {"freq_per_A": wfreq.tolist(), "fsc": wcurve.tolist()},
            "specimen_fsc": {"freq_per_A": freq.tolist(), "fsc": scurve.tolist()},
            "specimen_wedge_fsc": {"freq_per_A": wfreq.tolist(), "fsc": swcurve.tolist()},
        },
    }


def metrics_to_json(metrics: dict) -> str:
    """Strict JSON text of a metrics dict (the package's encoder,
    :func:`taichi_etgs.pipeline.jsonio.dumps`): ``inf`` -> ``"inf"``, NaN -> ``null``."""
    return jsonio.dumps(metrics, indent=1) + "\n"


def write_metrics_json(metrics: dict, path: str | PathLike, force: bool = False) -> Path:
    """Write :func:`metrics_to_json` atomically.

    Raises
    ------
    InputError: the file exists and ``force`` is False, or its folder does not exist
        (:func:`taichi_etgs.pipeline.outputs.check_writable`).
    """
    p = check_writable(path, force)
    write_text_atomic(p, metrics_to_json(metrics))
    return p
