"""Gaussian projector: exact line integrals of 3D Gaussians at arbitrary tilts, and backward.

Geometry (docs/conventions.md, "Geometry"): a point ``(x, y, z)`` lands at tilt ``theta`` on
detector ``(u, v) = (x cos(theta) + z sin(theta), y)``; views are ``(n_tilts, ny, nu)`` with
pixel ``(i, j)`` centred at ``v = i + 0.5 - ny/2``, ``u = j + 0.5 - nu/2``.

For Gaussian ``(mu, Sigma, rho)`` (activations in :mod:`taichi_etgs.gaussian.params`) at tilt
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

A view may be moved on its detector by ``(du, dv)`` (a residual misalignment the model
carries instead of resampling the view): its projected means move by that much, exactly.

Work per call: a per-Gaussian kernel computes what is the same at every tilt (mean,
covariance, amplitude factors, and the detector rows the footprint covers: ``v = y``, so the
rows do not depend on the tilt; with views moved along ``v``, the rows of any view). Along
a row the footprint's values follow ``e_{j+1} = e_j r_j``, ``r_{j+1} = r_j exp(-cuu)``
(``q`` is quadratic in the column), so the CPU kernels evaluate two exponentials per row
instead of one per pixel, running the recurrence in float64.

Parallelism depends on the arch (the same pixels and formulas either way):

- CPU, forward: the Gaussians are sorted by first row and listed per detector row (both
  lists built serially, so deterministic); a table holds each (view, Gaussian) projection;
  then one thread per (view, row) renders its row from the row's list, without atomics
  (rows whose lists are cut into pieces, when views x rows are too few to keep the
  threads busy, are summed from per-piece partial views). The result does not depend on
  the number of threads.
- GPU, forward: one thread per (view, Gaussian) scatters its footprint with atomic adds
  (a GPU needs the thousands of threads; per-row threads would leave it idle).
- Backward (both): one thread per Gaussian walks its footprint in every view, gathering
  ``dL/dviews``; per row it needs only three sums (``sum dL/dvalue e du^k``, k = 0, 1, 2),
  and it writes its accumulated dL/d(mean, covariance, density) once, without atomics. A
  per-Gaussian kernel then turns them into gradients of the raw parameters (chain rule
  through the activations).

Taichi's autodiff is not used (it breaks on the footprint loops' dynamic trip counts,
docs/architecture.md, "Kernels"): the forward and backward kernels are a plain pair, called by
:func:`taichi_etgs.gaussian.render.project_gaussians` and
:func:`~taichi_etgs.gaussian.render.project_gaussians_backward`, which turn a model into
these kernels' plain arrays and pick the CPU or GPU path.

Kernels compute in Taichi's default float (f32, or f64 when the runtime was started with
``precision="f64"``) on plain arrays: the raw parameters (means [N, 3], log-scales [N, 3],
quaternions [N, 4], raw densities [N]) and the per-Gaussian tables documented below.
"""

import math

from .._ti import ti

