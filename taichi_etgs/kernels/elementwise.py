"""Element-wise kernels for iterative reconstructions, so data stays on the device."""

from .._ti import ti

__all__ = ["weighted_residual_kernel", "sirt_update_kernel", "safe_reciprocal_kernel"]

_f32_3d = ti.types.ndarray(dtype=ti.f32, ndim=3)


@ti.kernel
def safe_reciprocal_kernel(values: _f32_3d, floor: ti.f32):
    """values = 1 / values where values > floor, else 0 (rays or voxels the data miss)."""
    for i, j, k in values:
        v = values[i, j, k]
        values[i, j, k] = 1.0 / v if v > floor else 0.0


@ti.kernel
def weighted_residual_kernel(measured: _f32_3d, projected: _f32_3d, row_inv: _f32_3d) -> ti.f64:
    """projected = (measured - projected) * row_inv; returns sum of r^2 * row_inv."""
    total = ti.cast(0.0, ti.f64)
    for i, j, k in measured:
        r = measured[i, j, k] - projected[i, j, k]
        w = row_inv[i, j, k]
        projected[i, j, k] = r * w
        total += ti.cast(r * r * w, ti.f64)
    return total


@ti.kernel
def sirt_update_kernel(volume: _f32_3d, correction: _f32_3d, col_inv: _f32_3d,
                       relaxation: ti.f32, positivity: ti.i32):
    """volume += relaxation * col_inv * correction, clamped at 0 when positivity is set."""
    for i, j, k in volume:
        v = volume[i, j, k] + relaxation * col_inv[i, j, k] * correction[i, j, k]
        if positivity != 0 and v < 0.0:
            v = 0.0
        volume[i, j, k] = v
