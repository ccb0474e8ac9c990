"""Densification: consistency statistic, clone, split, prune, caps, bookkeeping, config."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.gaussian.densify import (
    DEFAULT_CONSISTENCY_THRESHOLD,
    SPLIT_OFFSET,
    DensifyConfig,
    DensifyStats,
    clamp_scales,
    densify_and_prune,
)
from taichi_etgs.gaussian.params import GaussianParams, quats_to_rotmats

SHAPE = (32, 40, 40)  # (nz, ny, nx): centres allowed within +-(20, 20, 16) + margin
FIELDS = [f.name for f in fields(GaussianParams)]
STEPS = 50
# Small problems: no fraction cap unless a test sets one.
ALL = DensifyConfig(max_fraction=1.0)

# Projection problem of the view-change and loss tests: 21 tilts, 48 x 48 detector.
TILTS = np.linspace(-60.0, 60.0, 21)
NY = NU = 48
VOL = (24, 48, 48)


def five_gaussians() -> GaussianParams:
    """0: small, consistent (clone); 1: large, consistent, rotated (split); 2: faint (prune);
    3: small, noise-like (untouched); 4: needle (prune)."""
    means = np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0], [-5.0, 5.0, 0.0],
                      [6.0, 6.0, -4.0], [-6.0, -6.0, 4.0]])
    scales = np.array([[1.0, 1.2, 0.8], [3.0, 2.0, 2.5], [1.0, 1.0, 1.0],
                       [1.0, 1.0, 1.0], [0.1, 6.0, 1.0]])
    densities = np.array([2.0, 1.5, 1e-4, 1.0, 1.0])
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (5, 1))
    quats[1] = [0.9, 0.3, -0.2, 0.25]
    return GaussianParams.from_activated(means, scales, densities, quats)


def stats_with(consistency, steps=STEPS) -> DensifyStats:
    """Statistics whose consistency is exactly ``consistency`` (steps seen: ``steps``)."""
    c = np.asarray(consistency, float)
    s = DensifyStats(c.size)
    s.grad_sum[:, 0] = c
    s.grad_sq_sum[:] = 1.0
    s.seen_steps[:] = steps
    return s


def run(params, stats, config=ALL, **kw):
    args = {"max_gaussians": 100, "min_density": 1e-2, "volume_shape_zyx": SHAPE,
            "config": config}
    args.update(kw)
    return densify_and_prune(params, stats, **args)


def apply_bookkeeping(old: np.ndarray, keep: np.ndarray, n_new: int) -> np.ndarray:
    """What an optimiser does to per-Gaussian state: select, then append zeros."""
    return np.concatenate([old[keep], np.zeros((n_new,) + old.shape[1:], old.dtype)])


def random_model(rng, n: int) -> GaussianParams:
    """Random Gaussians (std 1-4 voxels, random rotations) inside VOL."""
    means = rng.uniform(-1, 1, (n, 3)) * np.array([20.0, 20.0, 10.0])
    return GaussianParams.from_activated(means, rng.uniform(1.0, 4.0, (n, 3)),
                                         rng.lognormal(0.0, 0.5, n), rng.normal(size=(n, 4)))


def mixture_moments(p: GaussianParams, groups: list[np.ndarray]):
    """Mass, centre and covariance of each group of Gaussians taken as one distribution."""
    out = []
    m, mu, cov = p.masses(), p.means_xyz, p.covariances()
    for g in groups:
        w = m[g] / m[g].sum()
        centre = w @ mu[g]
        d = mu[g] - centre
        out.append((m[g].sum(), centre,
                    np.einsum("n,nij->ij", w, cov[g]) + np.einsum("n,ni,nj->ij", w, d, d)))
    return out


# ------------------------------------------------------------------------------------------
# Statistic
# ------------------------------------------------------------------------------------------

def test_stats_accumulate_select_append_reset_state():
    s = DensifyStats(3)
    s.add(np.array([[1.0, 0, 0], [0, 0, 0], [0, 3.0, 0]]), np.array([2, 0, 1]))
    s.add(np.array([[1.0, 0, 0], [0, 0, 0], [0, -3.0, 4.0]]), np.array([1, 0, 3]))
    np.testing.assert_array_equal(s.seen_steps, [2, 0, 2])  # steps, not views
    np.testing.assert_allclose(s.grad_sq_sum, [2.0, 0.0, 34.0])
    # Same direction twice: sqrt(2) (= sqrt(n_seen), the maximum); unseen: 0, not NaN.
    np.testing.assert_allclose(s.consistency(), [np.sqrt(2), 0.0, 4.0 / np.sqrt(34.0)])
    st = s.state()
    s2 = DensifyStats.from_state(st)
    st["grad_sum"][0] = 99.0  # state() and from_state() copy
    np.testing.assert_array_equal(s2.consistency(), s.consistency())
    s.select(np.array([True, False, True]))
    s.append(2)
    assert s.n == 4 and s.grad_sum.shape == (4, 3)
    np.testing.assert_array_equal(s.seen_steps, [2, 2, 0, 0])
    np.testing.assert_allclose(s.grad_sum[1], [0.0, 0.0, 4.0])
    s.select(np.array([3, 0]))  # integer indices work too
    np.testing.assert_array_equal(s.seen_steps, [0, 2])
    s.reset()
    assert s.grad_sum.sum() == 0 and s.grad_sq_sum.sum() == 0 and s.seen_steps.sum() == 0
    with pytest.raises(ValueError, match="shape"):
        s.add(np.zeros(2), np.zeros(2))  # the old per-Gaussian norm is refused
    with pytest.raises(ValueError, match="mask"):
        s.select(np.ones(3, bool))
    with pytest.raises(InputError, match="seen_steps"):
        DensifyStats.from_state({"grad_sum": np.zeros((2, 3)), "grad_sq_sum": np.zeros(2)})
    with pytest.raises(InputError, match="inconsistent"):
        DensifyStats.from_state({"grad_sum": np.zeros((2, 3)), "grad_sq_sum": np.zeros(3),
                                 "seen_steps": np.zeros(2, np.int64)})


def test_stats_from_projector_count_steps(taichi_cpu, rng):
    """add() takes the backward pass's position gradient and visibility directly."""
    from taichi_etgs.gaussian.render import project_gaussians_backward

    p = five_gaussians()
    p.means_xyz[4] = [0.0, 500.0, 0.0]  # off the detector in every view
    tilts = np.array([-30.0, 0.0, 30.0])
    s = DensifyStats(p.n)
    for _ in range(2):
        back = project_gaussians_backward(p, tilts, rng.normal(size=(3, 40, 48)))
        s.add(back.grads.means_xyz, back.visible_views)
    np.testing.assert_array_equal(s.seen_steps, [2, 2, 2, 2, 0])
    c = s.consistency()
    assert np.all(c[:4] > 0) and np.all(c[:4] <= np.sqrt(2) + 1e-9) and c[4] == 0


