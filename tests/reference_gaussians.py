"""Plain numpy references for the Gaussian projector and voxeliser (slow, float64, dense).

Each function evaluates the formulas of docs/method.md ("Forward model") and of the
kernels' docstrings directly, on every pixel or
voxel, for tiny test problems. Only the activations come from the package
(:mod:`taichi_etgs.gaussian.params`, numpy only); the geometry is written out again here from
docs/conventions.md with an explicit rotation matrix, independently of the kernels'
hand-expanded algebra.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from taichi_etgs.gaussian.params import GaussianParams
from taichi_etgs.geometry import centred_coordinates

PROJECTOR_CUTOFF_SIGMA = 3.5
VOXEL_CUTOFF_SIGMA = 4.0


def rotation_y(tilt_deg: float) -> np.ndarray:
    """Matrix taking specimen (x, y, z) to (u, v, w): u = x cos + z sin, v = y, w = beam. [3, 3]"""
    t = np.deg2rad(tilt_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _activated(params: GaussianParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = params.astype(np.float64)
    return p.means_xyz, p.covariances(), p.densities()


def projected_gaussians_reference(params: GaussianParams, tilt_deg: float,
                                  pixel_area: bool = True
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projected centres [N, 2] (u, v), 2D covariances [N, 2, 2] and peak values [N].

    Without ``pixel_area`` the values are the exact line integrals at a point,
    ``rho sqrt(2 pi det(Sigma) / det(Sigma2)) exp(-1/2 d^T Sigma2^-1 d)``; with it the
    covariance gets I/12 and the amplitude ``sqrt(det Sigma2 / det Sigma2')``.
    """
    mu, sigma, rho = _activated(params)
    m = rotation_y(tilt_deg)
    mu_r = mu @ m.T
    sigma_r = np.einsum("ij,njk,lk->nil", m, sigma, m)
    m_uv = mu_r[:, :2]
    cov2 = sigma_r[:, :2, :2]
    amp = rho * np.sqrt(2 * np.pi * np.linalg.det(sigma) / np.linalg.det(cov2))
    if pixel_area:
        cov2b = cov2 + np.eye(2) / 12.0
        amp = amp * np.sqrt(np.linalg.det(cov2) / np.linalg.det(cov2b))
        cov2 = cov2b
    return m_uv, cov2, amp


def render_2d_reference(m_uv: np.ndarray, cov2: np.ndarray, amp: np.ndarray, ny: int, nu: int,
                        cutoff_sigma: float | None = PROJECTOR_CUTOFF_SIGMA) -> np.ndarray:
    """One image per 2D Gaussian, sampled at pixel centres, cut at ``cutoff_sigma``. [N, ny, nu]"""
    v, u = np.meshgrid(centred_coordinates(ny), centred_coordinates(nu), indexing="ij")
    d = np.stack([u[None] - m_uv[:, 0, None, None], v[None] - m_uv[:, 1, None, None]], -1)
    q = np.einsum("nyxi,nij,nyxj->nyx", d, np.linalg.inv(cov2), d)
    img = amp[:, None, None] * np.exp(-0.5 * q)
    if cutoff_sigma is not None:
        img[q > cutoff_sigma ** 2] = 0.0
    return img


def project_gaussians_reference(params: GaussianParams, tilts_deg: Sequence[float], ny: int,
                                nu: int, cutoff_sigma: float | None = PROJECTOR_CUTOFF_SIGMA,
                                pixel_area: bool = True) -> np.ndarray:
    """Views of the Gaussians, as the kernel defines them. [n_tilts, ny, nu]"""
    out = np.zeros((len(tilts_deg), ny, nu))
    for t, tilt in enumerate(tilts_deg):
        m_uv, cov2, amp = projected_gaussians_reference(params, tilt, pixel_area)
        out[t] = render_2d_reference(m_uv, cov2, amp, ny, nu, cutoff_sigma).sum(0)
    return out


def field_reference(params: GaussianParams, points_xyz: np.ndarray, extra_variance: float = 0.0,
                    cutoff_sigma: float | None = None) -> np.ndarray:
    """Field at points; with ``extra_variance`` the box-averaged (blurred, mass-kept) one. [P]

    points_xyz: sample positions (x, y, z). [P, 3]
    """
    mu, sigma, rho = _activated(params)
    sigma_b = sigma + extra_variance * np.eye(3)
    amp = rho * np.sqrt(np.linalg.det(sigma) / np.linalg.det(sigma_b))
    inv = np.linalg.inv(sigma_b)
    out = np.zeros(len(points_xyz))
    for g in range(len(rho)):
        d = points_xyz - mu[g]
        q = np.einsum("pi,ij,pj->p", d, inv[g], d)
        f = amp[g] * np.exp(-0.5 * q)
        if cutoff_sigma is not None:
            f[q > cutoff_sigma ** 2] = 0.0
        out += f
    return out


