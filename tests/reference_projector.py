"""Plain numpy reference of the voxel projector: the explicit system matrix of one Y row.

Slow (dense matrix) and only for tiny problems; it states Joseph's model in its
transposed form, which the kernels must reproduce both ways.
"""

from __future__ import annotations

import numpy as np

from taichi_etgs.geometry import centred_coordinates


def system_matrix(tilts_deg: np.ndarray, nz: int, nx: int, n_u: int) -> np.ndarray:
    """Matrix A with views_row = A @ slice.ravel(). [n_tilts * n_u, nz * nx]

    Weight of voxel (z, x) in pixel j at tilt t: ``(1 - |u_j - u_c| / m) / m`` for
    ``|u_j - u_c| < m``, ``u_c = x cos + z sin``, ``m = max(|cos|, |sin|)``.
    """
    theta = np.deg2rad(np.asarray(tilts_deg, dtype=np.float64))
    zc = centred_coordinates(nz)[:, None]
    xc = centred_coordinates(nx)[None, :]
    uj = centred_coordinates(n_u)
    rows = []
    for c, s in zip(np.cos(theta), np.sin(theta)):
        m = max(abs(c), abs(s))
        uc = (xc * c + zc * s).ravel()
        d = np.abs(uj[:, None] - uc[None, :]) / m
        rows.append(np.clip(1.0 - d, 0.0, None) / m)
    return np.concatenate(rows, axis=0)


def forward_reference(volume_zyx: np.ndarray, tilts_deg: np.ndarray,
                      n_u: int | None = None) -> np.ndarray:
    """Projections [n_tilts, ny, n_u] of a volume [nz, ny, nx] with the dense matrix."""
    nz, ny, nx = volume_zyx.shape
    n_u = nx if n_u is None else n_u
    a = system_matrix(tilts_deg, nz, nx, n_u)
    out = np.empty((len(tilts_deg), ny, n_u))
    for y in range(ny):
        out[:, y, :] = (a @ volume_zyx[:, y, :].astype(np.float64).ravel()).reshape(-1, n_u)
    return out


def back_reference(views: np.ndarray, tilts_deg: np.ndarray, nz: int,
                   nx: int | None = None) -> np.ndarray:
    """Adjoint of :func:`forward_reference`. [n_tilts, ny, n_u] -> [nz, ny, nx]"""
    n_tilts, ny, n_u = views.shape
    nx = n_u if nx is None else nx
    a = system_matrix(tilts_deg, nz, nx, n_u)
    out = np.empty((nz, ny, nx))
    for y in range(ny):
        out[:, y, :] = (a.T @ views[:, y, :].astype(np.float64).ravel()).reshape(nz, nx)
    return out