def test_consistency_separates_noise_from_a_consistent_pull():
    """The threshold's significance (module docstring), n = 50 steps, 20 000 Gaussians."""
    r = np.random.default_rng(0)
    n, m = 50, 20_000

    def consistency(g):  # g: [n_steps, m, 3]
        s = DensifyStats(m)
        for k in range(n):
            s.add(g[k], np.ones(m, int))
        return s.consistency()

    thr = DEFAULT_CONSISTENCY_THRESHOLD
    iso = r.normal(size=(n, m, 3)) / np.sqrt(3.0)  # E|e|^2 = 1
    c = consistency(iso)
    # C^2 ~ chi^2_3 / 3: mean 1 (20 000 draws: standard error 0.6 %), P(C > 3) = 6e-6.
    assert np.mean(c ** 2) == pytest.approx(1.0, abs=0.03)
    assert np.mean(c > thr) < 1e-3  # expected 0.1 of 20 000; measured 0
    # Worst case, noise along one direction: chi^2_1, P(C > 3) = 0.27 % (measured 0.19 %).
    line = np.zeros_like(iso)
    line[..., 0] = r.normal(size=(n, m))
    assert np.mean(consistency(line) > thr) < 0.01
    # Heavy-tailed step amplitudes (log-normal, sigma 1.5) only lower C (measured 0 %).
    heavy = iso * np.exp(1.5 * r.normal(size=(n, m, 1)))
    assert np.mean(consistency(heavy) > thr) < 0.01
    # A constant pull plus noise: C ~ sqrt(n) SNR / sqrt(1 + SNR^2) = 3.16 at SNR 0.5.
    direction = r.normal(size=(m, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    frac = {snr: np.mean(consistency(iso + snr * direction) > thr) for snr in (0.5, 0.7)}
    assert frac[0.5] > 0.6  # measured 72 % (sampling error 0.3 %)
    assert frac[0.7] > 0.99  # measured 99.8 %


# ------------------------------------------------------------------------------------------
# Clone, split, prune
# ------------------------------------------------------------------------------------------

def test_clone_split_prune_on_five():
    p = five_gaussians()
    r = run(p, stats_with([5.0, 4.0, 9.0, 1.0, 9.0]))
    # 2 (faint) and 4 (needle, aspect 60) are pruned even though their consistency is high;
    # 3 (C = 1, noise) is left alone.
    assert (r.n_cloned, r.n_split, r.n_pruned) == (1, 1, 2)
    np.testing.assert_array_equal(r.keep_mask, [True, False, False, True, False])
    assert r.n_appended == 3 and r.params.n == 2 + 3
    np.testing.assert_array_equal(r.parent_index, [0, 1, 1])  # clones first, then children

    rho_old, rho_new = p.densities(), r.params.densities()
    # Clone: parent (kept, position 0) and its copy (appended first) share the halved density
    # and every other parameter.
    np.testing.assert_allclose(rho_new[[0, 2]], rho_old[0] / 2, rtol=1e-12)
    for f in ("means_xyz", "log_scales", "quats_wxyz"):
        np.testing.assert_array_equal(getattr(r.params, f)[2], getattr(p, f)[0])
        np.testing.assert_array_equal(getattr(r.params, f)[0], getattr(p, f)[0])
    # Untouched Gaussian 3: copied bit for bit.
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(r.params, f)[1], getattr(p, f)[3])
    # Split children: at mu +- d R e_max along the largest axis (x, scale 3), that scale
    # sqrt(s^2 - d^2), the others unchanged, same rotation, density rho s / (2 s_c).
    kids = r.params.subset(slice(3, 5))
    s, d = 3.0, SPLIT_OFFSET * 3.0
    s_c = np.sqrt(s ** 2 - d ** 2)
    axis = p.rotations()[1][:, 0]
    np.testing.assert_allclose(kids.means_xyz, [p.means_xyz[1] + d * axis,
                                                p.means_xyz[1] - d * axis], atol=1e-12)
    np.testing.assert_allclose(kids.scales(), [[s_c, 2.0, 2.5]] * 2, rtol=1e-12)
    np.testing.assert_array_equal(kids.log_scales[:, 1:], np.tile(p.log_scales[1, 1:], (2, 1)))
    np.testing.assert_array_equal(kids.quats_wxyz, np.tile(p.quats_wxyz[1], (2, 1)))
    np.testing.assert_allclose(kids.densities(), rho_old[1] * s / (2 * s_c), rtol=1e-12)


def test_mass_and_moments_conserved_exactly():
    """Clones halve, split children share the mass and keep centre and covariance."""
    p = five_gaussians()
    r = run(p, stats_with([5.0, 4.0, 4.0, 1.0, 4.0]), min_density=0.0,
            config=DensifyConfig(max_fraction=1.0, max_aspect=100.0))
    assert (r.n_cloned, r.n_split, r.n_pruned) == (2, 2, 0)  # 0, 2 cloned; 1, 4 split
    assert r.params.masses().sum() == pytest.approx(p.masses().sum(), rel=1e-13)
    n_kept = int(np.count_nonzero(r.keep_mask))
    kids = np.arange(n_kept + r.n_cloned, r.params.n).reshape(-1, 2)
    for parent, pair in zip(r.parent_index[r.n_cloned::2], kids):
        (m0, c0, cov0), = mixture_moments(p, [np.array([parent])])
        (m1, c1, cov1), = mixture_moments(r.params, [pair])
        assert m1 == pytest.approx(m0, rel=1e-13)
        np.testing.assert_allclose(c1, c0, atol=1e-12)
        np.testing.assert_allclose(cov1, cov0, rtol=1e-12, atol=1e-12)
    # Clone: the two halves' masses add up to the parent's.
    clone = r.params.masses()[[0, n_kept]]
    np.testing.assert_allclose(clone, p.masses()[0] / 2, rtol=1e-13)


def test_mass_conserved_voxelised(taichi_cpu):
    """The voxelised field's integral is preserved (the grid holds every footprint)."""
    from taichi_etgs.gaussian.render import voxelize_gaussians

    p = five_gaussians().subset(np.array([0, 1, 3]))
    r = run(p, stats_with([5.0, 4.0, 1.0]))
    assert (r.n_cloned, r.n_split) == (1, 1)
    before = voxelize_gaussians(p, SHAPE).sum()
    after = voxelize_gaussians(r.params, SHAPE).sum()
    # Analytic mass is exact; what remains is float32 summation over ~50k voxels and the
    # share of the children's mass cut at the kernel's cutoff (vs the parent's), << 1e-3.
    assert after == pytest.approx(before, rel=1e-3)
    assert before == pytest.approx(p.masses().sum(), rel=3e-3)


@pytest.mark.parametrize("n", [300, 2000])
def test_views_barely_change(taichi_cpu, n):
    """Densifying the top 5 % changes the rendered views by < 1 % (relative L2).

    Measured (21 tilts, 48 x 48): 5 % chosen at random, all split: 0.07 % (300) and 0.03 %
    (2000); the 5 % of largest mass (19 % of the total) split: 0.2 % and 0.08 %; a clone
    step: < 1e-7 (float32 rounding). The previous rule (children drawn from N(mu, Sigma),
    scales / 1.6) changed the views by 10 % for the 5 % of largest mass.
    """
    from taichi_etgs.gaussian.render import project_gaussians

    rng = np.random.default_rng(n)
    p = random_model(rng, n)
    before = project_gaussians(p, TILTS, NY, NU).astype(np.float64)

    def change(score, scale_threshold):
        cfg = DensifyConfig(scale_threshold=scale_threshold)  # max_fraction 0.05
        r = densify_and_prune(p, stats_with(score), max_gaussians=10 * n, min_density=0.0,
                              volume_shape_zyx=VOL, config=cfg)
        assert r.n_pruned == 0 and r.n_cloned + r.n_split == n // 20
        after = project_gaussians(r.params, TILTS, NY, NU).astype(np.float64)
        return r, np.linalg.norm(after - before) / np.linalg.norm(before)

    r, rel = change(rng.uniform(4.0, 5.0, n), 0.5)  # every scale >= 1: all split
    assert r.n_split == n // 20 and rel < 0.01
    r, rel = change(4.0 + p.masses() / p.masses().max(), 0.5)  # the heaviest 5 % split
    assert r.n_split == n // 20 and rel < 0.01
    r, rel = change(rng.uniform(4.0, 5.0, n), 100.0)  # all clone
    assert r.n_cloned == n // 20 and rel < 1e-6


@pytest.mark.parametrize("which, value, reason", [
    ("density", 1e-3, "faint"),
    ("scale", 20.5, "huge"),   # > max_scale = 20 (half the largest side)
    ("aspect", 0.05, "degenerate"),  # 1 / 0.05 = 20 > max_aspect 10 below
    ("x", 23.0, "outside"),   # |x| > 20 + margin 2
    ("z", -18.5, "outside"),  # |z| > 16 + 2
    ("nan", np.nan, "non-finite"),
])
def test_prune_each_rule(which, value, reason):
    p = GaussianParams.from_activated(np.zeros((2, 3)), np.ones((2, 3)), np.array([1.0, 1.0]))
    if which == "density":
        p.density_raw[1] = GaussianParams.from_activated(
            np.zeros((1, 3)), np.ones((1, 3)), np.array([value])).density_raw[0]
    elif which == "scale":
        p.log_scales[1] = np.log([value, value, value])  # isotropic: not degenerate
    elif which == "aspect":
        p.log_scales[1] = np.log([value, 1.0, 1.0])
    elif which == "nan":
        p.means_xyz[1, 1] = value
    else:
        p.means_xyz[1, "xyz".index(which)] = value
    r = run(p, stats_with([0.0, 9.0]), config=DensifyConfig(max_fraction=1.0, max_aspect=10.0))
    np.testing.assert_array_equal(r.keep_mask, [True, False], err_msg=reason)
    assert r.n_pruned == 1 and r.params.n == 1 and r.n_appended == 0


def test_margin_threshold_edges_and_split_at_the_border():
    p = GaussianParams.from_activated(
        np.array([[21.5, 0, 0], [0, 0, 17.9], [0, 0, 0], [1, 1, 1], [0, 0, 17.0]], float),
        np.array([[1.0] * 3] * 4 + [[1.0, 1.0, 3.0]]), np.ones(5))
    thr = DEFAULT_CONSISTENCY_THRESHOLD
    s = stats_with([thr * 1.001, thr, 0.0, 0.0, 9.0])
    s.seen_steps[3] = 0  # never seen: never densified, whatever its sums say
    s.grad_sum[3] = 1e6
    r = run(p, s)
    assert r.n_pruned == 0  # within the 2-voxel margin
    # Strictly above the threshold counts. 4 (largest scale 3 along z) would split into a
    # child at z = 17 + 1.5, beyond 16 + 2, so it is cloned instead (views unchanged).
    np.testing.assert_array_equal(r.parent_index, [0, 4])
    assert (r.n_cloned, r.n_split) == (2, 0)


# ------------------------------------------------------------------------------------------
# Caps, bookkeeping, determinism
# ------------------------------------------------------------------------------------------

def many(rng, n=60) -> tuple[GaussianParams, DensifyStats]:
    means = rng.uniform(-12, 12, (n, 3))
    scales = np.exp(rng.uniform(np.log(0.5), np.log(4.0), (n, 3)))
    p = GaussianParams.from_activated(means, scales, rng.uniform(0.005, 2.0, n),
                                      rng.normal(size=(n, 4)))
    return p, stats_with(rng.uniform(0.0, 8.0, n))


@pytest.mark.parametrize("cap", [0, 30, 55, 70, 1000])
def test_count_cap_prioritises_highest_consistency(rng, cap):
    p, s = many(rng)
    r = run(p, s, max_gaussians=cap)
    n_kept_min = int(np.count_nonzero(r.keep_mask)) + r.n_split  # survivors of pruning
    assert r.params.n <= max(cap, n_kept_min)
    if cap >= n_kept_min:
        assert r.params.n <= cap
    chosen = np.unique(r.parent_index)
    c = s.consistency()
    split_parents = r.parent_index[r.n_cloned:]
    pruned = ~r.keep_mask & ~np.isin(np.arange(p.n), split_parents)
    eligible = np.flatnonzero((c > DEFAULT_CONSISTENCY_THRESHOLD) & ~pruned)
    left_out = np.setdiff1d(eligible, chosen)
    if chosen.size and left_out.size:
        # Every eligible Gaussian left out is less consistent than every one chosen.
        assert c[left_out].max() <= c[chosen].min()
    if cap == 1000:
        assert left_out.size == 0 and chosen.size > 0
    if cap <= 55:
        assert chosen.size == 0 or r.params.n == cap


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.05, 10), (0.1, 20), (1.0, 120)])
def test_fraction_cap(rng, fraction, expected):
    """At most floor(max_fraction N) per step, the most consistent first (ties: lower
    index)."""
    n = 200
    p = GaussianParams.from_activated(rng.uniform(-10, 10, (n, 3)), np.ones((n, 3)),
                                      np.ones(n))
    c = np.where(np.arange(n) < 120, 4.0, 1.0)  # 120 eligible, all tied
    c[150] = 9.0  # the most consistent of all
    c[119] = 1.0
    r = run(p, stats_with(c), max_gaussians=10_000,
            config=DensifyConfig(max_fraction=fraction))
    assert r.n_cloned == expected and r.n_split == 0
    if 0 < expected < 120:
        np.testing.assert_array_equal(r.parent_index,
                                      np.sort(np.r_[150, np.arange(expected - 1)]))


