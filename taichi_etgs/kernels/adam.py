"""Fused Adam update of one flat parameter array, in place.

One thread per element reads its gradient and both moments once and writes the parameter
and both moments once (the formula of PyTorch's ``torch.optim.Adam``, as 3DGS uses it):

    m <- beta1 m + (1 - beta1) g
    v <- beta2 v + (1 - beta2) g^2
    p <- p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The bias corrections depend only on the step count ``t`` and are computed once per step
by the caller (in float64) and passed as ``step_size = lr / (1 - beta1^t)`` and
``inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)``.

Two variants, one per float type, so that float64 parameters are updated with float64
scalars (a float32 ``beta2`` would be 0.99900001 and drift from the reference) and
float32 parameters run in float32 on the GPU. Arrays must be C-contiguous and 1D (pass
``a.reshape(-1)`` of a contiguous array: a view, so the update lands in ``a``).
"""

from .._ti import ti

__all__ = ["adam_update_f32_kernel", "adam_update_f64_kernel"]

_f32_1d = ti.types.ndarray(dtype=ti.f32, ndim=1)
_f64_1d = ti.types.ndarray(dtype=ti.f64, ndim=1)


@ti.kernel
def adam_update_f32_kernel(param: _f32_1d, grad: _f32_1d, exp_avg: _f32_1d,
                           exp_avg_sq: _f32_1d, step_size: ti.f32, beta1: ti.f32,
                           one_minus_beta1: ti.f32, beta2: ti.f32, one_minus_beta2: ti.f32,
                           inv_sqrt_bc2: ti.f32, eps: ti.f32):
    """Adam step on float32 arrays. All [n]."""
    for i in param:
        g = grad[i]
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = param[i] - step_size * m / (ti.sqrt(v) * inv_sqrt_bc2 + eps)


@ti.kernel
def adam_update_f64_kernel(param: _f64_1d, grad: _f64_1d, exp_avg: _f64_1d,
                           exp_avg_sq: _f64_1d, step_size: ti.f64, beta1: ti.f64,
                           one_minus_beta1: ti.f64, beta2: ti.f64, one_minus_beta2: ti.f64,
                           inv_sqrt_bc2: ti.f64, eps: ti.f64):
    """Adam step on float64 arrays. All [n]."""
    for i in param:
        g = grad[i]
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = param[i] - step_size * m / (ti.sqrt(v) * inv_sqrt_bc2 + eps)
