"""The ice slab's projections and their derivatives, one thread per detector column.

The same midpoint quadrature across the slab as the numpy reference,
:meth:`taichi_etgs.gaussian.background.SlabBackground.profiles` (its docstring and the
module's give the formula): a fit evaluates the slab at every step, and on a GPU the
numpy version was most of a step's host time on wide views. float64 throughout, as the
reference.
"""

from .._ti import ti

__all__ = ["slab_profiles_kernel"]

_f64_1d = ti.types.ndarray(dtype=ti.f64, ndim=1)
_f64_2d = ti.types.ndarray(dtype=ti.f64, ndim=2)
_f64_3d = ti.types.ndarray(dtype=ti.f64, ndim=3)

# Beyond this the logistic is 0 or 1 in float64, as the numpy reference computes it.
# A quarter-voxel-soft end saturates 10 voxels from it: most of a ray's nodes are spared
# the exponential, and those inside the slab, away from its faces and ends, add exactly 1
# to the sum and nothing to the derivatives, so they are counted instead of visited.
_SATURATED = 40.0


@ti.func
def _sigmoid(a):
    value = ti.cast(1.0, ti.f64)
    if a < -_SATURATED:
        value = 0.0
    elif a < _SATURATED:
        value = 1.0 / (1.0 + ti.exp(-a))
    return value


@ti.func
def _inside_nodes(zeta0, dz, first, last, x_lo, x_hi, e, along, tan_a):
    """The nodes ``k`` in ``first..last`` (where both faces' logistics are 1) at which the
    ray ``xi = along - zeta tan_a`` has both ends' logistics at 1 too, one node inside the
    exact bounds for rounding; ``last < first`` where there is none."""
    x_min = x_lo + _SATURATED * e
    x_max = x_hi - _SATURATED * e
    lo = zeta0 + (first - 1) * dz
    hi = zeta0 + (last + 1) * dz
    if tan_a > 0.0:
        lo = ti.max(lo, (along - x_max) / tan_a)
        hi = ti.min(hi, (along - x_min) / tan_a)
    elif tan_a < 0.0:
        lo = ti.max(lo, (along - x_min) / tan_a)
        hi = ti.min(hi, (along - x_max) / tan_a)
    elif along < x_min or along > x_max:
        hi = lo - 1.0
    k_first = 0
    k_last = -1
    if hi > lo:
        k_first = ti.max(ti.cast(ti.ceil((lo - zeta0) / dz), ti.i32) + 1, first)
        k_last = ti.min(ti.cast(ti.floor((hi - zeta0) / dz), ti.i32) - 1, last)
    return k_first, k_last


@ti.kernel
def slab_profiles_kernel(tilts_rad: _f64_1d, u: _f64_1d, u_shift: _f64_1d, zeta: _f64_1d,
                         faces: _f64_2d, interior: ti.types.ndarray(dtype=ti.i32, ndim=1),
                         slab: _f64_1d, profiles: _f64_2d,
                         jacobian: _f64_3d, with_jacobian: ti.i32):
    """profiles[t, j]: the slab's line integral at detector column ``u[j] - u_shift[t]`` of
    view ``t`` (a view moved by ``u_shift[t]``);
    jacobian[t, j, :]: its derivatives by (density, z_lo, z_hi, x_lo, x_hi, angle) when
    ``with_jacobian``. ``slab``: (density, z_lo, z_hi, x_lo, x_hi, angle, edge, dzeta);
    ``zeta``: the quadrature's nodes across the slab, evenly spaced; ``faces[k]``: the
    two faces' logistics at node ``k`` (the same for every ray, so computed once by the
    caller); ``interior``: the first and last node at which both are 1 (last < first:
    none)."""
    density, x_lo, x_hi = slab[0], slab[3], slab[4]
    angle, e, dz = slab[5], slab[6], slab[7]
    inv_e = 1.0 / e
    for t, j in ti.ndrange(tilts_rad.shape[0], u.shape[0]):
        alpha = tilts_rad[t] - angle
        inv_cos = 1.0 / ti.cos(alpha)
        tan_a = ti.tan(alpha)
        sin_a = ti.sin(alpha)
        uj = u[j] - u_shift[t]
        # float64 accumulators: a bare 0.0 takes the runtime's default type (float32).
        base = ti.cast(0.0, ti.f64)
        d_lo = ti.cast(0.0, ti.f64)
        d_hi = ti.cast(0.0, ti.f64)
        d_xlo = ti.cast(0.0, ti.f64)
        d_xhi = ti.cast(0.0, ti.f64)
        d_xi = ti.cast(0.0, ti.f64)
        skip_first, skip_last = _inside_nodes(zeta[0], dz, interior[0], interior[1], x_lo,
                                              x_hi, e, uj * inv_cos, tan_a)
        for k in range(zeta.shape[0]):
            if skip_first <= k and k <= skip_last:
                continue
            z = zeta[k]
            s_lo = faces[k, 0]
            s_hi = faces[k, 1]
            s_z = s_lo * s_hi
            xi = uj * inv_cos - z * tan_a
            x_lo_s = _sigmoid((xi - x_lo) * inv_e)
            x_hi_s = _sigmoid((x_hi - xi) * inv_e)
            s_x = x_lo_s * x_hi_s
            base += s_x * s_z
            if with_jacobian != 0:
                d_lo += s_x * (-s_lo * (1.0 - s_lo) * s_hi * inv_e)
                d_hi += s_x * (s_lo * s_hi * (1.0 - s_hi) * inv_e)
                d_xlo += (-x_lo_s * (1.0 - x_lo_s) * x_hi_s * inv_e) * s_z
                d_xhi += (x_lo_s * x_hi_s * (1.0 - x_hi_s) * inv_e) * s_z
                ds_x = (x_lo_s * (1.0 - x_lo_s) * x_hi_s
                        - x_lo_s * x_hi_s * (1.0 - x_hi_s)) * inv_e
                d_xi += ds_x * (uj * sin_a - z) * inv_cos * inv_cos * s_z
        if skip_last >= skip_first:
            base += ti.cast(skip_last - skip_first + 1, ti.f64)
        w = dz * inv_cos
        value = density * w * base
        profiles[t, j] = value
        if with_jacobian != 0:
            c = density * w
            jacobian[t, j, 0] = w * base
            jacobian[t, j, 1] = c * d_lo
            jacobian[t, j, 2] = c * d_hi
            jacobian[t, j, 3] = c * d_xlo
            jacobian[t, j, 4] = c * d_xhi
            # d/d angle = -d/d alpha: through 1/cos(alpha) and through xi.
            jacobian[t, j, 5] = -(tan_a * value + c * d_xi)
