"""Fused Adam kernel and optimiser against a numpy Adam, learning-rate schedule, resizing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taichi_etgs.gaussian.optim import (
    DEFAULT_LR,
    GROUPS,
    Adam,
    learning_rates,
    lr_schedule,
    scene_extent_vox,
)
from taichi_etgs.gaussian.params import GaussianParams

LR = {"means_xyz": 0.05, "log_scales": 0.01, "quats_wxyz": 0.02, "density_raw": 0.03}


def _params(rng: np.random.Generator, n: int = 7, dtype=np.float64) -> GaussianParams:
    return GaussianParams(rng.standard_normal((n, 3)), rng.standard_normal((n, 3)) - 1.0,
                          rng.standard_normal((n, 4)), rng.standard_normal(n)).astype(dtype)


def _grads(rng: np.random.Generator, n: int = 7, scale: float = 1.0) -> GaussianParams:
    return GaussianParams(*(scale * rng.standard_normal(s)
                            for s in [(n, 3), (n, 3), (n, 4), (n,)]))


class NumpyAdam:
    """Textbook Adam (Kingma & Ba, PyTorch's form), float64, one array per group."""

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-15):
        self.lr, self.b1, self.b2, self.eps = dict(lr), beta1, beta2, eps
        self.m = {g: np.zeros_like(getattr(params, g), dtype=np.float64) for g in GROUPS}
        self.v = {g: np.zeros_like(getattr(params, g), dtype=np.float64) for g in GROUPS}
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        out = {}
        for g in GROUPS:
            grad = np.asarray(getattr(grads, g), dtype=np.float64)
            self.m[g] = self.b1 * self.m[g] + (1 - self.b1) * grad
            self.v[g] = self.b2 * self.v[g] + (1 - self.b2) * grad ** 2
            m_hat = self.m[g] / (1 - self.b1 ** self.t)
            v_hat = self.v[g] / (1 - self.b2 ** self.t)
            out[g] = np.asarray(getattr(params, g), np.float64) - self.lr[g] * m_hat / (
                np.sqrt(v_hat) + self.eps)
        return GaussianParams(**out)


def _run_both(rng, dtype, n_steps=6):
    params = _params(rng, dtype=dtype)
    ref_params = params.astype(np.float64)
    opt = Adam(params, LR)
    ref = NumpyAdam(ref_params, LR)
    for k in range(n_steps):
        grads = _grads(rng, scale=10.0 ** (k - 3))  # magnitudes 1e-3 .. 1e2
        if k == 3:  # a schedule changes the rates between steps
            opt.lr["means_xyz"] = ref.lr["means_xyz"] = 0.005
        opt.step(params, grads)
        ref_params = ref.step(ref_params, grads)
    return params, opt, ref_params, ref


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_adam_matches_numpy_reference(taichi_arch, rng, dtype):
    params, opt, ref_params, ref = _run_both(rng, dtype)
    assert opt.step_count == ref.t == 6
    if dtype == np.float64:
        # Same float64 formula, rewritten (sqrt(v)/sqrt(bc2) vs sqrt(v/bc2)): rounding only.
        rtol, atol = 1e-12, 1e-14
    else:
        # float32 storage of parameters (~1) and moments: a few ulps (6e-8) per step.
        rtol, atol = 1e-5, 2e-6
    for g in GROUPS:
        assert getattr(params, g).dtype == dtype
        np.testing.assert_allclose(getattr(params, g), getattr(ref_params, g), rtol=rtol,
                                   atol=atol, err_msg=g)
        np.testing.assert_allclose(getattr(opt.exp_avg, g), ref.m[g], rtol=rtol, atol=atol)
        np.testing.assert_allclose(getattr(opt.exp_avg_sq, g), ref.v[g], rtol=rtol,
                                   atol=atol * 1e-3)


