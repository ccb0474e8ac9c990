"""Per-view shifts by matching each view to the prediction of all the other views.

The first stage of the alignment refinement (docs/method.md, "Alignment refinement").
View ``t`` is predicted by a weighted back-projection of every view but ``t``, projected
at ``t``'s tilt. Its own noise is then absent from its reference, which a reconstruction
of all views would carry back into it at low dose, and a WBP costs one back- and one
forward-projection. Because the WBP is linear, the predictions of all views come from one
reconstruction of all of them, less each view's own back-projected contribution.

Matching moves each view onto its prediction; the predictions then move too, since a
view's neighbours in tilt shape them most, so matching is repeated (up to 15 rounds).
Patterns of shifts that vary smoothly over the tilts are barely fixed by it, and each
round pulls the shifts a little towards zero so that they do not wander.

Each view's shift is measured twice, on the upper and on the lower half of its rows: the
projector treats each row (y) on its own, so the halves share neither noise nor
reference. Their disagreement measures the noise of the shifts; when the spread of the
shifts over the views is within what that noise gives, nothing is moved (aligned views,
or views that hold too little signal to align).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..classical.projector import VoxelProjector
from ..classical.wbp import filter_views, padded_length, ramp_filter
from ..geometry import angular_weights_rad, fov_padding
from .correlation import band_pass, correlation_shifts
from .matching import ViewAlignment, without_gauge

__all__ = ["OtherViewsPrediction", "match_to_other_views"]

# How many times the noise's share the spread of the shifts must be for them to be
# acted on: 3 is where the two halves' shifts correlate by 0.5 over the views, 3 standard
# errors for 40 views. Measured (median squares): views off by 1.5 px at 60-120 e/A^2
# 3.2-41, at white-noise SNR 0.03-1 2.1-156; aligned views with noise 0.6-2.7.
_SIGNIFICANCE = 3.0
# How far (pixels) a view's own back-projection reaches when projected again at its own
# tilt: one pixel each way at every tilt (the projector's linear footprints); two for margin.
_BAND = 2
# Each round pulls the shifts towards zero by this share. Matching alone does not fix
# patterns of shifts that vary smoothly over the tilts (neighbours predict each other), and
# small biases of the matching walked them off by pixels, while the residual shifts this
# stage is for are mostly independent from view to view.
_DAMPING = 0.1


class OtherViewsPrediction:
    """Predicts each view from all the other views (weighted back-projection, projected).

    tilts_deg: tilts. [n]
    shape_zyx: the tomogram's (nz, ny, nx); the reconstruction is widened in X so that
        tilted rays keep their path through the slab (:func:`~taichi_etgs.geometry.fov_padding`).
    n_u: the views' width (default nx).

    A view's own contribution, back-projected and projected again at its own tilt, acts
    on each detector row alike and only between pixels a few apart (the projector's
    footprints), so it is measured once per view as a band of ``2 _BAND + 1`` diagonals:
    a probe of ``2 _BAND + 1`` rows, row ``k`` a comb of unit pixels ``k, k + 2 _BAND + 1,
    ...``, back-projected and projected. Subtracting it costs a small product per round
    instead of two projections per view.
    """

    def __init__(self, tilts_deg: np.ndarray, shape_zyx: tuple[int, int, int],
                 n_u: int | None = None) -> None:
        nz, ny, nx = shape_zyx
        self.n_u = nx if n_u is None else int(n_u)
        self.tilts_deg = np.asarray(tilts_deg, dtype=np.float64)
        width = nx + 2 * fov_padding(nz, self.tilts_deg)
        self.projector = VoxelProjector(self.tilts_deg, (nz, ny, width), self.n_u)
        self.response = ramp_filter(padded_length(self.n_u))
        self.weights = angular_weights_rad(self.tilts_deg)
        period = 2 * _BAND + 1
        probe = np.zeros((1, period, self.n_u), np.float32)
        for k in range(period):
            probe[0, k, k::period] = 1.0
        u = np.arange(self.n_u)
        offsets = np.arange(-_BAND, _BAND + 1)
        source = u[:, None] + offsets[None, :]
        inside = (source >= 0) & (source < self.n_u)
        # band[t, u, d]: what pixel u + d - _BAND of view t adds to its pixel u.
        self.band = np.zeros((self.tilts_deg.size, self.n_u, period), np.float32)
        for t, tilt in enumerate(self.tilts_deg):
            single = VoxelProjector(np.array([tilt]), (nz, period, width), self.n_u)
            echo = single.forward(single.back(probe, self.weights[t:t + 1]))[0]
            self.band[t] = np.where(inside, echo[source % period, u[:, None]], 0.0)

    def __call__(self, views: np.ndarray) -> np.ndarray:
        """The prediction of each view from the others. [n, ny, n_u] -> [n, ny, n_u]"""
        filtered = filter_views(views, self.response)
        predicted = self.projector.forward(self.projector.back(filtered, self.weights))
        padded = np.pad(filtered, ((0, 0), (0, 0), (_BAND, _BAND)))
        for d in range(2 * _BAND + 1):
            predicted -= self.band[:, None, :, d] * padded[:, :, d:d + self.n_u]
        return predicted


def match_to_other_views(views: np.ndarray, tilts_deg: np.ndarray, thickness: int, *,
                         width: int | None = None, start: ViewAlignment | None = None,
                         high_sigma_px: float | None = None, low_sigma_px: float = 1.0,
                         max_shift_px: float = 6.0, rounds: int = 15,
                         tolerance_px: float = 0.01) -> ViewAlignment:
    """Per-view shifts that move each view onto the prediction of all the other views.

    Parameters
    ----------
    views: the views as given, positive density, best with the ice slab's projection
        removed (scale and offset do not matter). [n, ny, n_u]
    tilts_deg: their tilts. [n]
    thickness, width: the tomogram's NZ and NX (width None: n_u).
    start: the correction to start from (its axis angle is kept).
    high_sigma_px: the band-pass's high-pass sd (default ``max(4, thickness / 8)``).
    low_sigma_px: the band-pass's low-pass sd.
    max_shift_px: the largest residual shift looked for.
    rounds: the most matchings.
    tolerance_px: stop when no view would move by more.

    Returns
    -------
    The :class:`ViewAlignment` (``start``'s axis kept); its shifts hold none of the motions
    of a specimen translation. The start's when the first matching finds no shifts beyond
    its noise.
    """
    views = np.asarray(views, dtype=np.float32)
    n, ny, n_u = views.shape
    tilts_deg = np.asarray(tilts_deg, dtype=np.float64)
    start = start or ViewAlignment.identity(n)
    high = max(4.0, thickness / 8.0) if high_sigma_px is None else float(high_sigma_px)
    predict = OtherViewsPrediction(tilts_deg, (int(thickness), ny, width or n_u), n_u)
    halves = (slice(0, ny // 2), slice(ny // 2, ny))
    shifts = without_gauge(start.shifts_px, tilts_deg)
    if n <= 3 or ny < 2:
        # Too few views to leave the gauge any freedom, or too few rows for two halves.
        return dataclasses.replace(start, shifts_px=shifts)
    free = None
    for _ in range(rounds):
        corrected = ViewAlignment(shifts, start.axis_deg).apply(views)
        predicted = predict(corrected)
        first, second = (correlation_shifts(band_pass(corrected[:, rows], low_sigma_px, high),
                                            band_pass(predicted[:, rows], low_sigma_px, high),
                                            max_shift_px)[0] for rows in halves)
        if free is None:
            free = misaligned_axes(first, second)
            if not free.any():
                break
        step = 0.5 * (first + second) * free
        # Only the axes being aligned are pulled: a start's shifts along a frozen axis stay.
        shifts = without_gauge((shifts + step) / (1.0 + _DAMPING * free), tilts_deg)
        if np.abs(step).max() < tolerance_px:
            break
    return dataclasses.replace(start, shifts_px=shifts)


def misaligned_axes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Whether the views need moving along x and along y: where the spread over the views
    of the mean of two independent measurements of their shifts exceeds what noise alone
    would give, as their disagreement tells it (median squares). [2] bool

    ``(first - second) / 2`` has the noise of the mean ``(first + second) / 2``.
    """
    mean = 0.5 * (first + second)
    # Medians: one view's wrong peak (a few px off on noise) must not decide.
    noise = np.median((0.5 * (first - second)) ** 2, axis=0)
    spread = np.median(mean ** 2, axis=0)
    return spread > _SIGNIFICANCE * noise
