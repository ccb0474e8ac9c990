"""Voxeliser: the Gaussian field sampled (box-averaged) on a voxel grid, and its backward.

The field is ``f(x) = sum_i rho_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))``
(activations in :mod:`taichi_etgs.gaussian.params`). A voxel of edge ``h`` (``voxel_size``, in
the model's voxel units) holds the mean of ``f`` over its cube, approximated like the
projector's pixels: a box of width ``h`` has variance ``h^2 / 12`` per axis, so
``Sigma' = Sigma + (h^2 / 12) I`` and the amplitude is rescaled by
``sqrt(det Sigma / det Sigma')`` to keep the mass:

    value(x) = rho * s_x s_y s_z / sqrt(det Sigma') * exp(-1/2 d^T Sigma'^-1 d),  d = x - mu

so ``sum(volume) * h^3`` is the total mass and, at ``h = 1``, summing a volume along Z gives
the projector's 0-degree view. Grid: volume ``(nz, ny, nx)``; voxel ``(k, j, i)`` is centred
at ``origin_xyz + ((i, j, k) + 0.5 - (nx, ny, nz) / 2) * h``; the default origin (0, 0, 0)
gives the centred grid of the tomogram (docs/conventions.md, "Geometry").

Footprints are cut at Mahalanobis distance ``VOXEL_CUTOFF_SIGMA = 4`` (a 3D Gaussian keeps
less mass inside a given number of sigma than a 2D one: 4 sigma drops 0.11 % of the
mass, close to the projector's 0.22 % at 3.5 sigma; 3.5 sigma would drop 0.66 %). The
kernels visit exactly the voxels inside that ellipsoid: per z slice the y range of its
cross-section, per row the x span.

Parallelism: one thread per (Gaussian, z slice) pair, so a large Gaussian is spread over
many threads. The pair list is built on the host and processed in chunks of at most
``MAX_PAIRS_PER_CHUNK`` pairs, which bounds memory for any number of Gaussians. The forward
pass scatters with atomic adds; the backward pass gathers ``dL/dvolume`` per pair and adds
the pair's gradients atomically into per-Gaussian accumulators, then the projector's
chain-rule kernel turns them into gradients of the raw parameters. Plain forward/backward
kernel pair (no Taichi autodiff: docs/architecture.md, "Kernels"), called by
:func:`taichi_etgs.gaussian.render.voxelize_gaussians` and
:func:`~taichi_etgs.gaussian.render.voxelize_gaussians_backward`, which build the pair
list in chunks.
"""

from .._ti import ti
from .gaussian_projector import _gaussian, _index_range

__all__ = ["voxelize_backward_kernel", "voxelize_forward_kernel"]

_nd1 = ti.types.ndarray(ndim=1)
_nd2 = ti.types.ndarray(ndim=2)
_nd3 = ti.types.ndarray(ndim=3)


