"""The microscope's contrast transfer in the Gaussian reconstruction's forward model.

Raw views are the specimen's projections filtered by the contrast transfer function (CTF):
at a few micrometres of underfocus its first zero falls inside the band users care about,
and beyond it contrast flips. Positive Gaussians cannot represent a CTF-filtered tomogram
(its lobes are negative), so the filter belongs in the forward model: each rendered view is
filtered with its view's CTF before the loss, the gradient flows back through the same
filter (the CTF is real and even, so the filter is its own adjoint), and the model stays
the specimen's potential (docs/method.md, "Contrast transfer").

Views are filtered after removing their mean (the per-view offset carries it) and with
zero padding against wrap-around, so the operator is linear and its transpose is the same
chain in reverse: :meth:`ViewFilter.apply` and :meth:`ViewFilter.adjoint`.
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
    applied to mean-free views with zero padding."""

    def __init__(self, microscope: Microscope, shape_yx: tuple[int, int],
                 pad: int = 16) -> None:
        from .noise import ctf_2d

        self.pad = int(pad)
        self.shape = (shape_yx[0] + 2 * self.pad, shape_yx[1] + 2 * self.pad)
        m = microscope
        self.h = -ctf_2d(self.shape, m.pixel_size_A, m.defocus_um, m.voltage_kV, m.cs_mm,
                         m.amplitude_contrast)
        # 1D transfer of row averages: averaging over y keeps the ky = 0 line.
        self.h_rows = self.h[0]

    def _filter(self, views: np.ndarray, h: np.ndarray) -> np.ndarray:
        p = self.pad
        ny, nx = views.shape[1:]
        padded = np.zeros((views.shape[0], *self.shape))
        padded[:, p:p + ny, p:p + nx] = views
        out = np.fft.irfftn(np.fft.rfftn(padded, axes=(1, 2)) * h, s=self.shape, axes=(1, 2))
        return out[:, p:p + ny, p:p + nx]

    def apply(self, views: np.ndarray) -> np.ndarray:
        """Filtered views (each view's mean removed first). [n, ny, nx]"""
        v = np.asarray(views, dtype=np.float64)
        return self._filter(v - v.mean(axis=(1, 2), keepdims=True), self.h).astype(views.dtype)

    def adjoint(self, grad: np.ndarray) -> np.ndarray:
        """The transpose of :meth:`apply`, for gradients. [n, ny, nx]"""
        g = self._filter(np.asarray(grad, dtype=np.float64), self.h)
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
        padded = np.zeros((*a.shape[:-1], self.shape[1]))
        padded[..., p:p + nu] = a
        out = np.fft.irfft(np.fft.rfft(padded, axis=-1) * self.h_rows, n=self.shape[1], axis=-1)
        return out[..., p:p + nu]
