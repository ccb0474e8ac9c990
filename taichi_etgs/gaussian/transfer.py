"""The microscope's contrast transfer in the Gaussian reconstruction's forward model.

Raw views are the specimen's projections filtered by the contrast transfer function (CTF):
at a few micrometres of underfocus its first zero falls inside the band users care about,
and beyond it contrast flips. Positive Gaussians cannot represent a CTF-filtered tomogram
(its lobes are negative), so the filter belongs in the forward model: each rendered view is
filtered with its view's CTF before the loss, the gradient flows back through the same
filter (the CTF is real and even, so the filter is its own adjoint), and the model stays
the specimen's potential (docs/method.md, "Contrast transfer").

Views are filtered after removing their mean (the per-view offset carries it) and with
mirror padding against wrap-around: the specimen goes on past the detector's edges, and a
zero border would ring through the CTF wherever the ice meets it (a slab's projection is
hundreds of times the specimen's contrast). The operator is linear and its transpose is
the same chain in reverse, the padding's transpose folding the border back:
:meth:`ViewFilter.apply` and :meth:`ViewFilter.adjoint`.

With the views' exposure (:attr:`Microscope.exposure_e_per_A2`) each view's filter is its
CTF times its exposure filter (Grant & Grigorieff's critical exposure,
:func:`~taichi_etgs.simulation.imaging.exposure_filter`): later views are predicted with
the high-resolution signal they have lost, and the filter stays real and even, so the
adjoint stays exact (docs/method.md, "Dose"). Without a CTF (``ctf=False``) the filter is
the exposure filter alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from ..runtime import fft_workers

__all__ = ["Microscope", "ViewFilter"]


@dataclass(frozen=True)
class Microscope:
    """Imaging constants: defocus (micrometres, positive = underfocus: one value for the
    series, or one per view), voltage (kV), spherical aberration (mm), amplitude contrast,
    pixel size (A), and optionally the astigmatism per view: ``defocus_um`` is then the
    defocus along the azimuth ``astigmatism_deg`` (from image X towards +Y) and
    ``defocus2_um`` the defocus across it (:func:`~taichi_etgs.simulation.imaging.ctf_2d`).
    ``exposure_e_per_A2``: the exposure each view carries (one value or one per view,
    e/A^2; None: no exposure filter); ``ctf``: False for an exposure filter without a CTF.
    """

    defocus_um: float | tuple
    pixel_size_A: float
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus2_um: tuple | None = None
    astigmatism_deg: tuple | None = None
    exposure_e_per_A2: float | tuple | None = None
    ctf: bool = True

    def __post_init__(self) -> None:
        for name in ("defocus_um", "defocus2_um", "astigmatism_deg", "exposure_e_per_A2"):
            value = getattr(self, name)
            if value is not None and np.ndim(value) > 0:
                object.__setattr__(self, name, tuple(float(v) for v in np.ravel(value)))
        sizes = {len(v) for v in (self.defocus_um, self.defocus2_um, self.astigmatism_deg,
                                  self.exposure_e_per_A2) if isinstance(v, tuple)}
        if len(sizes) > 1:
            raise ValueError(f"per-view defocus, astigmatism and exposure of different "
                             f"lengths {sizes}")

    @property
    def n_views(self) -> int | None:
        """The number of views the constants are given for (None: one for all)."""
        for v in (self.defocus_um, self.defocus2_um, self.astigmatism_deg,
                  self.exposure_e_per_A2):
            if isinstance(v, tuple):
                return len(v)
        return None

    def view(self, t: int) -> tuple[float, float | None, float]:
        """``(defocus 1, defocus 2 or None, azimuth)`` of view ``t``."""
        def pick(v, default):
            if v is None:
                return default
            return float(v[t]) if isinstance(v, tuple) else float(v)

        return (pick(self.defocus_um, 0.0), pick(self.defocus2_um, None),
                pick(self.astigmatism_deg, 0.0))

    def exposure(self, t: int) -> float | None:
        """The exposure of view ``t`` (e/A^2), or None without an exposure filter."""
        e = self.exposure_e_per_A2
        if e is None:
            return None
        return float(e[t]) if isinstance(e, tuple) else float(e)


class ViewFilter:
    """The CTF of positive-density views, ``H = -CTF`` (density views are negated images),
    times the view's exposure filter when the exposure is given, applied to mean-free views
    with mirror padding (at most one pixel less than the view).

    With per-view constants (:attr:`Microscope.n_views`) every method takes ``index``, the
    views (of the series) that the first axis of its argument holds; default all of them.
    """

    def __init__(self, microscope: Microscope, shape_yx: tuple[int, int],
                 pad: int = 16) -> None:
        self.pad = max(0, min(int(pad), shape_yx[0] - 1, shape_yx[1] - 1))
        self.shape = (shape_yx[0] + 2 * self.pad, shape_yx[1] + 2 * self.pad)
        self.microscope = microscope
        self.n_views = microscope.n_views
        self._cache: dict[tuple, np.ndarray] = {}
        # The filter of view 0 (of every view when the constants are one for all).
        self.h = self.h_for(0)
        # 1D transfer of row averages: averaging over y keeps the ky = 0 line.
        self.h_rows = self.h[0]

    def h_for(self, t: int) -> np.ndarray:
        """The filter of view ``t`` on the padded rfft2 grid (cached per distinct view)."""
        from ..simulation.imaging import _frequencies, ctf_2d, exposure_filter

        m = self.microscope
        key = (*m.view(int(t)), m.exposure(int(t)))
        h = self._cache.get(key)
        if h is None:
            df1, df2, azimuth, exposure = key
            if m.ctf:
                h = -ctf_2d(self.shape, m.pixel_size_A, df1, m.voltage_kV, m.cs_mm,
                            m.amplitude_contrast, defocus2_um=df2, astigmatism_deg=azimuth)
            else:
                h = np.ones((self.shape[0], self.shape[1] // 2 + 1))
            if exposure is not None:
                h = h * exposure_filter(_frequencies(self.shape, m.pixel_size_A), exposure,
                                        m.voltage_kV)
            if len(self._cache) < 256:
                self._cache[key] = h
        return h

    def _filters(self, n: int, index) -> np.ndarray:
        """The filters of ``n`` views: one broadcast array, or a stack. [(n,) ky, kx]"""
        if self.n_views is None:
            return self.h
        index = np.arange(n) if index is None else np.asarray(index).reshape(-1)
        if index.size != n:
            raise ValueError(f"{index.size} view indices for {n} views")
        return np.stack([self.h_for(int(t)) for t in index])

    def _filter(self, views: np.ndarray, h: np.ndarray, transpose: bool = False
                ) -> np.ndarray:
        """Mirror-pad, filter, crop; or, transposed, embed, filter, fold the border back.
        In the precision of ``views`` (float32 or float64)."""
        p = self.pad
        ny, nx = views.shape[1:]
        if transpose:
            padded = np.zeros((views.shape[0], *self.shape), dtype=views.dtype)
            padded[:, p:p + ny, p:p + nx] = views
        else:
            padded = np.pad(views, ((0, 0), (p, p), (p, p)), mode="reflect")
        # Every step filters its views and their gradient on the host, beside the kernels
        # (a GPU run too): all cores, and float32 FFTs for float32 views (bench/results/
        # host_filters.md).
        workers = fft_workers()
        spectrum = scipy.fft.rfftn(padded, axes=(1, 2), workers=workers)
        spectrum *= np.asarray(h, dtype=views.dtype)
        out = scipy.fft.irfftn(spectrum, s=self.shape, axes=(1, 2), workers=workers)
        if not transpose:
            return out[:, p:p + ny, p:p + nx]
        return _fold_mirror(_fold_mirror(out, p, axis=1), p, axis=2)

    def apply(self, views: np.ndarray, index=None) -> np.ndarray:
        """Filtered views (each view's mean removed first), computed in float32 for float32
        views (a run's working precision), else float64. [n, ny, nx]"""
        v = _working(views)
        h = self._filters(v.shape[0], index)
        return self._filter(_mean_free(v), h).astype(views.dtype, copy=False)

    def adjoint(self, grad: np.ndarray, index=None) -> np.ndarray:
        """The transpose of :meth:`apply`, for gradients. [n, ny, nx]"""
        h = self._filters(grad.shape[0], index)
        g = self._filter(_working(grad), h, transpose=True)
        return _mean_free(g).astype(grad.dtype, copy=False)

    def phase_flip(self, views: np.ndarray, index=None) -> np.ndarray:
        """Views with the CTF's sign undone (IMOD's ctfphaseflip without strips): what a
        classical reconstruction of the seed wants. [n, ny, nx]"""
        out = np.empty(views.shape, dtype=np.float32)
        index = np.arange(views.shape[0]) if index is None else np.asarray(index).reshape(-1)
        for k, t in enumerate(index):
            v = np.asarray(views[k:k + 1], dtype=np.float64)
            out[k] = self._filter(v - v.mean(), np.sign(self.h_for(int(t))))[0]
        return out

    def apply_rows(self, profiles: np.ndarray, index=None) -> np.ndarray:
        """The filter's effect on row averages (1D, along u). [..., nu]; with per-view
        constants the first axis is the views ``index``."""
        p = self.pad
        a = np.asarray(profiles, dtype=np.float64)
        a = a - a.mean(axis=-1, keepdims=True)
        nu = a.shape[-1]
        widths = [(0, 0)] * (a.ndim - 1) + [(p, p)]
        padded = np.pad(a, widths, mode="reflect")
        if self.n_views is None or a.ndim == 1:
            h = self.h_rows if self.n_views is None else self.h_for(
                0 if index is None else int(np.ravel(index)[0]))[0]
        else:
            rows = self._filters(a.shape[0], index)[:, 0, :]
            h = rows.reshape((a.shape[0],) + (1,) * (a.ndim - 2) + (rows.shape[-1],))
        out = np.fft.irfft(np.fft.rfft(padded, axis=-1) * h, n=self.shape[1], axis=-1)
        return out[..., p:p + nu]


def _working(images: np.ndarray) -> np.ndarray:
    """``images`` in the filter's precision: float32 stays float32 (its FFTs are 2-4x
    faster, and the result is rounded to float32 anyway), anything else float64."""
    images = np.asarray(images)
    return images if images.dtype == np.float32 else images.astype(np.float64)


def _mean_free(images: np.ndarray) -> np.ndarray:
    """Each image less its mean (summed in float64). [n, ny, nx]"""
    mean = images.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    return images - mean.astype(images.dtype)


def _fold_mirror(padded: np.ndarray, pad: int, axis: int) -> np.ndarray:
    """The transpose of ``np.pad(x, pad, mode="reflect")`` along ``axis``: the border's
    values are added back onto the pixels they mirror."""
    g = np.moveaxis(padded, axis, -1)
    n = g.shape[-1] - 2 * pad
    out = g[..., pad:pad + n].copy()
    if pad:
        out[..., 1:pad + 1] += g[..., :pad][..., ::-1]
        out[..., n - 1 - pad:n - 1] += g[..., pad + n:][..., ::-1]
    return np.moveaxis(out, -1, axis)
