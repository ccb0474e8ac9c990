"""The geometry convention, pinned: where a point appears in the views, and how our
tomograms lie relative to IMOD's ``tilt`` output (README, "Conventions").

Ours: a point at centred voxel coordinates ``(x, y, z)`` appears at tilt ``theta`` at
detector column ``u = x cos(theta) + z sin(theta)``, row ``v = y``; volumes are (Z, Y, X).

IMOD's ``tilt`` (tilt.f90, its back-projection loop) puts output pixel ``(j, i)`` of the
slice at image row ``y`` (1-based column ``j`` along X, row ``i`` along the thickness) on
input column ``xproj = (j - xcen) cos(theta) - (i - ycen) sin(theta) + xcen_in``
("equations are written for rotations in the X/Z plane, viewed from the negative Y axis",
so the sine is negated), and by default writes each slice as one section: the file is
(Y, thickness, X), the thickness along the file's Y. Hence our ``+z`` is IMOD's row ``i``
counted downwards, and our (Z, Y, X) volume is IMOD's output turned by ``trimvol -rx``
(``clip rotx``, tilt's ``RotateBy90``: a rotation by -90 degrees about X, which keeps the
handedness): ``ours[k, y, x] == imod[y, nz - 1 - k, x]``. ``trimvol -yz`` (a flip of Y
and Z) gives the mirror image.

The IMOD side is written out below in numpy from those equations.
"""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.classical.projector import back_project, forward_project
from taichi_etgs.classical.wbp import weighted_back_projection
from taichi_etgs.geometry import centred_coordinates

TILTS = np.arange(-60.0, 61.0, 10.0)
SHAPE = (16, 4, 32)  # nz, ny, nx: an even thickness, where IMOD's centre is ours
POINT_XZ = (5.5, 3.5)  # a voxel centre (centred coordinates): +x, +z


def _point_volume() -> np.ndarray:
    """A small Gaussian blob (sigma 0.7 voxel) at +x, +z, in every Y row."""
    nz, ny, nx = SHAPE
    z = centred_coordinates(nz)[:, None]
    x = centred_coordinates(nx)[None, :]
    px, pz = POINT_XZ
    plane = np.exp(-((x - px) ** 2 + (z - pz) ** 2) / (2 * 0.7 ** 2))
    return np.broadcast_to(plane[:, None, :], SHAPE).astype(np.float32).copy()


def _peak_position(profile: np.ndarray) -> float:
    """Centred coordinate of a 1D profile's peak (parabolic refinement)."""
    k = int(np.argmax(profile))
    if 0 < k < profile.size - 1:
        a, b, c = profile[k - 1:k + 2]
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return k + 0.5 - profile.size / 2


def imod_tilt_backprojection(views: np.ndarray, tilts_deg: np.ndarray,
                             thickness: int) -> np.ndarray:
    """Plain back-projection as IMOD's ``tilt`` computes it, in its default output layout
    (each image row Y one section of X by thickness). [ny, thickness, nx]"""
    n_views, ny, nx = views.shape
    xcen_out = nx / 2 + 0.5  # 1-based centres, as in tilt.f90
    xcen_in = nx / 2 + 0.5
    ycen_out = thickness // 2 + 0.5
    out = np.zeros((ny, thickness, nx))
    columns = np.arange(1, nx + 1)
    for view, theta in zip(views, np.deg2rad(tilts_deg)):
        cos_beta, sin_beta = np.cos(theta), -np.sin(theta)  # the sine is negated
        for i in range(1, thickness + 1):
            zpart = (i - ycen_out) * sin_beta + xcen_in
            xproj = zpart + (columns - xcen_out) * cos_beta  # 1-based input column
            left = np.floor(xproj).astype(int)
            frac = xproj - left
            inside = (left >= 1) & (left + 1 <= nx)
            for y in range(ny):
                line = view[y]
                value = np.zeros(nx)
                value[inside] = ((1 - frac[inside]) * line[left[inside] - 1]
                                 + frac[inside] * line[left[inside]])
                out[y, i - 1] += value
    return out


def imod_to_ours(imod: np.ndarray) -> np.ndarray:
    """``trimvol -rx`` of IMOD's (Y, thickness, X) output: our (Z, Y, X)."""
    return np.ascontiguousarray(imod.transpose(1, 0, 2)[::-1])


def test_a_point_at_plus_x_plus_z_appears_at_x_cos_plus_z_sin(taichi_cpu):
    views = forward_project(_point_volume(), TILTS)
    px, pz = POINT_XZ
    for view, theta in zip(views, np.deg2rad(TILTS)):
        expected = px * np.cos(theta) + pz * np.sin(theta)
        assert _peak_position(view[0]) == pytest.approx(expected, abs=0.15)
    # +30 and -30 degrees put it apart by 2 z sin(30) = z: the sign is seen.
    at = {t: _peak_position(v[0]) for t, v in zip(TILTS, views)}
    assert at[30.0] - at[-30.0] == pytest.approx(pz, abs=0.3)


def test_wbp_puts_the_point_back_where_it_was(taichi_cpu):
    volume = _point_volume()
    tomogram = weighted_back_projection(forward_project(volume, TILTS), TILTS, SHAPE[0])
    k, x = np.unravel_index(np.argmax(tomogram[:, 1]), tomogram[:, 1].shape)
    assert (centred_coordinates(SHAPE[0])[k], centred_coordinates(SHAPE[2])[x]) \
        == (POINT_XZ[1], POINT_XZ[0])


def test_our_volumes_are_imod_tilt_output_after_trimvol_rx(taichi_cpu):
    volume = _point_volume()
    views = forward_project(volume, TILTS)
    imod = imod_tilt_backprojection(views, TILTS, SHAPE[0])
    ours = back_project(views, TILTS, SHAPE[0])
    # IMOD's default output: the point's row within each XZ section is counted down from
    # the centre (our +z is its -row).
    imod_row = _peak_position(imod[1].max(axis=1))
    assert imod_row == pytest.approx(-POINT_XZ[1], abs=0.2)
    # After trimvol -rx the two back-projections are one volume (up to Joseph's weights).
    turned = imod_to_ours(imod)
    assert np.corrcoef(turned.ravel(), ours.ravel())[0, 1] > 0.98
    # The flip (trimvol -yz) is the mirror image: it does not match.
    flipped = np.ascontiguousarray(imod.transpose(1, 0, 2))
    assert np.corrcoef(flipped.ravel(), ours.ravel())[0, 1] < 0.8
    k = np.unravel_index(np.argmax(turned[:, 1]), turned[:, 1].shape)[0]
    assert centred_coordinates(SHAPE[0])[k] == POINT_XZ[1]