def test_bookkeeping_matches_select_then_append(rng):
    p, s = many(rng)
    r = run(p, s, max_gaussians=1000)
    assert r.n_cloned > 0 and r.n_split > 0 and r.n_pruned > 0
    assert r.params.n == np.count_nonzero(r.keep_mask) + r.n_appended
    assert r.n_appended == r.n_cloned + 2 * r.n_split == r.parent_index.size
    assert r.n_pruned + r.n_split == np.count_nonzero(~r.keep_mask)
    cloned = r.parent_index[:r.n_cloned]
    split = r.parent_index[r.n_cloned:]
    assert np.all(r.keep_mask[cloned]) and not np.any(r.keep_mask[split])
    assert np.all(np.diff(cloned) > 0) and np.all(split[::2] == split[1::2])
    # Kept Gaussians are in their old order; only clone parents' densities changed.
    old_idx = np.flatnonzero(r.keep_mask)
    np.testing.assert_array_equal(r.params.means_xyz[:old_idx.size], p.means_xyz[old_idx])
    changed = r.params.density_raw[:old_idx.size] != p.density_raw[old_idx]
    np.testing.assert_array_equal(old_idx[changed], cloned)
    # An optimiser's state and the stats follow the same select-then-append.
    moment = np.arange(p.n * 3, dtype=float).reshape(p.n, 3)
    follow = apply_bookkeeping(moment, r.keep_mask, r.n_appended)
    assert follow.shape == (r.params.n, 3)
    np.testing.assert_array_equal(follow[:old_idx.size], moment[old_idx])
    s2 = DensifyStats.from_state(s.state())
    s2.select(r.keep_mask)
    s2.append(r.n_appended)
    assert s2.n == r.params.n
    np.testing.assert_array_equal(s2.seen_steps[:old_idx.size], s.seen_steps[old_idx])
    # Integer selection giving children their parent's state reproduces the parents' rows.
    inherit = moment[np.concatenate([old_idx, r.parent_index])]
    np.testing.assert_array_equal(inherit[old_idx.size:], moment[r.parent_index])


