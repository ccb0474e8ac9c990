"""Residual alignment by projection matching: per-view shifts and the tilt-axis angle.

Views aligned by IMOD or AreTomo keep errors of a pixel or two and a fraction of a degree
of tilt-axis angle. A reconstruction predicts what each view should look like; the
correction that best maps each view as given onto its prediction is found by
Gauss-Newton on the low-passed images (docs/method.md, "Alignment refinement").

A correction is an IMOD ``.xf`` transform per view (:mod:`taichi_etgs.io.transforms`):
view ``t`` is rotated by ``axis_deg`` about its centre, then moved by ``shifts_px[t]``.
Three motions of all views together are not fixed by the data, because a translation of
the specimen produces them (X shifts ``a cos(tilt) + b sin(tilt)``, one Y shift for all);
the refinement keeps its shifts free of them, so the reconstruction does not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io.transforms import apply_xf, rigid_xf

__all__ = ["ViewAlignment", "match_views", "without_gauge"]

# A finite difference of the axis angle: large enough to move the image corners by a
# fraction of a pixel, small enough to stay linear.
_AXIS_STEP_DEG = 0.25


@dataclass
class ViewAlignment:
    """A correction of the views as given: rotate by ``axis_deg``, then move by ``shifts_px``.

    shifts_px: (dx, dy) per view, pixels: content moves towards +x / +y (higher column /
        row), as an ``.xf`` DX / DY does. [n, 2]
    axis_deg: in-plane rotation of every view about its centre, degrees, as an ``.xf``
        matrix ``[[cos, -sin], [sin, cos]]`` of that angle does.
    axis_left: why the tilt-axis angle was left as it started instead of being estimated
        from the views, for the user; "" where it was estimated or nothing is known.
    """

    shifts_px: np.ndarray
    axis_deg: float = 0.0
    axis_left: str = ""

    @classmethod
    def identity(cls, n_views: int) -> ViewAlignment:
        return cls(np.zeros((n_views, 2)), 0.0)

    def xf(self) -> np.ndarray:
        """The correction as IMOD ``.xf`` transforms ``[[A11, A12, DX], [A21, A22, DY]]``.
        [n, 2, 3]"""
        return rigid_xf(self.axis_deg, self.shifts_px)

    def apply(self, views: np.ndarray) -> np.ndarray:
        """The corrected views. [n, ny, nx]

        Cubic splines: bilinear interpolation blurs a view by up to half a pixel depending
        on its shift, and that blur, not the alignment, would decide comparisons between
        corrections. Outside the view: its nearest edge pixel.
        """
        return apply_xf(views, self.xf(), order=3, edge="nearest")

    def to_dict(self) -> dict:
        return {"axis_deg": float(self.axis_deg),
                "shifts_px": np.asarray(self.shifts_px, dtype=float).round(4).tolist(),
                **({"axis_left": self.axis_left} if self.axis_left else {})}


def _gauge(tilts_deg: np.ndarray) -> np.ndarray:
    """Rows spanning the shift patterns a specimen translation makes, over the unknowns
    ``(axis, dx_0, dy_0, dx_1, ...)``. [3, 1 + 2 n]"""
    n = len(tilts_deg)
    rad = np.radians(tilts_deg)
    c = np.zeros((3, 1 + 2 * n))
    c[0, 1::2] = np.cos(rad)
    c[1, 1::2] = np.sin(rad)
    c[2, 2::2] = 1.0
    return c


def _interior(shape: tuple[int, int]) -> tuple[slice, slice]:
    """The part of a view scored: its borders take fill values after a correction (at most
    a quarter of each side, so that a tiny view keeps pixels to score)."""
    ny, nx = shape
    by, bx = (min(max(4, n // 10), (n - 1) // 4) for n in (ny, nx))
    return slice(by, ny - by), slice(bx, nx - bx)


def _centred(images: np.ndarray) -> np.ndarray:
    return images - images.mean(axis=(1, 2), keepdims=True)


def match_views(views: np.ndarray, predicted: np.ndarray, tilts_deg: np.ndarray,
                start: ViewAlignment | None = None, *, fit_axis: bool = True,
                sigma_px: float = 1.5, steps: int = 3, max_shift_step_px: float = 2.0,
                max_axis_step_deg: float = 1.0) -> ViewAlignment:
    """The correction of ``views`` that best matches ``predicted`` (Gauss-Newton).

    Parameters
    ----------
    views: the views as given. [n, ny, nx]
    predicted: what a reconstruction predicts for them, in the same units (gain and
        offset do not matter: each view's mean is removed). [n, ny, nx]
    tilts_deg: tilt angles (for the motions a specimen translation makes). [n]
    start: the correction to refine (default none).
    fit_axis: also refine the tilt-axis angle (one for all views). The fit then also
        takes the in-plane deformations a model fitted to views turned by a wrong axis
        shows (:func:`_model_deformations`), which are not applied: without them the
        model's own turn pulls the axis towards the one it was fitted at.
    sigma_px: the images are low-passed with a Gaussian of this sd first: alignment lives
        in the low frequencies, and noise in the high ones.
    steps: Gauss-Newton steps.
    max_shift_step_px, max_axis_step_deg: the most one step moves (a linearisation is
        only trusted so far).

    Returns
    -------
    The refined :class:`ViewAlignment` (``start``'s ``axis_left`` kept unless
    ``fit_axis``); its shifts hold none of the motions of a specimen translation.
    """
    views = np.asarray(views, dtype=np.float32)
    n, ny, nx = views.shape
    tilts_deg = np.asarray(tilts_deg, dtype=np.float64)
    current = start or ViewAlignment.identity(n)
    inner = (slice(None), *_interior((ny, nx)))
    smooth = (0.0, sigma_px, sigma_px)
    target = _centred(ndimage.gaussian_filter(np.asarray(predicted, np.float32), smooth)[inner])
    for _ in range(steps):
        aligned = ndimage.gaussian_filter(current.apply(views), smooth)
        residual = _centred(aligned[inner]) - target
        grad_y, grad_x = np.gradient(aligned, axis=(1, 2))
        grad_y, grad_x = grad_y[inner], grad_x[inner]
        # Moving the content by +d changes the image by -d . grad.
        jac = [_centred(-grad_x), _centred(-grad_y)]
        if fit_axis:
            turned = [ndimage.gaussian_filter(
                ViewAlignment(current.shifts_px, current.axis_deg + sign * _AXIS_STEP_DEG
                              ).apply(views), smooth)[inner] for sign in (1.0, -1.0)]
            axis = _centred((turned[0] - turned[1]) / (2 * _AXIS_STEP_DEG))
            common = [axis, *_model_deformations(grad_x, grad_y, tilts_deg, (ny, nx))]
        else:
            common = []
        hessian, gradient = _normal_equations(common, jac, residual)
        ridge = 1e-3 * float(np.mean(np.diag(hessian))) + 1e-12
        hessian[np.diag_indices_from(hessian)] += ridge
        delta = np.linalg.solve(hessian, -gradient)
        axis_step = float(np.clip(delta[0], -max_axis_step_deg, max_axis_step_deg)
                          ) if fit_axis else 0.0
        shift_step = np.clip(delta[len(common):].reshape(n, 2), -max_shift_step_px,
                             max_shift_step_px)
        current = ViewAlignment(current.shifts_px + shift_step, current.axis_deg + axis_step,
                                current.axis_left)
    return ViewAlignment(without_gauge(current.shifts_px, tilts_deg), current.axis_deg,
                         "" if fit_axis else current.axis_left)


def _model_deformations(grad_x: np.ndarray, grad_y: np.ndarray, tilts_deg: np.ndarray,
                        shape: tuple[int, int]) -> list[np.ndarray]:
    """How the scored part of the views changes under the in-plane deformations that a
    model fitted to views turned by a wrong axis takes up (docs/method.md, "Alignment
    refinement"): a turn of the specimen about Z moves a view's content by
    ``(-v cos(tilt), u / cos(tilt))`` near the specimen's mid-plane, against the views'
    own turn ``(-v, u)``; a Y-Z shear adds ``v sin(tilt)`` along X. ``(u, v)``: detector
    coordinates from the view's centre, in view widths. Three fields, one coefficient
    each for all views."""
    ny, nx = shape
    rows, cols = _interior(shape)
    v = ((np.arange(ny, dtype=np.float64) - (ny - 1) / 2) / ny)[rows][None, :, None]
    u = ((np.arange(nx, dtype=np.float64) - (nx - 1) / 2) / nx)[cols][None, None, :]
    rad = np.radians(tilts_deg)[:, None, None]
    return [_centred(-grad_y * u / np.cos(rad)), _centred(-grad_x * v * np.cos(rad)),
            _centred(-grad_x * v * np.sin(rad))]


def without_gauge(shifts_px: np.ndarray, tilts_deg: np.ndarray) -> np.ndarray:
    """The shifts less their least-squares fit by the motions a specimen translation
    makes (removed after the fit, not constrained in it: the fit weighs views by their
    detail, which would pile the constraint onto views with little). [n, 2]"""
    basis = _gauge(tilts_deg)[:, 1:].T
    flat = np.asarray(shifts_px, dtype=np.float64).ravel()
    flat = flat - basis @ np.linalg.lstsq(basis, flat, rcond=None)[0]
    return flat.reshape(-1, 2)


def _normal_equations(jac_common: list[np.ndarray], jac_shift: list[np.ndarray],
                      residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``J^T J`` and ``J^T r`` over the unknowns ``(c_0, .., c_k, dx_0, dy_0, dx_1, ...)``:
    each ``c`` (the axis, a deformation) couples to every view, each shift to its own view
    only."""
    n, k = residual.shape[0], len(jac_common)

    def dot(a, b):
        return np.einsum("tyx,tyx->t", a, b, dtype=np.float64)

    hessian = np.zeros((k + 2 * n, k + 2 * n))
    gradient = np.zeros(k + 2 * n)
    for i, ci in enumerate(jac_common):
        gradient[i] = dot(ci, residual).sum()
        for j, cj in enumerate(jac_common):
            hessian[i, j] = dot(ci, cj).sum()
    for i, ji in enumerate(jac_shift):
        cols = np.arange(n) * 2 + k + i
        gradient[cols] = dot(ji, residual)
        for c, jc in enumerate(jac_common):
            hessian[c, cols] = hessian[cols, c] = dot(jc, ji)
        for j, jj in enumerate(jac_shift):
            hessian[cols, np.arange(n) * 2 + k + j] = dot(ji, jj)
    return hessian, gradient
