"""Residual misalignment of simulated views: what IMOD or AreTomo leave in an aligned stack.

A real "aligned" stack still carries errors: a pixel or two of shift per view, a fraction
of a degree of tilt-axis angle, tilt angles a little off the ones recorded. The simulator
puts them into its views so that an alignment refinement can be scored against the truth.

Convention (the module's and docs/conventions.md's)
---------------------------------------------------
Pixel indices ``(x, y)`` = (column, row), IMOD's centre ``c = (nx / 2, ny / 2)``, and
``R(a) = [[cos a, -sin a], [sin a, cos a]]`` (from +x towards +y, the row index). A point
of the specimen that a perfectly aligned view shows at ``p`` appears in the simulated view at

    R(axis_error) (p - c) + c + (shift_x, shift_y)

so a shift of ``+1`` px in X puts it one column further right (a higher column index),
and the view's tilt axis runs at ``axis_error`` degrees from Y, counted as IMOD's and
SerialEM's tilt axis angle. The IMOD ``.xf`` that corrects a view (maps the simulated
view to the aligned one, as ``newstack -xform`` and
:func:`~taichi_etgs.io.transforms.apply_xf` apply it) is its inverse, ``A = R(-axis_error)``,
``(DX, DY) = -A (shift_x, shift_y)``: for a pure shift, ``DX = -shift_x``, ``DY = -shift_y``.
This is AreTomo's ``.aln`` model with ``ROT = axis_error`` and ``(TX, TY)`` the shifts
(:func:`~taichi_etgs.io.transforms.aln_to_xf`).

A tilt-angle offset ``d`` projects the view at ``tilt + d`` while the ``.tlt`` keeps
``tilt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.transforms import apply_xf, invert_xf, rigid_xf

__all__ = ["Misalignment", "draw_misalignment", "misalign_views"]


@dataclass
class Misalignment:
    """The errors of each view (stack order).

    Attributes
    ----------
    shifts_xy_px: where each view's content sits relative to a perfect alignment, output
        pixels, (x, y). [n, 2]
    axis_error_deg: the views' tilt axis, degrees from Y (R(axis_error) turns them).
    tilt_offsets_deg: true tilt minus recorded tilt of each view. [n]
    """

    shifts_xy_px: np.ndarray
    axis_error_deg: float
    tilt_offsets_deg: np.ndarray

    @property
    def any(self) -> bool:
        """Whether the views differ at all from perfectly aligned ones."""
        return bool(self.axis_error_deg != 0 or np.any(self.shifts_xy_px)
                    or np.any(self.tilt_offsets_deg))

    def reach_px(self, shape_yx: tuple[int, int]) -> int:
        """Output pixels, at most, by which a view's content moves along X (its shift and
        its turn, corners included), plus the cubic spline's support: the margin a view
        is projected with so that what comes in from beyond its edge is specimen."""
        ny, nx = shape_yx
        a = np.radians(abs(float(self.axis_error_deg)))
        turn = 0.5 * ny * np.sin(a) + 0.5 * nx * (1.0 - np.cos(a))
        shift = float(np.abs(self.shifts_xy_px[:, 0]).max()) if self.shifts_xy_px.size else 0.0
        return int(np.ceil(shift + turn)) + 2

    def misaligning_xf(self) -> np.ndarray:
        """Perfect view -> simulated view, per view (IMOD form, output pixels). [n, 2, 3]"""
        return rigid_xf(self.axis_error_deg, self.shifts_xy_px)

    def correcting_xf(self) -> np.ndarray:
        """Simulated view -> perfect view: the ``.xf`` a perfect refinement writes. [n, 2, 3]"""
        return invert_xf(self.misaligning_xf())

    def to_dict(self) -> dict:
        """The truth as the simulation's JSON records it (``derived.misalignment``)."""
        xf = self.correcting_xf()
        return {
            "convention": "a point a perfectly aligned view shows at p appears at "
                          "R(axis_error_deg) (p - c) + c + shift, c = (nx/2, ny/2), "
                          "R turning from +x towards +y; correcting_xf is the IMOD .xf "
                          "(A11 A12 A21 A22 DX DY) that maps each view back",
            "axis_error_deg": float(self.axis_error_deg),
            "shifts_xy_px": self.shifts_xy_px.tolist(),
            "tilt_offsets_deg": self.tilt_offsets_deg.tolist(),
            # A11 A12 A21 A22 DX DY, as an .xf line
            "correcting_xf": xf[:, [0, 0, 1, 1, 0, 1], [0, 1, 0, 1, 2, 2]].tolist(),
        }


def draw_misalignment(n_views: int, rng: np.random.Generator, *, shift_sd_px: float = 0.0,
                      axis_error_deg: float = 0.0,
                      tilt_offset_sd_deg: float = 0.0) -> Misalignment:
    """Independent normal shifts (sd per axis) and tilt offsets for ``n_views`` views.

    The draws are always made, in a fixed order (shifts, then offsets), so that the shifts
    of a seed do not depend on whether offsets are asked for.
    """
    shifts = rng.standard_normal((n_views, 2)) * float(shift_sd_px)
    offsets = rng.standard_normal(n_views) * float(tilt_offset_sd_deg)
    return Misalignment(shifts, float(axis_error_deg), offsets)


def _upsampled_xf(xf: np.ndarray, factor: int) -> np.ndarray:
    """The transform in output pixels as it acts on a grid ``factor`` times finer.

    Fine pixel ``k`` covers the output pixel ``(k + 0.5) / f - 0.5``; IMOD's centres
    ``n / 2`` of the two grids are not the same point, hence the ``(I - A) h`` term,
    ``h = (f - 1) / 2``.
    """
    out = np.array(xf, dtype=np.float64)
    h = 0.5 * (factor - 1)
    out[..., 2] = factor * out[..., 2] + (np.eye(2) - out[..., :2]) @ np.array([h, h])
    return out


def misalign_views(views: np.ndarray, misalignment: Misalignment,
                   oversampling: int = 1) -> np.ndarray:
    """The views as the misaligned microscope shows them (see the module notes).

    views: noise-free projections, on the output detector (``oversampling`` 1) or on one
        ``oversampling`` times finer, each centred on its detector. [n, ny * f, nx * f]

    Cubic splines interpolate (the views are smooth projections, and noise comes
    after). Pixels from beyond the edge repeat the edge: the simulator projects its
    views with a margin along X (:meth:`Misalignment.reach_px`) and cuts it off after,
    so only rows along the tilt axis repeat, where ice and specimen continue; repeated
    columns would carry an isolated box's ice past its end.
    """
    xf = _upsampled_xf(misalignment.misaligning_xf(), int(oversampling))
    return apply_xf(views, xf, order=3, edge="nearest")
