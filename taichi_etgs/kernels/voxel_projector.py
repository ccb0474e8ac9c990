"""Matched voxel forward projector and back-projector (Joseph's model), single tilt axis.

The forward projector is ray driven: for each detector pixel it steps along the ray one
voxel row at a time along the axis the ray is most aligned with ("major" axis: Z when
|cos| >= |sin|), linearly interpolates the volume along the other axis, and multiplies by
the step length ``1 / max(|cos|, |sin|)``. The back-projector is its exact transpose,
gathered per voxel: voxel ``(z, x)`` contributes to pixel ``j`` with weight
``(1 - |u_j - u_c| / m) / m`` where ``u_c = x cos + z sin`` and ``m = max(|cos|, |sin|)``.
Both are gathers (no atomics) and share the per-view ``cos``/``sin`` arrays, so they are
matched to rounding error.

Layouts: ``volume_yzx`` (ny, nz, nx), ``sinogram_ytu`` (ny, n_tilts, nu), centred
coordinates (voxel ``i`` at ``i + 0.5 - n / 2``).
"""

from .._ti import ti

__all__ = ["forward_project_kernel", "back_project_kernel"]

_f32_3d = ti.types.ndarray(dtype=ti.f32, ndim=3)
_f32_1d = ti.types.ndarray(dtype=ti.f32, ndim=1)


@ti.func
def _major_range(f0, df, n_minor: int, n_major: int):
    """Major-axis indices k with the interpolation point f0 + k*df in (-1, n_minor)."""
    lo = 0.0
    hi = ti.cast(n_major, ti.f32)  # exclusive
    if df > 1e-12:
        lo = ti.max(lo, ti.floor((-1.0 - f0) / df) + 1.0)
        hi = ti.min(hi, ti.ceil((n_minor - f0) / df))
    elif df < -1e-12:
        lo = ti.max(lo, ti.floor((n_minor - f0) / df) + 1.0)
        hi = ti.min(hi, ti.ceil((-1.0 - f0) / df))
    elif f0 <= -1.0 or f0 >= n_minor:
        hi = 0.0
    # Clamped in float first: a nearly axis-parallel ray gives huge quotients.
    return int(lo), int(ti.max(hi, lo))


@ti.func
def _lerp_or_zero(a0, a1, w, below: bool, above: bool):
    """a0 + w (a1 - a0) with out-of-volume neighbours read as zero (branch-free loads)."""
    if below:
        a0 = 0.0
    if above:
        a1 = 0.0
    return a0 + w * (a1 - a0)


@ti.kernel
def forward_project_kernel(volume_yzx: _f32_3d, sinogram_ytu: _f32_3d,
                           cos_t: _f32_1d, sin_t: _f32_1d):
    """sinogram = A volume (overwrites the sinogram)."""
    ny, nz, nx = volume_yzx.shape[0], volume_yzx.shape[1], volume_yzx.shape[2]
    n_tilts, nu = sinogram_ytu.shape[1], sinogram_ytu.shape[2]
    for y, t, j in ti.ndrange(ny, n_tilts, nu):
        c = ti.cast(cos_t[t], ti.f32)
        s = ti.cast(sin_t[t], ti.f32)
        u = j + 0.5 - nu * 0.5
        acc = 0.0
        if ti.abs(c) >= ti.abs(s):
            # Row z_k = k + 0.5 - nz/2 meets the ray at x = (u - z_k s) / c.
            inv = 1.0 / c
            f0 = (u - (0.5 - nz * 0.5) * s) * inv + nx * 0.5 - 0.5
            df = -s * inv
            k_lo, k_hi = _major_range(f0, df, nx, nz)
            for k in range(k_lo, k_hi):
                f = f0 + k * df
                fl = ti.floor(f)
                i0 = int(fl)
                # Clamped indices keep the loads unconditional; the mask zeroes them.
                acc += _lerp_or_zero(volume_yzx[y, k, ti.max(i0, 0)],
                                     volume_yzx[y, k, ti.min(i0 + 1, nx - 1)],
                                     f - fl, i0 < 0, i0 + 1 > nx - 1)
            acc *= ti.abs(inv)
        else:
            inv = 1.0 / s
            f0 = (u - (0.5 - nx * 0.5) * c) * inv + nz * 0.5 - 0.5
            df = -c * inv
            i_lo, i_hi = _major_range(f0, df, nz, nx)
            for i in range(i_lo, i_hi):
                f = f0 + i * df
                fl = ti.floor(f)
                k0 = int(fl)
                acc += _lerp_or_zero(volume_yzx[y, ti.max(k0, 0), i],
                                     volume_yzx[y, ti.min(k0 + 1, nz - 1), i],
                                     f - fl, k0 < 0, k0 + 1 > nz - 1)
            acc *= ti.abs(inv)
        sinogram_ytu[y, t, j] = acc


@ti.kernel
def back_project_kernel(sinogram_ytu: _f32_3d, volume_yzx: _f32_3d,
                        cos_t: _f32_1d, sin_t: _f32_1d, half_width_t: _f32_1d,
                        inv_half_width_t: _f32_1d, view_scale_t: _f32_1d):
    """volume = A^T diag(view_weight) sinogram (overwrites the volume).

    Per view: ``half_width = max(|cos|, |sin|)``, its inverse, and
    ``view_scale = view_weight / half_width``, precomputed so that the inner loop has no
    division. The footprint half-width is <= 1, so at most two pixels are touched.
    """
    ny, nz, nx = volume_yzx.shape[0], volume_yzx.shape[1], volume_yzx.shape[2]
    n_tilts, nu = sinogram_ytu.shape[1], sinogram_ytu.shape[2]
    for y, k, i in ti.ndrange(ny, nz, nx):
        x = i + 0.5 - nx * 0.5
        z = k + 0.5 - nz * 0.5
        acc = 0.0
        for t in range(n_tilts):
            m = half_width_t[t]
            inv_m = inv_half_width_t[t]
            fj = x * cos_t[t] + z * sin_t[t] + nu * 0.5 - 0.5  # continuous pixel index
            j0 = int(ti.floor(fj - m)) + 1  # first pixel strictly inside the footprint
            j1 = j0 + 1
            w0 = ti.max(0.0, 1.0 - ti.abs(j0 - fj) * inv_m)
            w1 = ti.max(0.0, 1.0 - ti.abs(j1 - fj) * inv_m)
            if j0 < 0 or j0 > nu - 1:
                w0 = 0.0
            if j1 < 0 or j1 > nu - 1:
                w1 = 0.0
            acc += (w0 * sinogram_ytu[y, t, ti.min(ti.max(j0, 0), nu - 1)]
                    + w1 * sinogram_ytu[y, t, ti.min(ti.max(j1, 0), nu - 1)]) * view_scale_t[t]
        volume_yzx[y, k, i] = acc
