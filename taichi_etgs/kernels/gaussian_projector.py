"""Gaussian projector: exact line integrals of 3D Gaussians at arbitrary tilts, and backward.

Geometry (design.md section 2): a point ``(x, y, z)`` lands at tilt ``theta`` on detector
``(u, v) = (x cos(theta) + z sin(theta), y)``; views are ``(n_tilts, ny, nu)`` with pixel
``(i, j)`` centred at ``v = i + 0.5 - ny/2``, ``u = j + 0.5 - nu/2``.

For Gaussian ``(mu, Sigma, rho)`` (activations in :mod:`taichi_etgs.gaussians`) at tilt
``theta`` with ``P = [[cos, 0, sin], [0, 1, 0]]``: the projected mean is ``m = P mu`` and the
(u, v) block of the rotated covariance is ``Sigma2 = P Sigma P^T``. The exact line integral
along the beam is ``rho sqrt(2 pi det(Sigma) / det(Sigma2)) exp(-1/2 d^T Sigma2^-1 d)``,
``d = (u, v) - m``. Each pixel integrates over its unit area, approximated by a Gaussian
blur of variance 1/12 per axis: ``Sigma2' = Sigma2 + I/12`` and the amplitude is rescaled by
``sqrt(det Sigma2 / det Sigma2')`` so the mass is kept, which gives

    value(u, v) = rho * s_x s_y s_z * sqrt(2 pi / det Sigma2') * exp(-1/2 d^T Sigma2'^-1 d)

(``sqrt(det Sigma) = s_x s_y s_z``; ``det Sigma2`` cancels). The footprint is cut where the
Mahalanobis distance ``d^T Sigma2'^-1 d`` exceeds ``CUTOFF_SIGMA**2`` (3.5 sigma): the
kernels walk the rows of the footprint's bounding box and, in each row, exactly the
pixel span inside that ellipse. The cut drops ``exp(-3.5**2 / 2) = 0.22 %`` of each
Gaussian's mass and makes the kernel's values differ from the uncut formula by at most
0.22 % of the peak.

Parallelism: one thread per (Gaussian, view) pair. The forward pass scatters with atomic
adds into the views; the backward pass gathers ``dL/dviews`` over the same footprint,
accumulates the pair's gradients locally and adds them atomically into per-Gaussian
accumulators (mean, covariance, density), which a per-Gaussian kernel then turns into
gradients of the raw parameters (chain rule through the activations). Taichi's autodiff is
not used (it breaks on the footprint loops' dynamic trip counts, design.md section 5):
:func:`project_gaussians` and :func:`project_gaussians_backward` are a plain function pair.

Kernels compute in Taichi's default float (f32, or f64 when the runtime was started with
``precision="f64"``); the public functions accept numpy arrays of any float type and return
numpy arrays in that precision.
"""

import math
from dataclasses import dataclass

import numpy as np

from .. import runtime
from .._ti import ti
from ..gaussians import GaussianParams

__all__ = [
    "CUTOFF_SIGMA",
    "PIXEL_VARIANCE",
    "ProjectionGrads",
    "project_gaussians",
    "project_gaussians_backward",
]

#: Footprints are cut at this Mahalanobis distance (in standard deviations).
CUTOFF_SIGMA = 3.5
#: Variance of a unit box: added per axis to model the pixel (voxel) area integration.
PIXEL_VARIANCE = 1.0 / 12.0

_nd1 = ti.types.ndarray(ndim=1)
_nd2 = ti.types.ndarray(ndim=2)
_nd3 = ti.types.ndarray(ndim=3)

# Columns of the per-Gaussian gradient accumulator (shared with the voxeliser):
# dL/dmu (x, y, z), dL/dSigma (xx, xy, xz, yy, yz, zz; entries of the full symmetric
# matrix gradient), dL/drho.
N_ACC = 10


# ----------------------------------------------------------------------------------------
# Shared Taichi functions (also used by the voxeliser)
# ----------------------------------------------------------------------------------------

@ti.func
def _log1p(x):
    """log(1 + x), accurate for tiny x (Goldberg's trick; Taichi has no log1p)."""
    u = 1.0 + x
    r = x
    if u != 1.0:
        r = ti.log(u) * x / (u - 1.0)
    return r


