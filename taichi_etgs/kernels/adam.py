"""Fused Adam update of one flat parameter array, in place.

One thread per element reads its gradient and both moments once and writes the parameter
and both moments once (the formula of PyTorch's ``torch.optim.Adam``, as 3DGS uses it):

    m <- beta1 m + (1 - beta1) g
    v <- beta2 v + (1 - beta2) g^2
    p <- p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The bias corrections depend only on the step count ``t`` and are computed once per step
by the caller (in float64) and passed as ``step_size = lr / (1 - beta1^t)`` and
``inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)``.

One kernel for both float types: its arrays are dtype-generic (Taichi compiles one
instance per dtype) and the scalars travel in ``hyper``, an array of the parameters'
dtype, so float64 parameters are updated with float64 scalars (a float32 ``beta2`` would
be 0.99900001 and drift from the reference) and float32 ones run in float32 on the GPU.
Arrays must be C-contiguous and 1D (pass ``a.reshape(-1)`` of a contiguous array: a view,
so the update lands in ``a``).
"""

from .._ti import ti

__all__ = ["HYPER_FIELDS", "adam_update_kernel"]

#: Order of the scalars in ``hyper``.
HYPER_FIELDS = ("step_size", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                "inv_sqrt_bc2", "eps")

_nd1 = ti.types.ndarray(ndim=1)


@ti.kernel
def adam_update_kernel(param: _nd1, grad: _nd1, exp_avg: _nd1, exp_avg_sq: _nd1, hyper: _nd1):
    """Adam step in the arrays' own float type. All [n]; ``hyper`` [7] (HYPER_FIELDS)."""
    step_size, beta1, one_minus_beta1 = hyper[0], hyper[1], hyper[2]
    beta2, one_minus_beta2, inv_sqrt_bc2, eps = hyper[3], hyper[4], hyper[5], hyper[6]
    for i in param:
        g = grad[i]
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = param[i] - step_size * m / (ti.sqrt(v) * inv_sqrt_bc2 + eps)
