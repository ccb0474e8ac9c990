"""CTF phase flipping of tilt views before WBP and SIRT, in strips along the tilt axis.

As IMOD's ``ctfphaseflip``: each view is multiplied in Fourier space by the sign of its
CTF, which undoes the contrast reversals past the CTF's zeros (amplitudes are left as
they are). A tilted specimen is not at one defocus: the defocus changes across the view,
perpendicular to the tilt axis (Y), so each view is corrected in vertical strips, each
with the defocus at its centre, narrow enough that the defocus changes by at most
``tolerance_nm`` across one.

**The defocus gradient** (docs/conventions.md's geometry; the beam travels along +Z, from
the source at -Z to the detector at +Z): a point ``(x, y, z)`` of the specimen is, at tilt
``theta``, at height ``z' = -x sin(theta) + z cos(theta)`` along the beam and lands on
detector column ``u = x cos(theta) + z sin(theta)``. Underfocus grows towards the source
(lower ``z'``), so a point of the specimen's mid-plane (``z = 0``) seen at column ``u``
is at defocus

    df(u) = df_view + x sin(theta) = df_view + u tan(theta)      (lengths in A)

with ``df_view`` the defocus at the tilt axis (what ctfplotter, CTFFIND4 and AreTomo3
give): at positive tilts the columns right of the axis (``u > 0``) are further
underfocus. :func:`strip_defocus_um` states it; ``tests/test_phaseflip.py`` checks it
against :func:`taichi_etgs.geometry.project_point`.

Views are filtered after removing their mean, without padding unless asked (see
``pad``), and only their frequencies beyond the CTF's first zero change (the cuts between
strips leak nothing into the low ones). The views are positive-density views (negated
images), so the sign applied is that of ``-CTF``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["first_zero_per_A", "phase_flip_views", "strip_defocus_um", "strips"]

#: Default largest change of defocus across a strip, nm.
DEFAULT_TOLERANCE_NM = 200.0


def strip_defocus_um(u_px, tilt_deg: float, defocus_um: float, pixel_size_A: float):
    """Defocus (um, positive underfocus) of the specimen's mid-plane seen at detector
    column ``u_px`` (pixels from the view's centre) of a view at ``tilt_deg`` whose
    defocus at the tilt axis is ``defocus_um``: ``df + u * pixel * tan(tilt)``."""
    shift_A = np.asarray(u_px, dtype=np.float64) * pixel_size_A * np.tan(np.radians(tilt_deg))
    return defocus_um + shift_A * 1e-4


def first_zero_per_A(defocus_um: float, voltage_kV: float = 300.0, cs_mm: float = 2.7,
                     amplitude_contrast: float = 0.07) -> float:
    """The spatial frequency (1/A) of the CTF's first zero at ``defocus_um`` (positive
    underfocus): where ``-CTF`` first reaches 0, i.e. the phase ``chi(k) = pi - atan(w /
    sqrt(1 - w^2))`` for amplitude contrast ``w``. Infinite where it is never reached
    (no underfocus)."""
    from ..simulation.imaging import electron_wavelength_A

    lam = electron_wavelength_A(voltage_kV)
    w = float(amplitude_contrast)
    target = np.pi - np.arctan2(w, np.sqrt(1.0 - w * w))
    # chi = a k^2 - b k^4 with a = pi lam df, b = pi Cs lam^3 / 2: the smaller root in k^2.
    a = np.pi * lam * float(defocus_um) * 1e4
    b = 0.5 * np.pi * float(cs_mm) * 1e7 * lam ** 3
    if a <= 0:
        return float("inf")
    if b <= 0:
        return float(np.sqrt(target / a))
    disc = a * a - 4.0 * b * target
    if disc < 0:  # the phase never gets there before Cs turns it back
        return float("inf")
    return float(np.sqrt((a - np.sqrt(disc)) / (2.0 * b)))


def strips(nx: int, tilt_deg: float, pixel_size_A: float,
           tolerance_nm: float = DEFAULT_TOLERANCE_NM) -> list[tuple[int, int, float]]:
    """The strips of a view: ``(first column, end column, centre u in pixels)``, as wide
    as the tolerance allows (the whole view at 0 degrees), equal within one column."""
    slope = abs(np.tan(np.radians(tilt_deg))) * pixel_size_A  # A of defocus per pixel
    width = nx if slope == 0 else max(1.0, tolerance_nm * 10.0 / slope)
    n = int(min(nx, max(1, np.ceil(nx / width - 1e-9))))
    edges = np.round(np.linspace(0, nx, n + 1)).astype(int)
    return [(int(a), int(b), 0.5 * (a + b) - 0.5 * nx) for a, b in zip(edges[:-1], edges[1:])]


def phase_flip_views(views: np.ndarray, tilts_deg, microscope, *,
                     tolerance_nm: float = DEFAULT_TOLERANCE_NM, pad: int = 0,
                     progress=None, out=None) -> np.ndarray:
    """Phase-flipped positive-density views, strip by strip.

    Parameters
    ----------
    views: positive-density views (e.g. :func:`taichi_etgs.pipeline.inputs.unit_views`).
        [n, ny, nx]
    tilts_deg: their tilts. [n]
    microscope: :class:`~taichi_etgs.gaussian.transfer.Microscope`: the defocus (one, or
        one per view with optional astigmatism), voltage, Cs, amplitude contrast, pixel
        size.
    tolerance_nm: the largest change of defocus across one strip.
    pad: mirror padding, pixels (at most one less than the view). None by default: on
        simulated series at 5 A (3 um, 120 e/A^2) 16 pixels cost WBP 1.3 % of its
        feature-band FSC against the truth and gained nothing past the first zero (+0.042
        against +0.040 without). Worth it where the CTF's point spread is as wide as the
        view (tiny views, large defocus at small pixels).
    progress: called with the number of views done.
    out: where the views go (``out[t] = view``; ``views`` itself works, and so does a
        file such as :class:`~taichi_etgs.io.scratch.ScratchStack`: one view at a time is
        read and written); default a new array.

    Returns
    -------
    float32 views, each with its mean removed (``out``). [n, ny, nx]
    """
    from ..simulation.imaging import _frequencies, ctf_2d

    views = views if hasattr(views, "shape") else np.asarray(views)
    n, ny, nx = views.shape
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if tilts.shape != (n,):
        raise ValueError(f"{tilts.size} tilt angles for {n} views")
    if microscope.n_views not in (None, n):
        raise ValueError(f"the defocus is given for {microscope.n_views} views, not {n}")
    if not tolerance_nm > 0:
        raise ValueError(f"the defocus tolerance must be positive, got {tolerance_nm}")
    p = max(0, min(int(pad), ny - 1, nx - 1))
    shape = (ny + 2 * p, nx + 2 * p)
    m = microscope
    if out is None:
        out = np.empty((n, ny, nx), dtype=np.float32)
    view = np.empty((ny, nx), dtype=np.float64)
    k = _frequencies((ny, nx), m.pixel_size_A)
    for t in range(n):
        v = np.asarray(views[t], dtype=np.float64)
        v = v - v.mean()
        spectrum = np.fft.rfft2(np.pad(v, p, mode="reflect"))
        df1, df2, azimuth = m.view(t)
        deepest = 0.0
        for first, end, centre in strips(nx, tilts[t], m.pixel_size_A, tolerance_nm):
            d1 = float(strip_defocus_um(centre, tilts[t], df1, m.pixel_size_A))
            d2 = None if df2 is None else float(strip_defocus_um(centre, tilts[t], df2,
                                                                 m.pixel_size_A))
            deepest = max(deepest, d1, d1 if d2 is None else d2)
            sign = np.sign(-ctf_2d(shape, m.pixel_size_A, d1, m.voltage_kV, m.cs_mm,
                                   m.amplitude_contrast, defocus2_um=d2,
                                   astigmatism_deg=azimuth))
            flipped = np.fft.irfft2(spectrum * sign, s=shape)
            view[:, first:end] = flipped[p:p + ny, p + first:p + end]
        # Inside the CTF's first zero nothing is flipped, yet the crop of the padded
        # views (and the cuts between strips) leak flipped high frequencies into those
        # low ones (WBP's feature-band FSC fell 1.8 % at 5 A): only the change beyond the
        # first zero of the most underfocused strip is kept.
        change = np.fft.rfft2(view - v)
        change[k < first_zero_per_A(deepest, m.voltage_kV, m.cs_mm, m.amplitude_contrast)] = 0
        out[t] = v + np.fft.irfft2(change, s=(ny, nx))
        if progress is not None:
            progress(t + 1)
    return out