def test_deterministic_and_inputs_untouched(rng):
    p, s = many(rng)
    p0, st0 = p.copy(), s.state()
    a = run(p, s)
    b = run(p, s)
    assert a.n_split > 0
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a.params, f), getattr(b.params, f))
        np.testing.assert_array_equal(getattr(p, f), getattr(p0, f))
    for k, v in s.state().items():
        np.testing.assert_array_equal(v, st0[k])


def test_float32_params_and_children_inside(rng):
    p, s = many(rng)
    p = p.astype(np.float32)
    p.means_xyz[:, 2] = np.clip(p.means_xyz[:, 2], -15.9, 15.9)
    s = stats_with(np.full(p.n, 9.0))  # everything densifies
    r = run(p, s, config=DensifyConfig(max_fraction=1.0, scale_threshold=0.1))
    assert r.n_split > 0
    for f in FIELDS:
        assert getattr(r.params, f).dtype == np.float32
    half = np.array(SHAPE[::-1]) / 2 + 2.0
    assert np.all(np.abs(r.params.means_xyz) <= half)  # children never leave the kept box
    # The children's rotation is the parent's: their axes agree.
    kids = r.params.subset(slice(r.params.n - 2 * r.n_split, None))
    parents = r.parent_index[r.n_cloned:]
    np.testing.assert_allclose(quats_to_rotmats(kids.quats_wxyz),
                               quats_to_rotmats(p.quats_wxyz[parents]), atol=1e-6)
    assert r.params.masses().sum() == pytest.approx(
        p.masses()[r.keep_mask | np.isin(np.arange(p.n), parents)].sum(), rel=1e-5)


