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

Views are filtered after removing their mean and with mirror padding, as the forward
model's :class:`~taichi_etgs.gaussian.transfer.ViewFilter`. The views are positive-density
views (negated images), so the sign applied is that of ``-CTF``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phase_flip_views", "strip_defocus_um", "strips"]

#: Default largest change of defocus across a strip, nm.
DEFAULT_TOLERANCE_NM = 200.0


def strip_defocus_um(u_px, tilt_deg: float, defocus_um: float, pixel_size_A: float):
    """Defocus (um, positive underfocus) of the specimen's mid-plane seen at detector
    column ``u_px`` (pixels from the view's centre) of a view at ``tilt_deg`` whose
    defocus at the tilt axis is ``defocus_um``: ``df + u * pixel * tan(tilt)``."""
    shift_A = np.asarray(u_px, dtype=np.float64) * pixel_size_A * np.tan(np.radians(tilt_deg))
    return defocus_um + shift_A * 1e-4


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
                     tolerance_nm: float = DEFAULT_TOLERANCE_NM, pad: int = 16,
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
    pad: mirror padding, pixels (at most one less than the view).
    progress: called with the number of views done.
    out: where the views go (``out[t] = view``; ``views`` itself works, and so does a
        file such as :class:`~taichi_etgs.io.scratch.ScratchStack`: one view at a time is
        read and written); default a new array.

    Returns
    -------
    float32 views, each with its mean removed (``out``). [n, ny, nx]
    """
    from ..simulation.imaging import ctf_2d

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
    view = np.empty((ny, nx), dtype=np.float32)
    for t in range(n):
        v = np.asarray(views[t], dtype=np.float64)
        spectrum = np.fft.rfft2(np.pad(v - v.mean(), p, mode="reflect"))
        df1, df2, azimuth = m.view(t)
        for first, end, centre in strips(nx, tilts[t], m.pixel_size_A, tolerance_nm):
            d1 = float(strip_defocus_um(centre, tilts[t], df1, m.pixel_size_A))
            d2 = None if df2 is None else float(strip_defocus_um(centre, tilts[t], df2,
                                                                 m.pixel_size_A))
            sign = np.sign(-ctf_2d(shape, m.pixel_size_A, d1, m.voltage_kV, m.cs_mm,
                                   m.amplitude_contrast, defocus2_um=d2,
                                   astigmatism_deg=azimuth))
            flipped = np.fft.irfft2(spectrum * sign, s=shape)
            view[:, first:end] = flipped[p:p + ny, p + first:p + end]
        out[t] = view
        if progress is not None:
            progress(t + 1)
    return out
