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
is the DC term. No mask or apodisation. The resolution at a threshold is the first
crossing below it (shells from 1 on), interpolated linearly in frequency; a curve that
never crosses gives the Nyquist resolution ``2 * voxel``. A shell where one volume has
no power (below 1e-12 of the other's) scores 0; one where neither has is NaN.

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

JSON
----
``metrics_to_json`` writes ``inf`` (PSNR of identical volumes) as the string ``"inf"``
(``float("inf")`` reads it back) and NaN (empty shells) as ``null``.
"""

from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path

import numpy as np

from ._atomic import write_text_atomic
from .errors import InputError

__all__ = [
    "affine_fit",
    "correlation",
    "evaluate",
    "fsc",
    "json_safe",
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


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _check_pair(recon: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    recon = np.asarray(recon)
    reference = np.asarray(reference)
    for name, vol in (("reconstruction", recon), ("reference", reference)):
        if vol.ndim != 3:
            raise InputError(f"the {name} must be a 3D volume (z, y, x), got shape "
                             f"{vol.shape}")
    if recon.shape != reference.shape:
        raise InputError(
            f"reconstruction is {_shape_text(recon.shape)} (z,y,x) but the reference is "
            f"{_shape_text(reference.shape)} (z,y,x); both must have the same shape "
            f"(reconstruct with the reference's thickness and width)")
    for name, vol in (("reconstruction", recon), ("reference", reference)):
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

    The crossing is searched from shell 1 on (shell 0 is DC), skipping NaN shells, and
    interpolated linearly in frequency between the shells on either side. A curve that
    never drops below gives the resolution of the last shell (Nyquist: 2 voxels). A
    crossing right after a DC shell above the threshold can give a very coarse value;
    one at frequency 0 gives ``inf``.
    """
    freq = np.asarray(freq_per_A, dtype=np.float64)
    curve = np.asarray(fsc_curve, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(curve))
    if valid.size == 0:
        return float("nan")
    prev = None
    for i in valid:
        if i >= 1 and curve[i] < threshold:
            if prev is None or curve[prev] < threshold:
                f = freq[i]
            else:
                t = (curve[prev] - threshold) / (curve[prev] - curve[i])
                f = freq[prev] + t * (freq[i] - freq[prev])
            return float(1.0 / f) if f > 0 else float("inf")
        prev = i
    return float(1.0 / freq[valid[-1]]) if freq[valid[-1]] > 0 else float("inf")


def evaluate(recon: np.ndarray, reference: np.ndarray, voxel_size_A: float,
             max_tilt_deg: float = 60.0) -> dict:
    """Every metric of a reconstruction against a reference.

    Parameters
    ----------
    recon: reconstruction, any units and polarity. [nz, ny, nx]
    reference: ground truth. [nz, ny, nx]
    voxel_size_A: voxel size, A.
    max_tilt_deg: largest |tilt| of the series, for the missing-wedge FSC.

    Returns
    -------
    dict with ``psnr`` (dB; ``inf`` for a perfect match), ``ssim``, ``correlation``,
    ``fsc05_resolution_A``, ``fsc0143_resolution_A``, ``wedge_fsc`` (scalar summary),
    ``contrast_inverted``, ``fit_gain``, ``fit_offset``, ``normalisation``,
    ``voxel_size_A``, ``max_tilt_deg``, ``shape_zyx`` and ``curves``
    (``{"fsc": {"freq_per_A": [...], "fsc": [...]}, "wedge_fsc": {...}}``).
    All metrics use the normalised reconstruction (module notes).

    Raises
    ------
    InputError: shapes differ, a volume is not 3D or not finite, the reference is
        constant, or the voxel size / tilt is impossible.
    """
    recon, reference = _check_pair(recon, reference)
    if not voxel_size_A > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_A}")
    ref = np.asarray(reference, dtype=np.float64)
    data_range = float(ref.max() - ref.min())
    if not data_range > 0:
        raise InputError("the reference volume is constant; nothing to compare against")
    _check_tilt(max_tilt_deg)
    gain, offset = affine_fit(recon, ref)
    norm = gain * np.asarray(recon, dtype=np.float64) + offset
    freq, curve, wcurve = _spectral_curves(norm, ref, max_tilt_deg, None)
    freq = freq / voxel_size_A
    wfreq = freq
    nyquist = 0.5 / voxel_size_A
    band = (wfreq > 0) & (wfreq <= _WEDGE_SUMMARY_FRACTION * nyquist + 1e-12) \
        & np.isfinite(wcurve)
    wedge_summary = float(np.mean(wcurve[band])) if band.any() else float("nan")
    return {
        "psnr": psnr(norm, ref, data_range),
        "ssim": ssim3d(norm, ref, data_range),
        "correlation": correlation(norm, ref),
        "fsc05_resolution_A": resolution_at(freq, curve, 0.5),
        "fsc0143_resolution_A": resolution_at(freq, curve, 0.143),
        "wedge_fsc": wedge_summary,
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
        },
    }


def json_safe(value):
    """Copy of nested dicts, lists and numpy scalars for strict JSON: inf -> "inf", NaN -> None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def metrics_to_json(metrics: dict) -> str:
    """Strict JSON text of a metrics dict: ``inf`` -> ``"inf"``, NaN -> ``null``."""
    return json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n"


def write_metrics_json(metrics: dict, path: str | PathLike, force: bool = False) -> Path:
    """Write :func:`metrics_to_json` atomically.

    Raises
    ------
    InputError: the file exists and ``force`` is False, or its folder does not exist.
    """
    p = Path(path)
    if p.exists() and not force:
        raise InputError("exists; use --force to overwrite", p)
    if not p.parent.is_dir():
        raise InputError(f"cannot be written: the folder {p.parent} does not exist", p)
    write_text_atomic(p, metrics_to_json(metrics))
    return p