def test_errors_and_empty():
    p = five_gaussians()
    with pytest.raises(InputError, match="stats"):
        run(p, DensifyStats(4))
    with pytest.raises(InputError, match="volume_shape_zyx"):
        run(p, DensifyStats(5), volume_shape_zyx=(10, 10))
    with pytest.raises(InputError, match="max_gaussians"):
        run(p, DensifyStats(5), max_gaussians=-1)
    with pytest.raises(InputError, match="max_scale"):
        run(p, DensifyStats(5), max_scale=0.0)
    empty = p.subset(np.zeros(5, bool))
    r = run(empty, DensifyStats(0))
    assert r.params.n == 0 and r.n_appended == 0


# ------------------------------------------------------------------------------------------
# Configuration, scale clamp
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("every", 0, "every"), ("every", 2.5, "every"), ("start", -1, "start"),
    ("stop_fraction", 1.5, "stop fraction"), ("stop_fraction", np.nan, "stop fraction"),
    ("consistency_threshold", 0.0, "consistency"), ("max_fraction", -0.1, "max fraction"),
    ("scale_threshold", 0.0, "scale threshold"), ("max_aspect", 0.5, "aspect"),
    ("margin", -1.0, "margin"), ("min_density_fraction", -1e-3, "min density"),
])
def test_config_validation(field, value, message):
    with pytest.raises(InputError, match=message):
        DensifyConfig(**{field: value})