@ti.func
def _softplus(r):
    return ti.max(r, 0.0) + _log1p(ti.exp(-ti.abs(r)))


@ti.func
def _sigmoid(r):
    e = ti.exp(-ti.abs(r))
    out = 1.0 / (1.0 + e)
    if r < 0.0:
        out = e / (1.0 + e)
    return out


@ti.func
def _unit_quat(quats: ti.template(), g):
    """(unit quaternion (w, x, y, z), norm of the raw one), norm floored at 1e-12."""
    q = ti.Vector([quats[g, 0], quats[g, 1], quats[g, 2], quats[g, 3]])
    norm = ti.max(q.norm(), 1e-12)
    return q / norm, norm


@ti.func
def _rotmat(q):
    """Rotation matrix of a unit quaternion (w, x, y, z); same as gaussians.quats_to_rotmats."""
    w, x, y, z = q[0], q[1], q[2], q[3]
    return ti.Matrix([
        [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
        [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
        [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
    ])


@ti.func
def _gaussian(means: ti.template(), log_scales: ti.template(), quats: ti.template(),
              density_raw: ti.template(), g):
    """Activated Gaussian g: (mu [3], Sigma [3x3], s_x s_y s_z, rho)."""
    mu = ti.Vector([means[g, 0], means[g, 1], means[g, 2]])
    l0, l1, l2 = log_scales[g, 0], log_scales[g, 1], log_scales[g, 2]
    q, _ = _unit_quat(quats, g)
    rot = _rotmat(q)
    s2 = ti.Vector([ti.exp(2.0 * l0), ti.exp(2.0 * l1), ti.exp(2.0 * l2)])
    sigma = rot @ ti.Matrix([[s2[0], 0.0, 0.0], [0.0, s2[1], 0.0], [0.0, 0.0, s2[2]]]) \
        @ rot.transpose()
    return mu, sigma, ti.exp(l0 + l1 + l2), _softplus(density_raw[g])


@ti.func
def _index_range(lo, hi, c0, step, n: int):
    """Indices k in [0, n) with c0 + k*step in [lo, hi] (step > 0); empty when k0 > k1."""
    a = (lo - c0) / step
    b = (hi - c0) / step
    # Clamp in float first: a far-away Gaussian would overflow the integer cast.
    a = ti.min(ti.max(a, -1.0), n + 1.0)
    b = ti.min(ti.max(b, -2.0), n + 1.0)
    k0 = ti.max(int(ti.ceil(a)), 0)
    k1 = ti.min(int(ti.floor(b)), n - 1)
    return k0, k1


@ti.kernel
def _raw_grads_kernel(log_scales: _nd2, quats: _nd2, density_raw: _nd1, acc: _nd2,
                     g_means: _nd2, g_log_scales: _nd2, g_quats: _nd2, g_density_raw: _nd1):
    """Chain rule from accumulated dL/d(mu, Sigma, rho) (columns of ``acc``) to raw params.

    ``Sigma = R D R^T`` with ``D = diag(exp(2 l))`` and ``R = R(q / |q|)``; ``rho = softplus(r)``.
    Shared by the projector and the voxeliser. Overwrites the four gradient arrays.
    """
    for g in range(acc.shape[0]):
        for k in ti.static(range(3)):
            g_means[g, k] = acc[g, k]
        gs = ti.Matrix([[acc[g, 3], acc[g, 4], acc[g, 5]],
                        [acc[g, 4], acc[g, 6], acc[g, 7]],
                        [acc[g, 5], acc[g, 7], acc[g, 8]]])
        grho = acc[g, 9]
        r = density_raw[g]
        rho = _softplus(r)
        q, qnorm = _unit_quat(quats, g)
        rot = _rotmat(q)
        s2 = ti.Vector([ti.exp(2.0 * log_scales[g, 0]), ti.exp(2.0 * log_scales[g, 1]),
                        ti.exp(2.0 * log_scales[g, 2])])
        # dL/dD = R^T G R; dD_kk/dl_k = 2 s_k^2. The amplitude's own factor s_x s_y s_z
        # (through rho * s_x s_y s_z) adds grho * rho to every log-scale.
        m = rot.transpose() @ gs @ rot
        for k in ti.static(range(3)):
            g_log_scales[g, k] = 2.0 * s2[k] * m[k, k] + grho * rho
        # dL/dR = 2 G R D
        gr = 2.0 * (gs @ rot)
        for i in ti.static(range(3)):
            for j in ti.static(range(3)):
                gr[i, j] *= s2[j]
        w, x, y, z = q[0], q[1], q[2], q[3]
        gw = 2.0 * (x * (gr[2, 1] - gr[1, 2]) + y * (gr[0, 2] - gr[2, 0])
                    + z * (gr[1, 0] - gr[0, 1]))
        gx = 2.0 * (y * (gr[0, 1] + gr[1, 0]) + z * (gr[0, 2] + gr[2, 0])
                    + w * (gr[2, 1] - gr[1, 2]) - 2.0 * x * (gr[1, 1] + gr[2, 2]))
        gy = 2.0 * (x * (gr[0, 1] + gr[1, 0]) + z * (gr[1, 2] + gr[2, 1])
                    + w * (gr[0, 2] - gr[2, 0]) - 2.0 * y * (gr[0, 0] + gr[2, 2]))
        gz = 2.0 * (x * (gr[0, 2] + gr[2, 0]) + y * (gr[1, 2] + gr[2, 1])
                    + w * (gr[1, 0] - gr[0, 1]) - 2.0 * z * (gr[0, 0] + gr[1, 1]))
        gq = ti.Vector([gw, gx, gy, gz])
        # Through the normalisation q / |q|: project out the radial part, divide by |q|.
        gq = (gq - q * q.dot(gq)) / qnorm
        for k in ti.static(range(4)):
            g_quats[g, k] = gq[k]
        g_density_raw[g] = grho * _sigmoid(r)


# ----------------------------------------------------------------------------------------
# Projector kernels
# ----------------------------------------------------------------------------------------

@ti.func
def _projected(means: ti.template(), log_scales: ti.template(), quats: ti.template(),
               density_raw: ti.template(), g, c, s):
    """Per (Gaussian, view): (m_u, m_v, blurred Sigma2' entries uu, uv, vv, det Sigma2',
    amplitude / rho, rho)."""
    mu, sig, sprod, rho = _gaussian(means, log_scales, quats, density_raw, g)
    m_u = c * mu[0] + s * mu[2]
    m_v = mu[1]
    a = c * c * sig[0, 0] + 2.0 * c * s * sig[0, 2] + s * s * sig[2, 2] + PIXEL_VARIANCE
    b = c * sig[0, 1] + s * sig[1, 2]
    d = sig[1, 1] + PIXEL_VARIANCE
    det2 = a * d - b * b
    amp_per_rho = sprod * ti.sqrt(2.0 * math.pi / det2)
    return m_u, m_v, a, b, d, det2, amp_per_rho, rho


@ti.kernel
def _project_forward_kernel(means: _nd2, log_scales: _nd2, quats: _nd2, density_raw: _nd1,
                            cos_t: _nd1, sin_t: _nd1, views: _nd3, cutoff: float):
    """views[t, i, j] += line integrals of every Gaussian (views must be zeroed)."""
    ny, nu = views.shape[1], views.shape[2]
    cv = 0.5 - ny * 0.5
    cu = 0.5 - nu * 0.5
    k2 = cutoff * cutoff
    for g, t in ti.ndrange(means.shape[0], cos_t.shape[0]):
        c = cos_t[t]
        s = sin_t[t]
        m_u, m_v, a, b, d, det2, amp_per_rho, rho = _projected(
            means, log_scales, quats, density_raw, g, c, s)
        amp = amp_per_rho * rho
        # Conic (inverse of Sigma2').
        cuu = d / det2
        cuv = -b / det2
        cvv = a / det2
        hv = cutoff * ti.sqrt(d)
        i0, i1 = _index_range(m_v - hv, m_v + hv, cv, 1.0, ny)
        for i in range(i0, i1 + 1):
            dv = i + cv - m_v
            # Within row i, d^T C d = cuu (du - du*)^2 + dv^2 / Sigma2'_vv.
            rem = k2 - dv * dv / d
            if rem >= 0.0:
                centre = m_u - cuv * dv / cuu
                hu = ti.sqrt(rem / cuu)
                j0, j1 = _index_range(centre - hu, centre + hu, cu, 1.0, nu)
                for j in range(j0, j1 + 1):
                    du = j + cu - m_u
                    q = cuu * du * du + 2.0 * cuv * du * dv + cvv * dv * dv
                    if q <= k2:
                        views[t, i, j] += amp * ti.exp(-0.5 * q)


@ti.kernel
def _project_backward_kernel(means: _nd2, log_scales: _nd2, quats: _nd2, density_raw: _nd1,
                             cos_t: _nd1, sin_t: _nd1, grad_views: _nd3, cutoff: float,
                             acc: _nd2, uv_norm: _nd1, visible: _nd1):
    """Accumulate dL/d(mu, Sigma, rho) into ``acc`` and the densification statistics.

    acc [N, N_ACC], uv_norm [N] and visible [N] must be zeroed.
    """
    ny, nu = grad_views.shape[1], grad_views.shape[2]
    cv = 0.5 - ny * 0.5
    cu = 0.5 - nu * 0.5
    k2 = cutoff * cutoff
    for g, t in ti.ndrange(means.shape[0], cos_t.shape[0]):
        c = cos_t[t]
        s = sin_t[t]
        m_u, m_v, a, b, d, det2, amp_per_rho, rho = _projected(
            means, log_scales, quats, density_raw, g, c, s)
        amp = amp_per_rho * rho
        cuu = d / det2
        cuv = -b / det2
        cvv = a / det2
        hv = cutoff * ti.sqrt(d)
        i0, i1 = _index_range(m_v - hv, m_v + hv, cv, 1.0, ny)
        g_amp = 0.0  # sum of dL/dvalue * exp(-q/2)
        gm_u = 0.0  # dL/dm: sum of dL/dvalue * value * C d
        gm_v = 0.0
        m_uu = 0.0  # sum of dL/dvalue * value * d d^T
        m_uv = 0.0
        m_vv = 0.0
        hit = 0
        for i in range(i0, i1 + 1):
            dv = i + cv - m_v
            rem = k2 - dv * dv / d
            if rem >= 0.0:
                centre = m_u - cuv * dv / cuu
                hu = ti.sqrt(rem / cuu)
                j0, j1 = _index_range(centre - hu, centre + hu, cu, 1.0, nu)
                for j in range(j0, j1 + 1):
                    du = j + cu - m_u
                    q = cuu * du * du + 2.0 * cuv * du * dv + cvv * dv * dv
                    if q <= k2:
                        hit = 1
                        e = ti.exp(-0.5 * q)
                        gv = grad_views[t, i, j]
                        g_amp += gv * e
                        gf = gv * amp * e
                        gm_u += gf * (cuu * du + cuv * dv)
                        gm_v += gf * (cuv * du + cvv * dv)
                        m_uu += gf * du * du
                        m_uv += gf * du * dv
                        m_vv += gf * dv * dv
        if hit:
            # dL/dSigma2' = 1/2 C M C (through the conic) - 1/2 g_amp amp C (through det).
            cm = ti.Matrix([[cuu, cuv], [cuv, cvv]])
            mm = ti.Matrix([[m_uu, m_uv], [m_uv, m_vv]])
            g2 = 0.5 * (cm @ mm @ cm) - (0.5 * g_amp * amp) * cm
            # Sigma2 = P Sigma P^T  =>  dL/dSigma = P^T G2 P.
            acc[g, 0] += c * gm_u
            acc[g, 1] += gm_v
            acc[g, 2] += s * gm_u
            acc[g, 3] += c * c * g2[0, 0]
            acc[g, 4] += c * g2[0, 1]
            acc[g, 5] += c * s * g2[0, 0]
            acc[g, 6] += g2[1, 1]
            acc[g, 7] += s * g2[0, 1]
            acc[g, 8] += s * s * g2[0, 0]
            acc[g, 9] += g_amp * amp_per_rho
            uv_norm[g] += ti.sqrt(gm_u * gm_u + gm_v * gm_v)
            visible[g] += 1


# ----------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------

def _work_dtype() -> type:
    """numpy dtype of Taichi's default float in the running configuration."""
    cfg = runtime.ensure_initialized()
    return np.float64 if cfg.precision == "f64" else np.float32


def _param_arrays(params: GaussianParams, dtype: type) -> tuple[np.ndarray, ...]:
    """The four raw arrays, C-contiguous in ``dtype`` (for kernel arguments)."""
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in
                 (params.means_xyz, params.log_scales, params.quats_wxyz, params.density_raw))


def _tilt_trig(tilts_deg: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    theta = np.deg2rad(np.asarray(tilts_deg, dtype=np.float64).reshape(-1))
    return (np.ascontiguousarray(np.cos(theta), dtype=dtype),
            np.ascontiguousarray(np.sin(theta), dtype=dtype))


@dataclass
class ProjectionGrads:
    """What :func:`project_gaussians_backward` returns.

    grads: dL/d(raw parameters), same fields and shapes as the parameters (means_xyz
        [N, 3], log_scales [N, 3], quats_wxyz [N, 4], density_raw [N]).
    uv_grad_norm_sum: sum over the views where a Gaussian is visible of the norm of
        ``dL/d(u, v)`` of its projected centre, in detector pixel units (the densification
        statistic; no W/2, H/2 scaling). [N]
    visible_views: number of views in which at least one pixel of the Gaussian's footprint
        lies on the detector. [N]
    """

    grads: GaussianParams
    uv_grad_norm_sum: np.ndarray
    visible_views: np.ndarray


def _check_tilts(tilts_deg: np.ndarray) -> np.ndarray:
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if tilts.ndim != 1:
        raise ValueError(f"tilts_deg must be 1-D [n_tilts]; got shape {tilts.shape}")
    return tilts


def project_gaussians(params: GaussianParams, tilts_deg: np.ndarray, ny: int,
                      nu: int) -> np.ndarray:
    """Render N Gaussians into tilt views (line integrals along the beam, pixel-averaged).

    Parameters
    ----------
    params: raw Gaussian parameters (N Gaussians).
    tilts_deg: tilt angles in degrees. [n_tilts]
    ny: detector rows (along the tilt axis Y).
    nu: detector columns.

    Returns
    -------
    views: projections in the working precision (float32, or float64 under an f64
        runtime). [n_tilts, ny, nu]
    """
    tilts = _check_tilts(tilts_deg)
    dtype = _work_dtype()
    views = np.zeros((tilts.size, int(ny), int(nu)), dtype=dtype)
    if params.n == 0 or views.size == 0:
        return views
    cos_t, sin_t = _tilt_trig(tilts, dtype)
    _project_forward_kernel(*_param_arrays(params, dtype), cos_t, sin_t, views,
                            CUTOFF_SIGMA)
    return views


def project_gaussians_backward(params: GaussianParams, tilts_deg: np.ndarray,
                               grad_views: np.ndarray) -> ProjectionGrads:
    """Gradients of a loss through :func:`project_gaussians`.

    Parameters
    ----------
    params: raw Gaussian parameters (N Gaussians), as given to the forward call.
    tilts_deg: tilt angles in degrees. [n_tilts]
    grad_views: dL/dviews. [n_tilts, ny, nu]

    Returns
    -------
    ProjectionGrads with dL/d(raw parameters) and the per-Gaussian image-space position
    gradient statistics, in the working precision.
    """
    tilts = _check_tilts(tilts_deg)
    grad_views = np.asarray(grad_views)
    if grad_views.ndim != 3 or grad_views.shape[0] != tilts.size:
        raise ValueError(f"grad_views must be [n_tilts={tilts.size}, ny, nu]; "
                         f"got shape {grad_views.shape}")
    dtype = _work_dtype()
    n = params.n
    acc = np.zeros((n, N_ACC), dtype=dtype)
    uv_norm = np.zeros(n, dtype=dtype)
    visible = np.zeros(n, dtype=np.int32)
    grads = GaussianParams(np.zeros((n, 3), dtype), np.zeros((n, 3), dtype),
                           np.zeros((n, 4), dtype), np.zeros(n, dtype))
    if n == 0:
        return ProjectionGrads(grads, uv_norm, visible)
    raw = _param_arrays(params, dtype)
    if grad_views.size:
        cos_t, sin_t = _tilt_trig(tilts, dtype)
        _project_backward_kernel(*raw, cos_t, sin_t,
                                 np.ascontiguousarray(grad_views, dtype=dtype),
                                 CUTOFF_SIGMA, acc, uv_norm, visible)
    _raw_grads_kernel(raw[1], raw[2], raw[3], acc, grads.means_xyz, grads.log_scales,
                     grads.quats_wxyz, grads.density_raw)
    return ProjectionGrads(grads, uv_norm, visible)