def voxel_centres(shape_zyx: Sequence[int], voxel_size: float = 1.0,
                  origin_xyz: Sequence[float] | None = None) -> np.ndarray:
    """Centres (x, y, z) of the voxels of a grid, in C order of (z, y, x). [nz*ny*nx, 3]"""
    nz, ny, nx = shape_zyx
    o = np.zeros(3) if origin_xyz is None else np.asarray(origin_xyz, dtype=np.float64)
    z, y, x = np.meshgrid(centred_coordinates(nz) * voxel_size + o[2],
                          centred_coordinates(ny) * voxel_size + o[1],
                          centred_coordinates(nx) * voxel_size + o[0], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], -1)


def voxelize_gaussians_reference(params: GaussianParams, shape_zyx: Sequence[int],
                                 voxel_size: float = 1.0,
                                 origin_xyz: Sequence[float] | None = None,
                                 cutoff_sigma: float | None = VOXEL_CUTOFF_SIGMA) -> np.ndarray:
    """Box-averaged field on the grid, as the kernel defines it. [nz, ny, nx]"""
    pts = voxel_centres(shape_zyx, voxel_size, origin_xyz)
    vals = field_reference(params, pts, voxel_size ** 2 / 12.0, cutoff_sigma)
    return vals.reshape(tuple(shape_zyx))


def line_integral_bruteforce(params: GaussianParams, tilt_deg: float, ny: int, nu: int,
                             half_length: float, step: float = 0.05,
                             subpixels: int = 1) -> np.ndarray:
    """Numerical line integral of the (unblurred, uncut) field along the beam. [ny, nu]

    For each detector point ``(u, v)`` the ray ``w`` in [-half_length, half_length] is
    sampled with the midpoint rule, specimen points ``(x, y, z) = (u cos - w sin, v,
    u sin + w cos)`` (the inverse of :func:`rotation_y`). With ``subpixels = S`` each pixel
    is the mean over S x S points spread evenly over its area (a box-integrating pixel).
    """
    c, s = np.cos(np.deg2rad(tilt_deg)), np.sin(np.deg2rad(tilt_deg))
    w = np.arange(-half_length + step / 2, half_length, step)
    offs = (np.arange(subpixels) + 0.5) / subpixels - 0.5
    out = np.zeros((ny, nu))
    vc, uc = centred_coordinates(ny), centred_coordinates(nu)
    for dv in offs:
        for du in offs:
            v, u, ww = np.meshgrid(vc + dv, uc + du, w, indexing="ij")
            pts = np.stack([(u * c - ww * s).ravel(), v.ravel(), (u * s + ww * c).ravel()], -1)
            f = field_reference(params, pts).reshape(ny, nu, w.size)
            out += f.sum(-1) * step
    return out / subpixels ** 2


def image_space_grads_reference(params: GaussianParams, tilts_deg: Sequence[float],
                                grad_views: np.ndarray, eps: float = 1e-5
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Per view, dL/d(u, v) of each projected centre for ``L = sum(grad_views * views)``.

    Central finite differences of :func:`render_2d_reference` with respect to the 2D
    centre, one Gaussian at a time (L is linear in each Gaussian's image).

    Returns
    -------
    grads_uv: dL/d(u, v) in pixel units. [N, n_tilts, 2]
    visible: whether any pixel of the footprint lies on the detector. [N, n_tilts]
    """
    n_t, ny, nu = grad_views.shape
    n = params.n
    grads = np.zeros((n, n_t, 2))
    visible = np.zeros((n, n_t), dtype=bool)
    for t, tilt in enumerate(tilts_deg):
        m_uv, cov2, amp = projected_gaussians_reference(params, tilt)
        for g in range(n):
            img = render_2d_reference(m_uv[g:g + 1], cov2[g:g + 1], amp[g:g + 1], ny, nu)
            visible[g, t] = bool(np.any(img > 0))
            for k in range(2):
                losses = []
                for sign in (1.0, -1.0):
                    m = m_uv[g:g + 1].copy()
                    m[0, k] += sign * eps
                    losses.append(np.sum(grad_views[t] * render_2d_reference(
                        m, cov2[g:g + 1], amp[g:g + 1], ny, nu)))
                grads[g, t, k] = (losses[0] - losses[1]) / (2 * eps)
    return grads, visible