__all__ = [
    "CUTOFF_SIGMA",
    "N_ACC",
    "N_G",
    "N_P",
    "PIXEL_VARIANCE",
    "forward_rows_kernel",
    "forward_scatter_kernel",
    "order_kernel",
    "pair_table_kernel",
    "prepare_kernel",
    "project_backward_kernel",
    "raw_grads_kernel",
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
def raw_grads_kernel(log_scales: _nd2, quats: _nd2, density_raw: _nd1, acc: _nd2,
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

# Columns of the per-Gaussian table written by prepare_kernel: what the projection at any
# tilt needs, view-independent (computed once per call instead of once per view).
_G_MX, _G_MY, _G_MZ = 0, 1, 2  # centre mu
_G_XX, _G_XZ, _G_ZZ, _G_XY, _G_YZ = 3, 4, 5, 6, 7  # entries of Sigma
_G_VV = 8  # Sigma2'_vv = Sigma_yy + PIXEL_VARIANCE (the same at every tilt)
_G_SP = 9  # s_x s_y s_z
_G_RHO = 10  # rho
N_G = 11

# Columns of the per-(view, Gaussian) table of the CPU forward pass (float64).
_P_MU, _P_CUU, _P_CUV, _P_CVV, _P_AMP, _P_KK, _P_SHEAR, _P_INV_CUU = range(8)
N_P = 8

_nd1i = ti.types.ndarray(dtype=ti.i32, ndim=1)
_nd2i = ti.types.ndarray(dtype=ti.i32, ndim=2)
_f64_1d = ti.types.ndarray(dtype=ti.f64, ndim=1)


@ti.func
def _projected_from_table(gauss: ti.template(), g, c, s):
    """Gaussian g at the tilt of (cos, sin) = (c, s): (m_u, Sigma2' uu, uv, det Sigma2',
    amplitude). The backward kernel repeats these formulas in the same order and precision,
    so forward and backward see the same footprint."""
    m_u = c * gauss[g, _G_MX] + s * gauss[g, _G_MZ]
    a = (c * c * gauss[g, _G_XX] + 2.0 * c * s * gauss[g, _G_XZ] + s * s * gauss[g, _G_ZZ]
         + PIXEL_VARIANCE)
    b = c * gauss[g, _G_XY] + s * gauss[g, _G_YZ]
    d = gauss[g, _G_VV]
    det2 = a * d - b * b
    amp_per_rho = gauss[g, _G_SP] * ti.sqrt(2.0 * math.pi / det2)
    return m_u, a, b, det2, amp_per_rho * gauss[g, _G_RHO]


@ti.func
def _opaque(x):
    """``x`` itself (for ``x > -1e30``), in a form the optimiser cannot see through.

    Under Taichi's fast math LLVM rewrites ``y * (a / b)`` as ``(y * a) / b``: a quotient
    computed once per Gaussian and view would become one division per row or per pixel
    wherever it is used. Wrapping the quotient keeps it a multiplication.
    """
    return ti.max(x, -1e30)


@ti.func
def _row_range(m_v, d, cutoff, ny: int):
    """Detector rows [i0, i1] the footprint covers (the same at every tilt: v = y)."""
    hv = cutoff * ti.sqrt(d)
    return _index_range(m_v - hv, m_v + hv, 0.5 - ny * 0.5, 1.0, ny)


@ti.func
def _row_span(i, cv, cu, nu: int, k2, m_u, m_v, inv_d, shear, inv_cuu):
    """Pixels [j0, j1] of row i inside the cut ellipse (empty when j0 > j1), and dv.

    Within row i, ``d^T C d = cuu (du - du*)^2 + dv^2 / Sigma2'_vv`` with the row's centre
    at ``du* = -dv cuv / cuu = -shear dv``; ``inv_d = 1 / Sigma2'_vv``, ``inv_cuu = 1 / cuu``.
    Every kernel (forward, backward, CPU and GPU) uses this function, so they all visit
    the same pixels.
    """
    dv = i + cv - m_v
    rem = k2 - dv * dv * inv_d
    j0 = 0
    j1 = -1
    if rem >= 0.0:
        centre = m_u - shear * dv
        hu = ti.sqrt(rem * inv_cuu)
        j0, j1 = _index_range(centre - hu, centre + hu, cu, 1.0, nu)
    return j0, j1, dv


@ti.func
def _row_start(du0, dv, cuu, cuv, cvv):
    """(exp(-q/2) at the span's first pixel, ratio of the second pixel's value to it).

    Along a row ``q(du + 1) - q(du) = cuu (2 du + 1) + 2 cuv dv``, and that difference grows
    by ``2 cuu`` per pixel: the values are ``e_{j+1} = e_j r_j``, ``r_{j+1} = r_j exp(-cuu)``,
    two multiplications per pixel instead of an exponential. The CPU kernels run this
    recurrence in float64, where its rounding (which grows with the square of the span
    length) stays far below float32's.
    """
    q0 = cuu * du0 * du0 + 2.0 * cuv * du0 * dv + cvv * dv * dv
    return ti.exp(-0.5 * q0), ti.exp(-0.5 * (cuu * (2.0 * du0 + 1.0) + 2.0 * cuv * dv))


@ti.kernel
def prepare_kernel(means: _nd2, log_scales: _nd2, quats: _nd2, density_raw: _nd1,
                    cutoff: float, ny: ti.i32, row0: ti.i32, n_rows: ti.i32, v_lo: float,
                    v_hi: float, gauss: _nd2, rows: _nd2i, first_row_count: _nd1i,
                    row_count_diff: _nd1i, count: ti.i32):
    """Per Gaussian: the table ``gauss`` [N, N_G] and the rows [i0, i1] of the row lists it
    covers in some view (views moved along v by ``v_lo <= 0`` to ``v_hi >= 0`` pixels).

    List row ``j`` (0 <= j < ``n_rows``) is detector row ``row0 + j`` of an unmoved view
    (``row0`` <= 0 and ``n_rows`` >= ny reach rows off the detector that whole-row moves
    bring onto it: :func:`forward_rows_kernel`). With ``count`` != 0 also counts, for the
    CPU forward pass, the Gaussians whose first list row is j (``first_row_count[j]``)
    and, as a difference array, the Gaussians covering list row j (``row_count_diff``,
    cumulative sum = count per row). Both [n_rows + 1], zeroed.
    """
    for g in range(means.shape[0]):
        mu, sig, sprod, rho = _gaussian(means, log_scales, quats, density_raw, g)
        gauss[g, _G_MX] = mu[0]
        gauss[g, _G_MY] = mu[1]
        gauss[g, _G_MZ] = mu[2]
        gauss[g, _G_XX] = sig[0, 0]
        gauss[g, _G_XZ] = sig[0, 2]
        gauss[g, _G_ZZ] = sig[2, 2]
        gauss[g, _G_XY] = sig[0, 1]
        gauss[g, _G_YZ] = sig[1, 2]
        d = sig[1, 1] + PIXEL_VARIANCE
        gauss[g, _G_VV] = d
        gauss[g, _G_SP] = sprod
        gauss[g, _G_RHO] = rho
        hv = cutoff * ti.sqrt(d)
        i0, i1 = _index_range(mu[1] - hv + v_lo, mu[1] + hv + v_hi, 0.5 - ny * 0.5 + row0,
                              1.0, n_rows)
        rows[g, 0] = i0
        rows[g, 1] = i1
        if count != 0 and i0 <= i1:
            ti.atomic_add(first_row_count[i0], 1)
            ti.atomic_add(row_count_diff[i0], 1)
            ti.atomic_add(row_count_diff[i1 + 1], -1)


@ti.kernel
def order_kernel(rows: _nd2i, first_cursor: _nd1i, row_cursor: _nd1i, order: _nd1i,
                  entries: _nd1i):
    """Sort the Gaussians by first row and list, per row, those that cover it.

    ``order[p]`` = the Gaussian at sorted position p (stable: by first row, then index);
    ``entries[offsets[i]:offsets[i + 1]]`` = the sorted positions of the Gaussians covering
    row i, increasing. ``first_cursor`` and ``row_cursor`` start at the exclusive prefix
    sums of the counts from :func:`prepare_kernel`. Serial loops: the lists are
    deterministic, and the work (one write per Gaussian row) is small next to rendering.
    Sorted Gaussians make the row lists walk the pair table almost sequentially.
    """
    ti.loop_config(serialize=True)
    for g in range(rows.shape[0]):
        i0 = rows[g, 0]
        if i0 <= rows[g, 1]:
            p = first_cursor[i0]
            order[p] = g
            first_cursor[i0] = p + 1
    ti.loop_config(serialize=True)
    for p in range(order.shape[0]):
        g = order[p]
        for i in range(rows[g, 0], rows[g, 1] + 1):
            k = row_cursor[i]
            entries[k] = p
            row_cursor[i] = k + 1


@ti.kernel
def pair_table_kernel(gauss: _nd2, cos_t: _nd1, sin_t: _nd1, shift_u: _nd1, t0: ti.i32,
                       n_views: ti.i32, pairs: _f64_1d, row_info: _f64_1d):
    """The projection of Gaussian p (rows of ``gauss`` in sorted order) at view t0 + tt, in
    float64: columns _P_* of row ``tt * n_on + p`` of ``pairs`` [n_views * n_on * N_P];
    ``row_info`` [2 n_on] = (m_v, 1 / Sigma2'_vv) of each p (before the views' moves
    along v). ``shift_u``: each view's move along u. Flat arrays: see
    :func:`forward_rows_kernel`."""
    n_on = gauss.shape[0]
    for tt, p in ti.ndrange(n_views, n_on):
        m_u, a, b, det2, amp = _projected_from_table(gauss, p, cos_t[t0 + tt], sin_t[t0 + tt])
        m_u += shift_u[t0 + tt]
        a64 = ti.cast(a, ti.f64)
        b64 = ti.cast(b, ti.f64)
        d64 = ti.cast(gauss[p, _G_VV], ti.f64)
        det64 = ti.cast(det2, ti.f64)
        cuu = d64 / det64
        base = (tt * n_on + p) * N_P
        pairs[base + _P_MU] = m_u
        pairs[base + _P_CUU] = cuu
        pairs[base + _P_CUV] = -b64 / det64
        pairs[base + _P_CVV] = a64 / det64
        pairs[base + _P_AMP] = amp
        pairs[base + _P_KK] = ti.exp(-cuu)
        pairs[base + _P_SHEAR] = -b64 / d64
        pairs[base + _P_INV_CUU] = det64 / d64
        if tt == 0:
            row_info[2 * p] = gauss[p, _G_MY]
            row_info[2 * p + 1] = 1.0 / d64


@ti.kernel
def forward_rows_kernel(pairs: _f64_1d, row_info: _f64_1d, shift_v: _nd1, list_row: _nd1i,
                         offsets: _nd1i, entries: _nd1i, n_views: ti.i32, n_parts: ti.i32,
                         out: _nd1, out_views: ti.i32, out_t0: ti.i32, ny: ti.i32, nu: ti.i32,
                         cutoff: float):
    """CPU forward pass: one thread per (part, view, detector row) sums its Gaussians.

    Row i's list is cut into ``n_parts`` consecutive pieces; piece k of view tt is added to
    row ``((k * out_views + out_t0 + tt) * ny + i) * nu`` of ``out`` (flattened, zeroed):
    with one part, ``out`` is the [n_tilts, ny, nu] stack itself; with more (when views x
    rows alone are too few threads), [n_parts, n_views, ny, nu] partial views that the
    caller sums in part order. A row belongs to one thread, so there are no atomics, and
    each pixel adds its Gaussians in a fixed order. The arrays are flat (1D) so that a
    pixel's address is one addition: with multi-dimensional arrays, every store in the
    pixel loop made the compiler reload the array's shape and redo the index products.
    ``shift_v`` [n_views]: each view's move along v; ``list_row`` [n_views]: detector row i
    of view tt reads row list ``i + list_row[tt]``. A view moved by ``k`` whole rows (and
    a fraction) reads the list of the row ``k`` above, so the lists need only cover the
    fractions' spread (:func:`prepare_kernel`), not the views' whole spread of moves,
    which lengthened every list by as many rows and the forward pass by a fifth.
    """
    n_on = row_info.shape[0] // 2
    cv = ti.cast(0.5 - ny * 0.5, ti.f64)
    cu = ti.cast(0.5 - nu * 0.5, ti.f64)
    k2 = ti.cast(cutoff, ti.f64) * ti.cast(cutoff, ti.f64)
    for part, tt, i in ti.ndrange(n_parts, n_views, ny):
        row = ((part * out_views + out_t0 + tt) * ny + i) * nu
        listed = i + list_row[tt]
        k_lo = offsets[listed]
        n_k = offsets[listed + 1] - k_lo
        for k in range(k_lo + n_k * part // n_parts, k_lo + n_k * (part + 1) // n_parts):
            p = entries[k]
            base = (tt * n_on + p) * N_P
            m_u = pairs[base + _P_MU]
            m_v = row_info[2 * p] + ti.cast(shift_v[tt], ti.f64)
            j0, j1, dv = _row_span(i, cv, cu, nu, k2, m_u, m_v, row_info[2 * p + 1],
                                   pairs[base + _P_SHEAR], pairs[base + _P_INV_CUU])
            if j0 <= j1:
                e, r = _row_start(j0 + (cu - m_u), dv, pairs[base + _P_CUU],
                                  pairs[base + _P_CUV], pairs[base + _P_CVV])
                e *= pairs[base + _P_AMP]
                kk = pairs[base + _P_KK]
                for j in range(row + j0, row + j1 + 1):
                    out[j] = out[j] + ti.cast(e, float)
                    e *= r
                    r *= kk


@ti.kernel
def forward_scatter_kernel(gauss: _nd2, cos_t: _nd1, sin_t: _nd1, shift_u: _nd1,
                            shift_v: _nd1, views: _nd3, cutoff: float):
    """GPU forward pass: one thread per (view, Gaussian) adds its footprint atomically.

    views[t, i, j] += line integrals of every Gaussian (views must be zeroed), view t
    moved by (shift_u[t], shift_v[t]). Thousands of threads per view keep a GPU busy,
    where the CPU's per-row threads would not.
    """
    ny, nu = views.shape[1], views.shape[2]
    cv = 0.5 - ny * 0.5
    cu = 0.5 - nu * 0.5
    k2 = cutoff * cutoff
    for t, g in ti.ndrange(cos_t.shape[0], gauss.shape[0]):
        m_v = gauss[g, _G_MY] + shift_v[t]
        i0, i1 = _row_range(m_v, gauss[g, _G_VV], cutoff, ny)
        if i0 <= i1:
            m_u, a, b, det2, amp = _projected_from_table(gauss, g, cos_t[t], sin_t[t])
            m_u += shift_u[t]
            d = gauss[g, _G_VV]
            cuu = _opaque(d / det2)
            cuv = _opaque(-b / det2)
            cvv = _opaque(a / det2)
            inv_d = _opaque(1.0 / d)
            shear = _opaque(-b / d)
            inv_cuu = _opaque(det2 / d)
            off = cu - m_u
            for i in range(i0, i1 + 1):
                j0, j1, dv = _row_span(i, cv, cu, nu, k2, m_u, m_v, inv_d, shear, inv_cuu)
                for j in range(j0, j1 + 1):
                    du = j + off
                    q = cuu * du * du + 2.0 * cuv * du * dv + cvv * dv * dv
                    views[t, i, j] += amp * ti.exp(-0.5 * q)


@ti.kernel
def project_backward_kernel(means: _nd2, log_scales: _nd2, quats: _nd2, density_raw: _nd1,
                             cos_t: _nd1, sin_t: _nd1, shift_u: _nd1, shift_v: _nd1,
                             grad_views: _nd3, cutoff: float,
                             acc: _nd2, uv_norm: _nd1, visible: _nd1i, wt: ti.template(),
                             incremental: ti.template()):
    """dL/d(mu, Sigma, rho) into ``acc`` [N, N_ACC] and the densification statistics
    ``uv_norm`` [N], ``visible`` [N] (all overwritten).

    One thread per Gaussian walks its footprint in every view, gathering ``dL/dviews``;
    per row it needs only three sums, ``S_k = sum_j dL/dvalue_j exp(-q_j/2) du_j^k`` (k = 0,
    1, 2), from which the row's contributions follow (dv is constant along a row). The
    thread sums its views in registers and writes its results once: no atomics, and the
    same result for any thread count. ``shift_u``, ``shift_v``: each view's move on the
    detector, as in the forward kernels. ``wt``: the float type of the per-view arithmetic
    (float64 on the CPU, where it costs nothing); ``incremental``: step the exponentials
    along each row (:func:`_row_start`, CPU) rather than evaluating one per pixel (GPU).
    """
    ny, nu = grad_views.shape[1], grad_views.shape[2]
    cv = ti.cast(0.5 - ny * 0.5, wt)
    cu = ti.cast(0.5 - nu * 0.5, wt)
    k2 = ti.cast(cutoff, wt) * ti.cast(cutoff, wt)
    for g in range(means.shape[0]):
        mu, sig, sprod, rho = _gaussian(means, log_scales, quats, density_raw, g)
        d = sig[1, 1] + PIXEL_VARIANCE
        a_mu = ti.Vector([0.0, 0.0, 0.0])
        a_sig = ti.Vector([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        a_rho = 0.0
        norm_sum = 0.0
        n_vis = 0
        d_w = ti.cast(d, wt)
        inv_d = _opaque(1.0 / d_w)
        for t in range(cos_t.shape[0]):
            m_v_f = mu[1] + shift_v[t]
            i0, i1 = _row_range(m_v_f, d, cutoff, ny)
            if i0 <= i1:
                m_v = ti.cast(m_v_f, wt)
                c = cos_t[t]
                s = sin_t[t]
                m_u_f = c * mu[0] + s * mu[2] + shift_u[t]
                a_f = (c * c * sig[0, 0] + 2.0 * c * s * sig[0, 2] + s * s * sig[2, 2]
                       + PIXEL_VARIANCE)
                b_f = c * sig[0, 1] + s * sig[1, 2]
                det2_f = a_f * d - b_f * b_f
                amp_per_rho = sprod * ti.sqrt(2.0 * math.pi / det2_f)
                m_u = ti.cast(m_u_f, wt)
                a = ti.cast(a_f, wt)
                b = ti.cast(b_f, wt)
                det2 = ti.cast(det2_f, wt)
                amp = ti.cast(amp_per_rho * rho, wt)
                cuu = _opaque(d_w / det2)
                cuv = _opaque(-b / det2)
                cvv = _opaque(a / det2)
                shear = _opaque(-b / d_w)
                inv_cuu = _opaque(det2 / d_w)
                kk = ti.exp(-cuu)
                g_amp = ti.cast(0.0, wt)  # sum of dL/dvalue * exp(-q/2)
                t_u = ti.cast(0.0, wt)  # (C sum_p dL/dvalue exp(-q/2) d)_u
                t_v = ti.cast(0.0, wt)
                m_uu = ti.cast(0.0, wt)  # sum_p dL/dvalue exp(-q/2) d d^T
                m_uv = ti.cast(0.0, wt)
                m_vv = ti.cast(0.0, wt)
                hit = 0
                off = cu - m_u
                for i in range(i0, i1 + 1):
                    j0, j1, dv = _row_span(i, cv, cu, nu, k2, m_u, m_v, inv_d, shear,
                                           inv_cuu)
                    if j0 <= j1:
                        hit = 1
                        s0 = ti.cast(0.0, wt)
                        s1 = ti.cast(0.0, wt)
                        s2 = ti.cast(0.0, wt)
                        if ti.static(incremental):
                            e, r = _row_start(j0 + off, dv, cuu, cuv, cvv)
                            for j in range(j0, j1 + 1):
                                du = j + off
                                pv = ti.cast(grad_views[t, i, j], wt) * e
                                s0 += pv
                                s1 += pv * du
                                s2 += pv * du * du
                                e *= r
                                r *= kk
                        else:
                            for j in range(j0, j1 + 1):
                                du = j + off
                                q = cuu * du * du + 2.0 * cuv * du * dv + cvv * dv * dv
                                pv = ti.cast(grad_views[t, i, j], wt) * ti.exp(-0.5 * q)
                                s0 += pv
                                s1 += pv * du
                                s2 += pv * du * du
                        g_amp += s0
                        t_u += cuu * s1 + cuv * dv * s0
                        t_v += cuv * s1 + cvv * dv * s0
                        m_uu += s2
                        m_uv += dv * s1
                        m_vv += dv * dv * s0
                if hit:
                    # dL/dm = amp C sum(...) d; dL/dSigma2' = 1/2 C M C - 1/2 g_amp amp C
                    # (through the conic and through det), M = amp sum(...) d d^T.
                    gm_u = amp * t_u
                    gm_v = amp * t_v
                    cm = ti.Matrix([[cuu, cuv], [cuv, cvv]])
                    mm = amp * ti.Matrix([[m_uu, m_uv], [m_uv, m_vv]])
                    g2 = 0.5 * (cm @ mm @ cm) - (0.5 * g_amp * amp) * cm
                    cw = ti.cast(c, wt)
                    sw = ti.cast(s, wt)
                    # Sigma2 = P Sigma P^T  =>  dL/dSigma = P^T G2 P.
                    a_mu += ti.cast(ti.Vector([cw * gm_u, gm_v, sw * gm_u]), float)
                    a_sig += ti.cast(ti.Vector([cw * cw * g2[0, 0], cw * g2[0, 1],
                                                cw * sw * g2[0, 0], g2[1, 1], sw * g2[0, 1],
                                                sw * sw * g2[0, 0]]), float)
                    a_rho += ti.cast(g_amp, float) * amp_per_rho
                    norm_sum += ti.cast(ti.sqrt(gm_u * gm_u + gm_v * gm_v), float)
                    n_vis += 1
        for k in ti.static(range(3)):
            acc[g, k] = a_mu[k]
        for k in ti.static(range(6)):
            acc[g, 3 + k] = a_sig[k]
        acc[g, 9] = a_rho
        uv_norm[g] = norm_sum
        visible[g] = n_vis
