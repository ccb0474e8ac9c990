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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Microscope", "ViewFilter"]


@dataclass(frozen=True)
class Microscope:
    """Imaging constants: defocus (micrometres, positive = underfocus, one value for the
    series), voltage (kV), spherical aberration (mm), amplitude contrast, pixel size (A)."""

    defocus_um: float
    pixel_size_A: float
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07


class ViewFilter:
    """The CTF of positive-density views, ``H = -CTF`` (density views are negated images),
    applied to mean-free views with mirror padding (at most one pixel less than the view)."""

    def __init__(self, microscope: Microscope, shape_yx: tuple[int, int],
                 pad: int = 16) -> None:
        from ..simulation.imaging import ctf_2d

        self.pad = max(0, min(int(pad), shape_yx[0] - 1, shape_yx[1] - 1))
        self.shape = (shape_yx[0] + 2 * self.pad, shape_yx[1] + 2 * self.pad)
        m = microscope
        self.h = -ctf_2d(self.shape, m.pixel_size_A, m.defocus_um, m.voltage_kV, m.cs_mm,
                         m.amplitude_contrast)
        # 1D transfer of row averages: averaging over y keeps the ky = 0 line.
        self.h_rows = self.h[0]

    def _filter(self, views: np.ndarray, h: np.ndarray, transpose: bool = False
                ) -> np.ndarray:
        """Mirror-pad, filter, crop; or, transposed, embed, filter, fold the border back."""
        p = self.pad
        ny, nx = views.shape[1:]
        if transpose:
            padded = np.zeros((views.shape[0], *self.shape))
            padded[:, p:p + ny, p:p + nx] = views
        else:
            padded = np.pad(views, ((0, 0), (p, p), (p, p)), mode="reflect")
        out = np.fft.irfftn(np.fft.rfftn(padded, axes=(1, 2)) * h, s=self.shape, axes=(1, 2))
        if not transpose:
            return out[:, p:p + ny, p:p + nx]
        return _fold_mirror(_fold_mirror(out, p, axis=1), p, axis=2)

    def apply(self, views: np.ndarray) -> np.ndarray:
        """Filtered views (each view's mean removed first). [n, ny, nx]"""
        v = np.asarray(views, dtype=np.float64)
        return self._filter(v - v.mean(axis=(1, 2), keepdims=True), self.h).astype(views.dtype)

    def adjoint(self, grad: np.ndarray) -> np.ndarray:
        """The transpose of :meth:`apply`, for gradients. [n, ny, nx]"""
        g = self._filter(np.asarray(grad, dtype=np.float64), self.h, transpose=True)
        return (g - g.mean(axis=(1, 2), keepdims=True)).astype(grad.dtype)

    def phase_flip(self, views: np.ndarray) -> np.ndarray:
        """Views with the CTF's sign undone (IMOD's ctfphaseflip without strips): what a
        classical reconstruction of the seed wants. [n, ny, nx]"""
        out = np.empty(views.shape, dtype=np.float32)
        sign = np.sign(self.h)
        for t in range(views.shape[0]):
            v = np.asarray(views[t:t + 1], dtype=np.float64)
            out[t] = self._filter(v - v.mean(), sign)[0]
        return out

    def apply_rows(self, profiles: np.ndarray) -> np.ndarray:
        """The filter's effect on row averages (1D, along u). [..., nu]"""
        p = self.pad
        a = np.asarray(profiles, dtype=np.float64)
        a = a - a.mean(axis=-1, keepdims=True)
        nu = a.shape[-1]
        widths = [(0, 0)] * (a.ndim - 1) + [(p, p)]
        padded = np.pad(a, widths, mode="reflect")
        out = np.fft.irfft(np.fft.rfft(padded, axis=-1) * self.h_rows, n=self.shape[1], axis=-1)
        return out[..., p:p + nu]


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
