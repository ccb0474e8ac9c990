"""Single-axis tilt geometry: the reference formulas of docs/conventions.md ("Geometry").

A point ``(x, y, z)`` in centred voxel coordinates lands at tilt ``theta`` on detector
``(u, v) = (x cos(theta) + z sin(theta), y)``: the specimen turns by ``+theta`` about ``+Y``
and the beam runs along Z. Voxel ``i`` of an axis of length ``n`` sits at ``i + 0.5 - n/2``;
detector pixels likewise. Everything here is in voxel units and degrees.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "centred_coordinates",
    "project_point",
    "angular_weights_rad",
    "missing_wedge_deg",
    "fov_padding",
]


def centred_coordinates(n: int) -> np.ndarray:
    """Centres of the ``n`` voxels (or pixels) of one axis, in voxel units. [n]"""
    return np.arange(n, dtype=np.float64) + 0.5 - n / 2.0


def project_point(x: np.ndarray | float, y: np.ndarray | float, z: np.ndarray | float,
                  tilt_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Detector position ``(u, v)`` of specimen point ``(x, y, z)`` at the given tilt.

    The reference statement of the convention that every kernel must reproduce.
    """
    theta = np.deg2rad(tilt_deg)
    u = np.asarray(x) * np.cos(theta) + np.asarray(z) * np.sin(theta)
    return u, np.broadcast_to(np.asarray(y, dtype=np.float64), np.shape(u)).copy()


def angular_weights_rad(tilts_deg: np.ndarray) -> np.ndarray:
    """Angular interval each view stands for, in radians. [n_tilts]

    Half the distance to each neighbour in sorted order; the end views take their inner
    half-interval twice. For views evenly spaced over 180 deg this is ``pi / n_tilts``, the
    weight of the filtered back-projection integral. Views at one angle share its interval.
    """
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    if tilts.size == 0:
        raise ValueError("no tilts")
    unique, inverse, counts = np.unique(np.round(tilts, 6), return_inverse=True,
                                        return_counts=True)
    if unique.size == 1:
        return np.full(tilts.size, np.pi / tilts.size)  # nothing to integrate over
    rad = np.deg2rad(unique)
    gaps = np.diff(rad)
    left = np.concatenate([[gaps[0]], gaps])
    right = np.concatenate([gaps, [gaps[-1]]])
    wrap = np.pi - np.ptp(rad)
    if abs(wrap - np.mean(gaps)) < 0.01 * np.mean(gaps):
        # An even 180 deg scan wraps around: its ends are neighbours.
        left[0] = right[-1] = wrap
    return (0.5 * (left + right))[inverse] / counts[inverse]


def missing_wedge_deg(tilts_deg: np.ndarray) -> float:
    """Angular size of the unmeasured wedge: 180 minus the tilt range, in degrees."""
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    return float(max(0.0, 180.0 - np.ptp(tilts)))


def fov_padding(thickness: int, tilts_deg: np.ndarray, max_tilt_deg: float = 80.0) -> int:
    """Voxels to add on each side of X so that every ray keeps its whole path in the slab.

    At tilt ``theta`` a ray crosses the slab of thickness ``T`` over ``T tan(theta)`` in X,
    so rays that land near the detector's edges pass through specimen outside the
    tomogram's box, as in every real tilt series. Iterative methods confined to the box
    would pile that material onto the box's sides; reconstructing on a grid widened by
    ``T/2 tan(max |theta|)`` per side (tilts capped at ``max_tilt_deg``) and cropping avoids it.
    """
    tilt = min(float(np.max(np.abs(tilts_deg))), max_tilt_deg)
    return int(np.ceil(0.5 * thickness * np.tan(np.deg2rad(tilt))))