def test_config_schedule_and_min_density():
    cfg = DensifyConfig()
    assert (cfg.every, cfg.start, cfg.stop_fraction, cfg.max_fraction) == (100, 100, 0.5, 0.05)
    due = [i for i in range(0, 1001) if cfg.is_due(i, 1000)]
    assert due == [100, 200, 300, 400, 500]
    p = five_gaussians()
    assert cfg.min_density(p) == pytest.approx(0.01 * np.median(p.densities()))
    assert cfg.min_density(p.subset(np.zeros(5, bool))) == 0.0


def test_clamp_scales_in_place():
    p = five_gaussians()
    before = p.log_scales.copy()
    assert clamp_scales(p, 0.5, 4.0) == 2  # 0.1 and 6.0 of the needle
    np.testing.assert_allclose(p.scales()[4], [0.5, 4.0, 1.0])
    np.testing.assert_array_equal(p.log_scales[:4], before[:4])
    assert clamp_scales(p, None, None) == 0
    assert clamp_scales(p, 2.0, None) > 0 and p.scales().min() == pytest.approx(2.0)
    with pytest.raises(InputError, match="min_scale"):
        clamp_scales(p, 2.0, 1.0)
    with pytest.raises(InputError, match="min_scale"):
        clamp_scales(p, 0.0, 1.0)


