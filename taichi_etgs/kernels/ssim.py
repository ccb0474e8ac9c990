"""SSIM between rendered and measured views, its gradient, and the data term's row sums
(``|x - y|`` or ``(x - y)^2``) of the view loss.

Definitions (Wang et al. 2004, as 3DGS uses them): with ``G`` an 11 x 11 Gaussian window
(sigma 1.5 px, the 11 taps normalised to sum 1, applied as two separable 1D passes), and
``x`` the rendered, ``y`` the measured view,

    mu_x = G x,  mu_y = G y,  m_xx = G x^2,  m_yy = G y^2,  m_xy = G (x y)
    A1 = 2 mu_x mu_y + C1,          A2 = 2 (m_xy - mu_x mu_y) + C2
    B1 = mu_x^2 + mu_y^2 + C1,      B2 = (m_xx - mu_x^2) + (m_yy - mu_y^2) + C2
    S  = A1 A2 / (B1 B2)             (per pixel; SSIM of a view = mean of S over its pixels)

Padding: **zero padding** (the blur of a pixel near the border sums only the taps that fall
inside the image, without renormalising), the same in forward and backward, as the
``conv2d(padding=5)`` of the 3DGS / pytorch-ssim implementations. Why zeros: ``G`` is then a
symmetric matrix, so the backward pass is the *same* blur (reflect padding would need its
transpose, a different folding at the borders); and views are normalised to about zero
mean before the loss, so padding with zeros is padding with the typical value. Every pixel,
border included, enters the mean (no "valid" crop), so the border is fitted too.

Gradient of a view's pixel sum ``sum_p S(p)`` with respect to ``x(q)`` (``G`` symmetric):

    d0 = dS/dmu_x = 2 (mu_y (A2 - A1) - mu_x S (B2 - B1)) / (B1 B2)
    d1 = dS/dm_xx = -S / B2
    d2 = dS/dm_xy = 2 A1 / (B1 B2)
    grad(q) = (G d0)(q) + 2 x(q) (G d1)(q) + y(q) (G d2)(q)

Kernels compute in the arrays' float type (float32, or float64 when Taichi runs in f64 for
gradient checks); scalar arguments take Taichi's default float. Sums over pixels are
done per image row without atomics, so results are deterministic (bit-for-bit repeatable
runs need that). Layouts: views ``[n_views, ny, nx]``, channel stacks
``[n_channels, n_views, ny, nx]``.

Three kernels, each with one thread per image row (a row's pixels in a serial loop, so the
loop index needs no division, and the image's interior runs without border tests):
:func:`row_blur_moments_kernel` (horizontal blur of the five moments),
:func:`ssim_rows_kernel` (vertical blur, S, its partials, the row sums of S and of
``|x - y|^power``, and the horizontal blur of the partials) and :func:`ssim_grad_kernel`
(vertical blur of the partials and the gradient, with the data term's: ``sign(x - y)``
for ``power`` 1, ``x - y`` for 2).
"""

import math

from .._ti import ti

__all__ = [
    "WINDOW_RADIUS",
    "WINDOW_SIGMA",
    "row_blur_moments_kernel",
    "ssim_grad_kernel",
    "ssim_rows_kernel",
    "window_taps",
]

#: Standard deviation of the Gaussian window, pixels.
WINDOW_SIGMA = 1.5
#: Half-width of the window: 11 taps.
WINDOW_RADIUS = 5
_WINDOW = 2 * WINDOW_RADIUS + 1


def window_taps() -> tuple[float, ...]:
    """The 11 normalised 1D taps ``exp(-k^2 / (2 sigma^2)) / sum``, k = -5..5."""
    raw = [math.exp(-0.5 * (k / WINDOW_SIGMA) ** 2)
           for k in range(-WINDOW_RADIUS, WINDOW_RADIUS + 1)]
    total = math.fsum(raw)
    return tuple(w / total for w in raw)


# Compile-time constants: the static loops below unroll into 11 multiply-adds each.
_TAPS = window_taps()

_nd1 = ti.types.ndarray(ndim=1)
_nd3 = ti.types.ndarray(ndim=3)
_nd4 = ti.types.ndarray(ndim=4)


@ti.func
def _column_ranges(nx):
    """[0, j_lo), [j_lo, j_hi), [j_hi, nx): columns whose window crosses the left border,
    lies inside the row, crosses the right border (the middle range may be empty)."""
    j_lo = ti.min(WINDOW_RADIUS, nx)
    j_hi = ti.max(nx - WINDOW_RADIUS, j_lo)
    return j_lo, j_hi