def test_first_step_is_lr_times_sign_and_in_place(taichi_cpu, rng):
    params = _params(rng)
    before = params.copy()
    arrays = [getattr(params, g) for g in GROUPS]
    grads = _grads(rng)
    Adam(params, LR).step(params, grads)
    for g, a in zip(GROUPS, arrays, strict=True):
        assert getattr(params, g) is a  # contiguous float arrays are updated in place
        # Bias correction makes step 1 lr * g / (|g| + eps) = lr * sign(g); eps / |g| and
        # the rounding of p - (p - step) stay below 1e-10 for these |g| >~ 1e-3.
        step = getattr(before, g) - getattr(params, g)
        np.testing.assert_allclose(step, LR[g] * np.sign(getattr(grads, g)), rtol=1e-10)


def test_tiny_gradients_give_the_same_steps(taichi_cpu, rng):
    """eps = 1e-15: Adam stays scale-invariant for gradients of 1e-9 (a small Gaussian's)."""
    p1 = _params(rng, dtype=np.float32)
    p2 = p1.copy()
    o1, o2 = Adam(p1, LR), Adam(p2, LR)
    for _ in range(3):
        # |g| in [0.5, 2]: scaled by 1e-9, every element stays >= 5e-10 >> eps.
        g = GaussianParams(*(rng.uniform(0.5, 2.0, s) * rng.choice([-1.0, 1.0], s)
                             for s in [(7, 3), (7, 3), (7, 4), (7,)]))
        o1.step(p1, g)
        o2.step(p2, GaussianParams(*(1e-9 * getattr(g, f) for f in GROUPS)))
    for g in GROUPS:
        # float32 rounding of moments and step; eps / sqrt(v) <= 2e-6 here.
        np.testing.assert_allclose(getattr(p2, g), getattr(p1, g), rtol=1e-5, atol=1e-6)


def test_zero_gradient_leaves_parameters(taichi_cpu, rng):
    params = _params(rng)
    before = params.copy()
    Adam(params, LR).step(params, params.zeros_like())
    for g in GROUPS:
        np.testing.assert_array_equal(getattr(params, g), getattr(before, g))


def test_non_contiguous_params_are_replaced_and_updated(taichi_cpu, rng):
    params = _params(rng)
    params.means_xyz = np.asfortranarray(params.means_xyz)
    ref_params = params.copy()
    opt, ref = Adam(params, LR), NumpyAdam(ref_params, LR)
    grads = _grads(rng)
    opt.step(params, grads)
    ref_params = ref.step(ref_params, grads)
    assert params.means_xyz.flags.c_contiguous
    np.testing.assert_allclose(params.means_xyz, ref_params.means_xyz, rtol=1e-12)


def test_select_and_append(taichi_cpu, rng):
    params = _params(rng, n=5)
    opt = Adam(params, LR)
    opt.step(params, _grads(rng, n=5))
    m_before = opt.exp_avg.copy()
    v_before = opt.exp_avg_sq.copy()
    keep = np.array([True, False, True, True, False])
    opt.select(keep)
    assert opt.n == 3
    for g in GROUPS:
        np.testing.assert_array_equal(getattr(opt.exp_avg, g), getattr(m_before, g)[keep])
        np.testing.assert_array_equal(getattr(opt.exp_avg_sq, g), getattr(v_before, g)[keep])
    opt.append(4)
    assert opt.n == 7
    for g in GROUPS:
        m = getattr(opt.exp_avg, g)
        assert m.shape[0] == 7 and m.shape[1:] == getattr(params, g).shape[1:]
        assert m.dtype == getattr(params, g).dtype
        np.testing.assert_array_equal(m[:3], getattr(m_before, g)[keep])
        np.testing.assert_array_equal(m[3:], 0.0)
        np.testing.assert_array_equal(getattr(opt.exp_avg_sq, g)[3:], 0.0)
    # Integer indices (may repeat): children inherit their parent's moments.
    opt.select(np.array([0, 0, 2]))
    np.testing.assert_array_equal(opt.exp_avg.means_xyz[1], m_before.means_xyz[0])
    # The resized optimiser steps the resized parameters; N must agree.
    new_params = _params(rng, n=3)
    opt.step(new_params, _grads(rng, n=3))
    assert opt.step_count == 2
    with pytest.raises(ValueError, match="select/append"):
        opt.step(_params(rng, n=4), _grads(rng, n=4))
    with pytest.raises(ValueError, match="keep mask"):
        opt.select(np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="n_new"):
        opt.append(-1)