def test_initial_model_survives_default_pruning(rng):
    """init_from_volume's Gaussians (thin cells at odd faces included) pass every pruning
    rule at default settings, so the first densification does not eat the initial model."""
    from taichi_etgs.gaussian.seeding import init_from_volume

    shape = (17, 33, 65)  # odd sizes: 1-voxel-thin cells at the faces
    vol = rng.normal(0, 1.0, shape)
    vol[5:10, 10:20, 20:40] += 4.0
    for cap in (3, 60, 5000):
        p = init_from_volume(vol, cap)
        r = densify_and_prune(p, DensifyStats(p.n), max_gaussians=cap, min_density=0.0,
                              volume_shape_zyx=shape)
        assert r.n_pruned == 0 and r.params.n == p.n


# ------------------------------------------------------------------------------------------
# In a fit
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_term", ["l1", "rmse"])
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_loss_does_not_jump_in_a_fit(taichi_cpu, noise, data_term):
    """Fit a perturbed copy of a random model to its views (noise: std relative to the
    views'; the data term of view_loss alone, Adam, the statistic accumulated as the
    reconstruction does), then densify: the loss over all views right after
    densify_and_prune is within 1 % of the loss right before. Measured with L1: +7e-5
    without noise (the previous rule applied to the same Gaussians: +190 %), -4e-6 with
    noise 0.5 (previous rule: +0.8 %)."""
    from taichi_etgs.gaussian.loss import view_loss
    from taichi_etgs.gaussian.optim import Adam, learning_rates, scene_extent_vox
    from taichi_etgs.gaussian.render import project_gaussians, project_gaussians_backward

    rng = np.random.default_rng(7)
    n = 400
    target = random_model(rng, n)
    measured = project_gaussians(target, TILTS, NY, NU).astype(np.float64)
    measured += noise * measured.std() * rng.normal(size=measured.shape)
    p = target.astype(np.float32)
    moved = rng.random(n) < 0.2
    p.means_xyz[moved] += rng.normal(0.0, 1.5, (int(moved.sum()), 3)).astype(np.float32)
    p.density_raw *= np.float32(0.8)
    adam = Adam(p, learning_rates(0, 1000, scene_extent_vox(VOL)))
    stats = DensifyStats(n)
    for _ in range(100):
        views = rng.choice(TILTS.size, 4, replace=False)
        rendered = project_gaussians(p, TILTS[views], NY, NU)
        _, grad = view_loss(rendered, measured[views], None, lambda_dssim=0.0,
                            data_term=data_term)
        back = project_gaussians_backward(p, TILTS[views], grad)
        adam.step(p, back.grads)
        stats.add(back.grads.means_xyz, back.visible_views)

    def loss(params):
        return view_loss(project_gaussians(params, TILTS, NY, NU), measured, None,
                         lambda_dssim=0.0, data_term=data_term)[0]

    before = loss(p)
    r = densify_and_prune(p, stats, max_gaussians=10 * n, min_density=0.0,
                          volume_shape_zyx=VOL, config=DensifyConfig(scale_threshold=2.0))
    assert r.n_split > 0 and r.n_cloned + r.n_split <= n // 20
    assert r.n_cloned > 0 or data_term == "rmse"  # the RMSE fit of clean views cloned none
    after = loss(r.params.astype(np.float32))
    assert after == pytest.approx(before, rel=0.01)
    adam.select(r.keep_mask)
    adam.append(r.n_appended)
    assert adam.n == r.params.n