@ti.func
def _h_moments(x: ti.template(), y: ti.template(), out: ti.template(), v, i, j, nx,
               checked: ti.template()):
    """out[:, v, i, j] = horizontal blur of (x, y, x^2, y^2, x y) at (v, i, j); taps
    outside the row add nothing (zero padding), tested only when ``checked``."""
    s_x = 0.0 * x[v, i, j]  # zero of the arrays' float type
    s_y = s_x
    s_xx = s_x
    s_yy = s_x
    s_xy = s_x
    for k in ti.static(range(_WINDOW)):
        jj = j + k - WINDOW_RADIUS
        if not ti.static(checked) or (jj >= 0 and jj < nx):
            a = x[v, i, jj]
            b = y[v, i, jj]
            w = ti.static(_TAPS[k])
            s_x += w * a
            s_y += w * b
            s_xx += w * a * a
            s_yy += w * b * b
            s_xy += w * a * b
    out[0, v, i, j] = s_x
    out[1, v, i, j] = s_y
    out[2, v, i, j] = s_xx
    out[3, v, i, j] = s_yy
    out[4, v, i, j] = s_xy


@ti.kernel
def row_blur_moments_kernel(x: _nd3, y: _nd3, out: _nd4):
    """out[c] = horizontal blur of (x, y, x^2, y^2, x y)[c]. out: [5, n_views, ny, nx]."""
    for v, i in ti.ndrange(x.shape[0], x.shape[1]):
        nx = x.shape[2]
        j_lo, j_hi = _column_ranges(nx)
        for j in range(0, j_lo):
            _h_moments(x, y, out, v, i, j, nx, True)
        for j in range(j_lo, j_hi):
            _h_moments(x, y, out, v, i, j, nx, False)
        for j in range(j_hi, nx):
            _h_moments(x, y, out, v, i, j, nx, True)


@ti.func
def _h_blur3(src: ti.template(), dst: ti.template(), v, i, j, nx, checked: ti.template()):
    """dst[:3, v, i, j] = horizontal blur of src[:3, v, i, :] at column j (zero padding)."""
    a0 = 0.0 * src[0, v, i, j]
    a1 = a0
    a2 = a0
    for k in ti.static(range(_WINDOW)):
        jj = j + k - WINDOW_RADIUS
        if not ti.static(checked) or (jj >= 0 and jj < nx):
            w = ti.static(_TAPS[k])
            a0 += w * src[0, v, i, jj]
            a1 += w * src[1, v, i, jj]
            a2 += w * src[2, v, i, jj]
    dst[0, v, i, j] = a0
    dst[1, v, i, j] = a1
    dst[2, v, i, j] = a2


@ti.func
def _ssim_row(row_blurred: ti.template(), x: ti.template(), y: ti.template(), c1, c2,
              dmaps: ti.template(), v, i, ny, nx, need_grad, power, checked: ti.template()):
    """Row i of :func:`ssim_rows_kernel`: (sum_j S, sum_j |x - y|^power); the window's
    rows outside the image are tested only when ``checked``."""
    s_sum = ti.cast(0.0, ti.f64)
    data_sum = ti.cast(0.0, ti.f64)
    for j in range(nx):
        mu_x = 0.0 * row_blurred[0, v, i, j]
        mu_y = mu_x
        m_xx = mu_x
        m_yy = mu_x
        m_xy = mu_x
        for k in ti.static(range(_WINDOW)):
            ii = i + k - WINDOW_RADIUS
            if not ti.static(checked) or (ii >= 0 and ii < ny):
                w = ti.static(_TAPS[k])
                mu_x += w * row_blurred[0, v, ii, j]
                mu_y += w * row_blurred[1, v, ii, j]
                m_xx += w * row_blurred[2, v, ii, j]
                m_yy += w * row_blurred[3, v, ii, j]
                m_xy += w * row_blurred[4, v, ii, j]
        a1 = 2.0 * mu_x * mu_y + c1
        a2 = 2.0 * (m_xy - mu_x * mu_y) + c2
        b1 = mu_x * mu_x + mu_y * mu_y + c1
        b2 = (m_xx - mu_x * mu_x) + (m_yy - mu_y * mu_y) + c2
        inv_b = 1.0 / (b1 * b2)
        s = a1 * a2 * inv_b
        s_sum += ti.cast(s, ti.f64)
        e = ti.cast(x[v, i, j] - y[v, i, j], ti.f64)
        data_sum += ti.select(power == 1, ti.abs(e), e * e)
        if need_grad != 0:
            dmaps[0, v, i, j] = 2.0 * (mu_y * (a2 - a1) - mu_x * s * (b2 - b1)) * inv_b
            dmaps[1, v, i, j] = -s / b2
            dmaps[2, v, i, j] = 2.0 * a1 * inv_b
    return s_sum, data_sum