@ti.func
def _blurred(means: ti.template(), log_scales: ti.template(), quats: ti.template(),
             density_raw: ti.template(), g, blur):
    """(mu, Sigma'^-1, amplitude, amplitude / rho, Sigma') of Gaussian g."""
    mu, sig, sprod, rho = _gaussian(means, log_scales, quats, density_raw, g)
    sp = sig + blur * ti.Matrix([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    amp_per_rho = sprod / ti.sqrt(sp.determinant())
    return mu, sp.inverse(), amp_per_rho * rho, amp_per_rho, sp


@ti.kernel
def voxelize_forward_kernel(means: _nd2, log_scales: _nd2, quats: _nd2, density_raw: _nd1,
                             pair_g: _nd1, pair_z: _nd1, volume: _nd3, x0: float,
                             y0: float, z0: float, h: float, blur: float, cutoff: float):
    """volume[k, j, i] += the Gaussians of the (Gaussian, slice) pairs given."""
    ny, nx = volume.shape[1], volume.shape[2]
    k2 = cutoff * cutoff
    for p in range(pair_g.shape[0]):
        g = pair_g[p]
        kz = pair_z[p]
        mu, ci, amp, _, sp = _blurred(means, log_scales, quats, density_raw, g, blur)
        dz = z0 + kz * h - mu[2]
        rem_z = k2 - dz * dz / sp[2, 2]
        if rem_z >= 0.0:
            # The (y, z) marginal bounds the slice's cross-section in y.
            det_yz = sp[1, 1] * sp[2, 2] - sp[1, 2] * sp[1, 2]
            cy = mu[1] + sp[1, 2] * dz / sp[2, 2]
            hy = ti.sqrt(rem_z * det_yz / sp[2, 2])
            j0, j1 = _index_range(cy - hy, cy + hy, y0, h, ny)
            for j in range(j0, j1 + 1):
                dy = y0 + j * h - mu[1]
                # d^T C d = cxx dx^2 + 2 dx bx + r, minimal over dx at dx = -bx / cxx.
                bx = ci[0, 1] * dy + ci[0, 2] * dz
                r = ci[1, 1] * dy * dy + 2.0 * ci[1, 2] * dy * dz + ci[2, 2] * dz * dz
                rem = k2 - (r - bx * bx / ci[0, 0])
                if rem >= 0.0:
                    cx = mu[0] - bx / ci[0, 0]
                    hx = ti.sqrt(rem / ci[0, 0])
                    i0, i1 = _index_range(cx - hx, cx + hx, x0, h, nx)
                    for i in range(i0, i1 + 1):
                        dx = x0 + i * h - mu[0]
                        q = ci[0, 0] * dx * dx + 2.0 * dx * bx + r
                        if q <= k2:
                            volume[kz, j, i] += amp * ti.exp(-0.5 * q)


@ti.kernel
def voxelize_backward_kernel(means: _nd2, log_scales: _nd2, quats: _nd2, density_raw: _nd1,
                              pair_g: _nd1, pair_z: _nd1, grad_volume: _nd3, x0: float,
                              y0: float, z0: float, h: float, blur: float, cutoff: float,
                              acc: _nd2):
    """acc[g] += dL/d(mu, Sigma, rho) of the pairs given (layout of gaussian_projector)."""
    ny, nx = grad_volume.shape[1], grad_volume.shape[2]
    k2 = cutoff * cutoff
    for p in range(pair_g.shape[0]):
        g = pair_g[p]
        kz = pair_z[p]
        mu, ci, amp, amp_per_rho, sp = _blurred(means, log_scales, quats, density_raw, g,
                                                blur)
        dz = z0 + kz * h - mu[2]
        rem_z = k2 - dz * dz / sp[2, 2]
        g_amp = 0.0  # sum of dL/dvalue * exp(-q/2)
        gmu = ti.Vector([0.0, 0.0, 0.0])  # sum of dL/dvalue * value * C d
        mm = ti.Matrix([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # ... * d d^T
        if rem_z >= 0.0:
            det_yz = sp[1, 1] * sp[2, 2] - sp[1, 2] * sp[1, 2]
            cy = mu[1] + sp[1, 2] * dz / sp[2, 2]
            hy = ti.sqrt(rem_z * det_yz / sp[2, 2])
            j0, j1 = _index_range(cy - hy, cy + hy, y0, h, ny)
            for j in range(j0, j1 + 1):
                dy = y0 + j * h - mu[1]
                bx = ci[0, 1] * dy + ci[0, 2] * dz
                r = ci[1, 1] * dy * dy + 2.0 * ci[1, 2] * dy * dz + ci[2, 2] * dz * dz
                rem = k2 - (r - bx * bx / ci[0, 0])
                if rem >= 0.0:
                    cx = mu[0] - bx / ci[0, 0]
                    hx = ti.sqrt(rem / ci[0, 0])
                    i0, i1 = _index_range(cx - hx, cx + hx, x0, h, nx)
                    for i in range(i0, i1 + 1):
                        dx = x0 + i * h - mu[0]
                        q = ci[0, 0] * dx * dx + 2.0 * dx * bx + r
                        if q <= k2:
                            e = ti.exp(-0.5 * q)
                            gv = grad_volume[kz, j, i]
                            g_amp += gv * e
                            gf = gv * amp * e
                            d = ti.Vector([dx, dy, dz])
                            gmu += gf * (ci @ d)
                            mm += gf * d.outer_product(d)
            # dL/dSigma = dL/dSigma' = 1/2 C M C (conic) - 1/2 g_amp amp C (determinant).
            gs = 0.5 * (ci @ mm @ ci) - (0.5 * g_amp * amp) * ci
            for k in ti.static(range(3)):
                acc[g, k] += gmu[k]
            acc[g, 3] += gs[0, 0]
            acc[g, 4] += gs[0, 1]
            acc[g, 5] += gs[0, 2]
            acc[g, 6] += gs[1, 1]
            acc[g, 7] += gs[1, 2]
            acc[g, 8] += gs[2, 2]
            acc[g, 9] += g_amp * amp_per_rho