def test_state_round_trip_continues_identically(taichi_cpu, rng):
    params = _params(rng)
    opt = Adam(params, LR)
    opt.step(params, _grads(rng))
    clone_params = params.copy()
    clone = Adam.from_state(opt.state())
    assert clone.step_count == 1 and clone.lr == opt.lr and clone.eps == 1e-15
    g = _grads(rng)
    opt.step(params, g)
    clone.step(clone_params, g)
    for name in GROUPS:
        np.testing.assert_array_equal(getattr(params, name), getattr(clone_params, name))


def test_bad_learning_rates():
    params = GaussianParams(np.zeros((1, 3)), np.zeros((1, 3)), np.ones((1, 4)), np.zeros(1))
    with pytest.raises(ValueError, match="no learning rate"):
        Adam(params, {"means_xyz": 0.1})
    with pytest.raises(ValueError, match="unknown parameter groups"):
        Adam(params, {**LR, "opacity": 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        Adam(params, {**LR, "log_scales": -1.0})


# ----------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------

def test_lr_schedule_endpoints_and_log_linearity():
    assert lr_schedule(0, 1e-2, 1e-5, 1000) == 1e-2
    assert lr_schedule(1000, 1e-2, 1e-5, 1000) == 1e-5
    assert lr_schedule(5000, 1e-2, 1e-5, 1000) == 1e-5  # held after max_steps
    assert lr_schedule(-3, 1e-2, 1e-5, 1000) == 1e-2
    # Log-linear: the midpoint is the geometric mean; equal ratios over equal steps.
    assert lr_schedule(500, 1e-2, 1e-5, 1000) == pytest.approx(math.sqrt(1e-7), rel=1e-12)
    lrs = [lr_schedule(k, 1e-2, 1e-5, 1000) for k in range(0, 1001, 100)]
    ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
    np.testing.assert_allclose(ratios, 10 ** -0.3, rtol=1e-12)
    assert lr_schedule(7, 0.3, 0.3, 100) == pytest.approx(0.3, rel=1e-15)


def test_lr_schedule_warmup():
    assert lr_schedule(0, 1e-2, 1e-5, 1000, warmup_steps=100,
                       warmup_factor=0.01) == pytest.approx(1e-4, rel=1e-12)
    assert lr_schedule(100, 1e-2, 1e-5, 1000, warmup_steps=100) == pytest.approx(
        lr_schedule(100, 1e-2, 1e-5, 1000), rel=1e-15)
    ramp = [lr_schedule(k, 1e-2, 1e-2, 1000, warmup_steps=100) for k in range(101)]
    assert np.all(np.diff(ramp) > 0)


def test_lr_schedule_errors():
    with pytest.raises(ValueError, match="positive"):
        lr_schedule(0, 0.0, 1e-5, 10)
    with pytest.raises(ValueError, match="max_steps"):
        lr_schedule(0, 1e-2, 1e-5, 0)
    with pytest.raises(ValueError, match="warmup"):
        lr_schedule(0, 1e-2, 1e-5, 10, warmup_steps=5, warmup_factor=0.0)


def test_learning_rates_scale_positions_by_extent():
    extent = scene_extent_vox((120, 512, 400))
    assert extent == 256.0
    start = learning_rates(0, 20000, extent)
    end = learning_rates(20000, 20000, extent)
    assert set(start) == set(GROUPS)
    assert start["means_xyz"] == pytest.approx(DEFAULT_LR["means_xyz"][0] * 256.0)
    assert end["means_xyz"] == pytest.approx(DEFAULT_LR["means_xyz"][1] * 256.0)
    for g in ("log_scales", "quats_wxyz", "density_raw"):  # unitless groups: not scaled
        assert start[g] == DEFAULT_LR[g][0] and end[g] == DEFAULT_LR[g][1]
    # 0.05 voxel per step at the start for a 512-wide volume (module docstring).
    assert start["means_xyz"] == pytest.approx(0.0512)
    with pytest.raises(ValueError, match="lacks groups"):
        learning_rates(0, 10, 1.0, table={"means_xyz": (1e-3, 1e-4)})
    with pytest.raises(ValueError, match="positive sizes"):
        scene_extent_vox((0, 10, 10))