@ti.kernel
def ssim_rows_kernel(row_blurred: _nd4, x: _nd3, y: _nd3, c1: float, c2: float,
                     dmaps: _nd4, dmaps_blurred: _nd4,
                     row_sums: ti.types.ndarray(dtype=ti.f64, ndim=3), need_grad: ti.i32,
                     power: ti.i32):
    """Vertical blur of the five moments, S per pixel and the row sums; with ``need_grad``
    also S's partials and their horizontal blur.

    row_blurred: output of :func:`row_blur_moments_kernel`. [5, n_views, ny, nx]
    x, y: the rendered and measured views. [n_views, ny, nx]
    dmaps: (d0, d1, d2) per pixel, written when ``need_grad`` != 0 (scratch: each row is
        written and read back by its own thread; any shape otherwise). [3, n_views, ny, nx]
    dmaps_blurred: (d0, d1, d2) blurred horizontally, written when ``need_grad`` != 0
        (any shape otherwise). [3, n_views, ny, nx]
    row_sums: ``sum_j S`` and ``sum_j |x - y|^power`` of each row, accumulated serially in
        j in float64 (deterministic). [2, n_views, ny]
    power: the data term's, 1 (L1) or 2 (squared error).
    """
    for v, i in ti.ndrange(x.shape[0], x.shape[1]):
        ny = x.shape[1]
        nx = x.shape[2]
        s_sum = ti.cast(0.0, ti.f64)
        data_sum = ti.cast(0.0, ti.f64)
        if i >= WINDOW_RADIUS and i < ny - WINDOW_RADIUS:
            s_sum, data_sum = _ssim_row(row_blurred, x, y, c1, c2, dmaps, v, i, ny, nx,
                                        need_grad, power, False)
        else:
            s_sum, data_sum = _ssim_row(row_blurred, x, y, c1, c2, dmaps, v, i, ny, nx,
                                        need_grad, power, True)
        row_sums[0, v, i] = s_sum
        row_sums[1, v, i] = data_sum
        if need_grad != 0:
            j_lo, j_hi = _column_ranges(nx)
            for j in range(0, j_lo):
                _h_blur3(dmaps, dmaps_blurred, v, i, j, nx, True)
            for j in range(j_lo, j_hi):
                _h_blur3(dmaps, dmaps_blurred, v, i, j, nx, False)
            for j in range(j_hi, nx):
                _h_blur3(dmaps, dmaps_blurred, v, i, j, nx, True)


@ti.func
def _grad_row(row_blurred_d: ti.template(), x: ti.template(), y: ti.template(), cs, cl,
              grad: ti.template(), v, i, ny, power, checked: ti.template()):
    """Row i of :func:`ssim_grad_kernel` (window rows outside the image tested only when
    ``checked``)."""
    for j in range(x.shape[2]):
        g0 = 0.0 * x[v, i, j]
        g1 = g0
        g2 = g0
        for k in ti.static(range(_WINDOW)):
            ii = i + k - WINDOW_RADIUS
            if not ti.static(checked) or (ii >= 0 and ii < ny):
                w = ti.static(_TAPS[k])
                g0 += w * row_blurred_d[0, v, ii, j]
                g1 += w * row_blurred_d[1, v, ii, j]
                g2 += w * row_blurred_d[2, v, ii, j]
        a = x[v, i, j]
        b = y[v, i, j]
        data = a - b
        if power == 1:
            data = 0.0 * a
            if a > b:
                data = 1.0
            elif a < b:
                data = -1.0
        grad[v, i, j] = cs * (g0 + 2.0 * a * g1 + b * g2) + cl * data


@ti.kernel
def ssim_grad_kernel(row_blurred_d: _nd4, x: _nd3, y: _nd3, coef_ssim: _nd1,
                     coef_data: _nd1, grad: _nd3, power: ti.i32):
    """grad = coef_ssim[v] (G d0 + 2 x G d1 + y G d2) + coef_data[v] D(x - y), with
    ``D(e) = sign(e)`` for ``power`` 1 (L1) and ``D(e) = e`` for 2.

    row_blurred_d: (d0, d1, d2) blurred horizontally (``dmaps_blurred`` of
        :func:`ssim_rows_kernel`); the vertical pass happens here. [3, n_views, ny, nx]
    coef_ssim, coef_data: per-view factors (e.g. ``-w lambda / (W n_pix)``). [n_views]
    grad: output, overwritten. [n_views, ny, nx]

    ``sign(0) = 0``: the L1 subgradient chosen where rendered equals measured.
    """
    for v, i in ti.ndrange(x.shape[0], x.shape[1]):
        ny = x.shape[1]
        if i >= WINDOW_RADIUS and i < ny - WINDOW_RADIUS:
            _grad_row(row_blurred_d, x, y, coef_ssim[v], coef_data[v], grad, v, i, ny, power,
                      False)
        else:
            _grad_row(row_blurred_d, x, y, coef_ssim[v], coef_data[v], grad, v, i, ny, power,
                      True)
