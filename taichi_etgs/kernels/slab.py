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


@ti.func
def _sigmoid(a):
    return 0.5 * (1.0 + ti.tanh(0.5 * a))


@ti.kernel
def slab_profiles_kernel(tilts_rad: _f64_1d, u: _f64_1d, u_shift: _f64_1d, zeta: _f64_1d,
                         slab: _f64_1d, profiles: _f64_2d, jacobian: _f64_3d,
                         with_jacobian: ti.i32):
    """profiles[t, j]: the slab's line integral at detector column ``u[j] - u_shift[t]`` of
    view ``t`` (a view moved by ``u_shift[t]``);
    jacobian[t, j, :]: its derivatives by (density, z_lo, z_hi, x_lo, x_hi, angle) when
    ``with_jacobian``. ``slab``: (density, z_lo, z_hi, x_lo, x_hi, angle, edge, dzeta);
    ``zeta``: the quadrature's nodes across the slab."""
    density, z_lo, z_hi = slab[0], slab[1], slab[2]
    x_lo, x_hi, angle, e, dz = slab[3], slab[4], slab[5], slab[6], slab[7]
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
        for k in range(zeta.shape[0]):
            z = zeta[k]
            s_lo = _sigmoid((z - z_lo) / e)
            s_hi = _sigmoid((z_hi - z) / e)
            s_z = s_lo * s_hi
            xi = uj * inv_cos - z * tan_a
            x_lo_s = _sigmoid((xi - x_lo) / e)
            x_hi_s = _sigmoid((x_hi - xi) / e)
            s_x = x_lo_s * x_hi_s
            base += s_x * s_z
            if with_jacobian != 0:
                d_lo += s_x * (-s_lo * (1.0 - s_lo) * s_hi / e)
                d_hi += s_x * (s_lo * s_hi * (1.0 - s_hi) / e)
                d_xlo += (-x_lo_s * (1.0 - x_lo_s) * x_hi_s / e) * s_z
                d_xhi += (x_lo_s * x_hi_s * (1.0 - x_hi_s) / e) * s_z
                ds_x = (x_lo_s * (1.0 - x_lo_s) * x_hi_s - x_lo_s * x_hi_s * (1.0 - x_hi_s)) / e
                d_xi += ds_x * (uj * sin_a - z) * inv_cos * inv_cos * s_z
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
