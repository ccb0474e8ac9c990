"""Hierarchical (octree) initialisation of the Gaussian model from a classical tomogram.

docs/method.md, "Seeding": an octree over a fast reconstruction (WBP/SIRT) splits cells where
the signal is strong or varies, down to ``min_cell`` voxels; each leaf seeds one Gaussian;
weak regions keep a few coarse Gaussians so that the whole volume is covered; the count
is capped.

How it works (all vectorised numpy, no Python loop over voxels or cells):

1. **Noise level** ``sigma`` (per voxel): :func:`estimate_noise_sigma`, the MAD of a
   Laplacian high-pass (voxel minus the mean of its 6 face neighbours), rescaled for
   white Gaussian noise. The MAD ignores the few voxels at edges of structures, where the
   high-pass holds signal. WBP noise is blue (the ramp filter boosts high frequencies), so
   this over-estimates its per-voxel level somewhat; SIRT or low-passed noise is
   correlated and under-estimated. Either way only the split thresholds move, and the
   budget ``max_gaussians`` bounds the consequence.
2. **Block-sum pyramid**: the volume minus ``background`` (zero-padded to a multiple of
   the top cell size) is summed over ``min_cell``-sized blocks, then over 2x2x2 blocks of
   those, level by level up to ``max_cell``. Each cell knows its voxel count ``n`` (real
   voxels only), the sums of ``v`` and ``v^2`` (mean and variance), and of ``v+ = max(v, 0)``
   and ``v+ * (x, y, z)`` (centroid).
3. **Split rule**: a cell with ``n`` voxels, mean ``m`` and variance ``var`` *may* split when
   its signal is strong, ``max(m, 0) > t_mean(n)``, or varies, ``var - sigma^2 > t_var(n)``.
   By default the thresholds are significance levels: ``t_mean = 3 sigma / sqrt(n)`` (three
   standard errors of a mean of ``n`` noisy voxels) and ``t_var = 3 sigma^2 sqrt(2 / (n - 1))``
   (three standard errors of a variance), each floored at ``1e-3`` of the volume's signal
   scale (99.9th percentile of ``|v|``) so that a noise-free volume does not split on
   rounding. ``threshold`` replaces them with one density level: ``t_mean = threshold``,
   ``t_var = threshold^2`` (the std beyond the noise must exceed ``threshold``).
4. **Priority and cap**: cells that may split are split in decreasing order of their
   *signal energy above the noise*, ``score = n * (max(var - sigma^2, 0) + max(m, 0)^2)``
   (about ``sum(v^2) - n sigma^2`` over the cell), so strong and varying regions are refined
   first and, under the cap, leaves end up holding similar energies. Energy is additive
   over voxels, so a child's score rarely exceeds its parent's; the score is made exactly
   monotone (each cell's effective score is the minimum over its ancestors), which turns the
   priority queue into a sort: splitting the first ``k`` cells of the order (coarser first on
   ties, then a seeded random order) is always a valid octree, and ``k`` is the largest for
   which the leaf count stays within ``max_gaussians``. The seed only breaks exact ties
   (e.g. a perfectly uniform region cut by the cap), so that the refinement there is spread
   at random rather than filling one corner in raster order.
5. **Leaves -> Gaussians**: centre at the centroid of ``v+`` (the cell centre where the cell
   has no positive density); identity rotation; axis-aligned scales of half the cell's
   extent per axis (``min_cell / 2`` for the finest leaves; smaller cells at the volume's
   edge have a smaller extent), which makes a lattice of Gaussians reproduce a smooth field
   with about 1 % ripple; density ``rho`` such that the Gaussian's mass
   ``rho (2 pi)^(3/2) s_x s_y s_z`` equals the cell's integral of ``v`` (the voxeliser's
   amplitude is ``rho`` at the centre, so the mass, not the peak, is what reproduces the
   local mean on a lattice). The signed integral is used, not the integral of ``v+``: on
   noise the positive part is biased (by ``0.4 sigma`` per voxel) while the signed sum is
   not. Cells whose integral is not positive get a floor density (``1e-3`` of the signal
   scale) so that every density is positive and the optimiser can grow them.
6. **Optional refinement** (``refine_iterations``): leaf masses are corrected
   multiplicatively, ``mass *= cell integral of the input / cell integral of the voxelised
   model`` (a MART / Richardson-Lucy-like step; the Gaussians' overlap acts as a positive
   blur, so the update converges without overshoot for smooth errors). It fixes the deficit
   next to the volume's faces (a lattice of Gaussians misses the neighbours outside: the
   outermost voxels read 73 % of a uniform field with 2-voxel cells) and the few-percent
   bumps where cell sizes change. Each iteration is one
   :func:`taichi_etgs.gaussian.render.voxelize_gaussians` (Taichi).

**Background.** ``background`` is subtracted first; the model represents
``volume - background`` (its negative part only through the floor). The default (None) is
the volume's median: most voxels of a tomogram are ice or vacuum, and the loss fits a
per-view offset (:func:`taichi_etgs.gaussian.loss.fit_gain_offset`), which absorbs a uniform
ice slab (its projection is a per-view constant, ``1 / cos(theta)`` times the slab's
integral). Why not keep the ice in the model: a sum of Gaussians reproduces a constant only
to ~1 % ripple, with deficits at the faces and at cell-size changes, and those errors, a few
percent of the ice level, are as large as the contrast of the specimen; the energy score
would also spend the budget evenly on the ice. Measured on the package's phantom (48 x 96 x
96, ice 4.5 V, contrast std 0.27 V, 20k Gaussians): voxelised-model correlation 0.82 with
the median subtracted (the limit set by 2-voxel leaves and the clipping of below-ice values:
0.81), 0.38 with ``background=0`` (0.49 after 3 refinement iterations); with noise of std 1
V added, 0.69 with the clean phantom (the noisy input itself: 0.26). Pass ``background=0.0``
to model absolute densities (e.g. a volume already zero outside the specimen).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .params import GaussianParams

__all__ = ["DEFAULT_MAX_CELL", "estimate_noise_sigma", "init_from_volume"]

#: Largest cell side (voxels) when ``max_cell`` is None, unless the cap needs coarser cells:
#: coarse Gaussians of scale 16 voxels cover weak regions with few Gaussians without one
#: Gaussian spanning a typical 60-300 voxel thickness.
DEFAULT_MAX_CELL = 32
#: Significance (in standard errors) that a cell's mean or variance must reach to split.
_N_SIGMA = 3.0
#: Floors relative to the signal scale (99.9th percentile of |v - background|).
_REL_FLOOR_THRESHOLD = 1e-3
_REL_FLOOR_DENSITY = 1e-3
#: MAD -> standard deviation for a normal distribution.
_MAD_TO_STD = 1.482602218505602
_GAUSS_NORM = (2.0 * np.pi) ** 1.5
#: Above this many voxels, the median and percentiles come from a 1/8 subsample.
_FULL_STATISTICS_VOXELS = 1 << 24
#: Largest/smallest scale of an initial Gaussian (densify prunes above 50).
_MAX_ASPECT = 20.0


def estimate_noise_sigma(volume_zyx: np.ndarray) -> float:
    """Robust per-voxel noise standard deviation of a volume.

    The high-pass ``r = v - mean(6 face neighbours)`` of white noise of std ``sigma`` has
    variance ``(7/6) sigma^2``; ``sigma = 1.4826 MAD(r) / sqrt(7/6)``. The MAD ignores the
    minority of voxels where structure edges leak into the high-pass. Interior voxels are
    subsampled on a stride-2 lattice for speed (about 1/8 of them; plenty for a median).
    Volumes thinner than 3 voxels along an axis use first differences along the longest
    axis instead (variance ``2 sigma^2``).

    Parameters
    ----------
    volume_zyx: the volume. [nz, ny, nx]

    Returns
    -------
    sigma: estimated per-voxel noise std (0 for a noise-free piecewise-smooth volume).
    """
    v = np.asarray(volume_zyx, dtype=np.float64)
    if v.ndim != 3:
        raise InputError(f"volume must be 3-D (nz, ny, nx); got shape {v.shape}")
    if min(v.shape) >= 3:
        c = (slice(1, -1, 2),) * 3
        centre = v[c]
        neigh = np.zeros_like(centre)
        for axis in range(3):
            for shift in (-1, 1):
                sl = list(c)
                sl[axis] = slice(1 + shift, v.shape[axis] - 1 + shift, 2)
                neigh += v[tuple(sl)]
        r = (centre - neigh / 6.0).ravel()
        var_factor = 7.0 / 6.0
    else:
        axis = int(np.argmax(v.shape))
        if v.shape[axis] < 2:
            return 0.0
        r = np.diff(v, axis=axis).ravel()
        var_factor = 2.0
    mad = float(np.median(np.abs(r - np.median(r))))
    return _MAD_TO_STD * mad / np.sqrt(var_factor)


def _block_sum(a: np.ndarray, f: int) -> np.ndarray:
    """Sum over non-overlapping f x f x f blocks (shape divisible by f). [z/f, y/f, x/f]"""
    z, y, x = a.shape
    return a.reshape(z // f, f, y // f, f, x // f, f).sum(axis=(1, 3, 5))


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Each cell repeated into its 2x2x2 children. [2z, 2y, 2x]"""
    return a.repeat(2, 0).repeat(2, 1).repeat(2, 2)


def _axis_counts(n: int, size: int, n_cells: int) -> np.ndarray:
    """Real voxels of each cell of side ``size`` along an axis of length ``n``. [n_cells]"""
    return np.clip(n - np.arange(n_cells) * size, 0, size).astype(np.float64)


def init_from_volume(volume_zyx: np.ndarray, max_gaussians: int, *, min_cell: int = 2,
                     max_cell: int | None = None, threshold: float | None = None,
                     seed: int = 0, background: float | None = None,
                     refine_iterations: int = 0) -> GaussianParams:
    """Seed Gaussians from a classical reconstruction with an adaptive octree.

    See the module docstring for the split rule, its thresholds and the priority order.

    Parameters
    ----------
    volume_zyx: reconstruction (WBP, SIRT), positive density; negative values and noise
        are fine. [nz, ny, nx]
    max_gaussians: upper bound on the number of Gaussians returned.
    min_cell: side of the finest cells, voxels (>= 1); their Gaussians have scale
        ``min_cell / 2``.
    max_cell: side of the coarsest (root) cells, voxels; rounded down to ``min_cell * 2^k``.
        None: ``DEFAULT_MAX_CELL`` (or less for a small volume), doubled while the root
        cells alone would exceed ``max_gaussians``.
    threshold: density level (volume units, above ``background``) that a cell's mean, or
        its standard deviation beyond the noise, must exceed for the cell to split. None:
        significance levels from the estimated noise (module docstring).
    seed: seeds the order among cells of exactly equal priority; the result is a
        deterministic function of the inputs and the seed.
    background: level subtracted from the volume first; the model represents the rest.
        None: the volume's median (module docstring, "Background").
    refine_iterations: multiplicative corrections of the densities against the voxelised
        model (each costs one voxelisation, so it uses Taichi; module docstring).
        0: numpy only.

    Returns
    -------
    Raw parameters (float64) of at most ``max_gaussians`` Gaussians: centres inside the
    volume (centred voxel coordinates), axis-aligned scales ``<= max_cell / 2`` (largest /
    smallest <= 20, for cells cut thin by the volume's faces), identity
    rotations, densities > 0. Order: by octree level (coarsest first), then raster
    (z, y, x) order of the cells.

    Raises
    ------
    InputError: not a 3-D non-empty finite volume; ``max_gaussians < 1``; ``min_cell < 1``;
        ``max_cell < min_cell``; ``threshold < 0``; ``refine_iterations < 0``; a given
        ``max_cell`` whose root cells alone exceed ``max_gaussians``.
    """
    v = np.asarray(volume_zyx)
    if v.ndim != 3 or v.size == 0:
        raise InputError(f"volume must be a non-empty 3-D array (nz, ny, nx); "
                         f"got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InputError("volume contains NaN or infinite values")
    max_gaussians = int(max_gaussians)
    min_cell = int(min_cell)
    if max_gaussians < 1:
        raise InputError(f"max_gaussians must be >= 1; got {max_gaussians}")
    if min_cell < 1:
        raise InputError(f"min_cell must be >= 1 voxel; got {min_cell}")
    if max_cell is not None and int(max_cell) < min_cell:
        raise InputError(f"max_cell ({max_cell}) must be >= min_cell ({min_cell})")
    if int(refine_iterations) < 0:
        raise InputError(f"refine_iterations must be >= 0; got {refine_iterations}")
    if threshold is not None and not threshold >= 0:
        raise InputError(f"threshold must be >= 0; got {threshold}")
    shape = tuple(int(n) for n in v.shape)

    # Root size: min_cell * 2^n_levels.
    if max_cell is None:
        n_levels = 0
        while min_cell * 2 ** (n_levels + 1) <= min(DEFAULT_MAX_CELL, max(shape)):
            n_levels += 1
        while (np.prod([-(-n // (min_cell * 2 ** n_levels)) for n in shape]) > max_gaussians
               and min_cell * 2 ** n_levels < max(shape)):
            n_levels += 1
    else:
        n_levels = int(np.floor(np.log2(int(max_cell) / min_cell) + 1e-9))
    top = min_cell * 2 ** n_levels
    n_roots = int(np.prod([-(-n // top) for n in shape]))
    if n_roots > max_gaussians:
        raise InputError(f"{n_roots} root cells of {top} voxels are needed to cover a volume "
                         f"of {shape} (z, y, x), more than max_gaussians={max_gaussians}; "
                         "raise max_cell or max_gaussians")

    sigma = estimate_noise_sigma(v)
    # Order statistics of a large volume from every other voxel along each axis: the
    # median and the 99.9th percentile of 2^21 voxels and more are as good, and sorting
    # all of a bin-1 tomogram's took seconds (2.9 s of 9.3 for 180 x 512 x 824).
    sample = v[::2, ::2, ::2] if v.size > _FULL_STATISTICS_VOXELS else v
    if background is None:
        background = float(np.median(sample))
    vb = v.astype(np.float64) - float(background)
    signal_scale = float(np.percentile(np.abs(sample.astype(np.float64) - float(background)),
                                       99.9))
    if signal_scale <= 0:
        signal_scale = 1.0  # an all-background volume: any positive unit will do
    floor_t = _REL_FLOOR_THRESHOLD * signal_scale
    floor_rho = _REL_FLOOR_DENSITY * signal_scale

    # ---- base level: sums over min_cell blocks of the zero-padded volume -------------------
    padded = tuple(-(-n // top) * top for n in shape)
    vp = np.zeros(padded)
    vp[:shape[0], :shape[1], :shape[2]] = vb
    m = min_cell
    s1 = _block_sum(vp, m)
    s2 = _block_sum(vp * vp, m)
    np.maximum(vp, 0.0, out=vp)  # vp is now v+
    w = _block_sum(vp, m)
    # Centroid sums: sum of v+ times each centred coordinate, per block.
    bz, by, bx = (p // m for p in padded)
    r6 = vp.reshape(bz, m, by, m, bx, m)
    coords = [(np.arange(p) + 0.5 - n / 2.0).reshape(p // m, m) for p, n in zip(padded, shape)]
    wz = np.einsum("zayx,za->zyx", r6.sum(axis=(3, 5)), coords[0], optimize=True)
    wy = np.einsum("zyax,ya->zyx", r6.sum(axis=(1, 5)), coords[1], optimize=True)
    wx = np.einsum("zyxa,xa->zyx", r6.sum(axis=(1, 3)), coords[2], optimize=True)
    del vp, r6

    # ---- pyramid -------------------------------------------------------------------------
    levels = []  # per level: dict of per-cell arrays, level 0 = min_cell blocks
    sums = {"s1": s1, "s2": s2, "w": w, "wz": wz, "wy": wy, "wx": wx}
    for lev in range(n_levels + 1):
        size = m * 2 ** lev
        cz, cy, cx = (p // size for p in padded)
        ext = [_axis_counts(n, size, c) for n, c in zip(shape, (cz, cy, cx))]
        count = ext[0][:, None, None] * ext[1][None, :, None] * ext[2][None, None, :]
        levels.append(dict(sums, count=count, ext=ext, size=size))
        if lev < n_levels:
            sums = {k: _block_sum(a, 2) for k, a in sums.items()}

    # ---- split scores, made monotone down the tree -----------------------------------------
    sigma2 = sigma * sigma
    eff = [None] * (n_levels + 1)
    for lev in range(n_levels, 0, -1):
        L = levels[lev]
        n = L["count"]
        nn = np.maximum(n, 1.0)
        mean = L["s1"] / nn
        var = np.maximum(L["s2"] / nn - mean * mean, 0.0)
        mean_pos = np.maximum(mean, 0.0)
        excess = var - sigma2
        if threshold is None:
            t_mean = np.maximum(_N_SIGMA * sigma / np.sqrt(nn), floor_t)
            t_var = np.maximum(_N_SIGMA * sigma2 * np.sqrt(2.0 / np.maximum(nn - 1, 1)),
                               floor_t * floor_t)
        else:
            t_mean = max(float(threshold), floor_t)
            t_var = max(float(threshold), floor_t) ** 2
        may_split = (n > 0) & ((mean_pos > t_mean) | (excess > t_var))
        score = np.where(may_split, n * (np.maximum(excess, 0.0) + mean_pos * mean_pos),
                         -np.inf)
        if lev < n_levels:
            score = np.minimum(score, _upsample2(eff[lev + 1]))
        eff[lev] = score

    # ---- candidates in priority order; the longest prefix within the budget ---------------
    rng = np.random.default_rng(seed)
    cand_level, cand_index, cand_score, cand_cost = [], [], [], []
    for lev in range(1, n_levels + 1):
        flat = eff[lev].ravel()
        idx = np.flatnonzero(np.isfinite(flat))
        kids = _block_sum((levels[lev - 1]["count"] > 0).astype(np.int64), 2).ravel()[idx]
        cand_level.append(np.full(idx.size, lev))
        cand_index.append(idx)
        cand_score.append(flat[idx])
        cand_cost.append(kids - 1)
    cand_level = np.concatenate(cand_level) if cand_level else np.zeros(0, int)
    cand_index = np.concatenate(cand_index) if cand_index else np.zeros(0, int)
    cand_score = np.concatenate(cand_score) if cand_score else np.zeros(0)
    cand_cost = np.concatenate(cand_cost) if cand_cost else np.zeros(0, int)
    tiebreak = rng.permutation(cand_index.size)
    # np.lexsort: last key is primary. Higher score first, then coarser level, then random.
    order = np.lexsort((tiebreak, -cand_level, -cand_score))
    total = n_roots + np.cumsum(cand_cost[order])
    n_take = int(np.searchsorted(total, max_gaussians, side="right"))
    taken = order[:n_take]
    split = [np.zeros(levels[lev]["count"].shape, bool) for lev in range(n_levels + 1)]
    for lev in range(1, n_levels + 1):
        sel = taken[cand_level[taken] == lev]
        split[lev].ravel()[cand_index[sel]] = True

    # ---- leaves -> Gaussians ---------------------------------------------------------------
    means, scales, masses, leaf_masks = [], [], [], []
    for lev in range(n_levels, -1, -1):
        L = levels[lev]
        leaf = (L["count"] > 0) & ~split[lev]
        if lev < n_levels:
            leaf &= _upsample2(split[lev + 1])
        iz, iy, ix = np.nonzero(leaf)
        if iz.size == 0:
            continue
        leaf_masks.append((lev, leaf))
        size = L["size"]
        ext = np.stack([L["ext"][2][ix], L["ext"][1][iy], L["ext"][0][iz]], axis=1)  # x,y,z
        lo = np.stack([ix, iy, iz], axis=1) * size
        centre = lo + ext / 2.0 - np.array([shape[2], shape[1], shape[0]]) / 2.0
        w = L["w"][leaf]
        cen = np.stack([L["wx"][leaf], L["wy"][leaf], L["wz"][leaf]], axis=1)
        has_w = w > 0
        cen = np.where(has_w[:, None], cen / np.where(has_w, w, 1.0)[:, None], centre)
        means.append(cen)
        scales.append(ext / 2.0)
        masses.append(L["s1"][leaf])
    del levels
    means = np.concatenate(means)
    scales = np.concatenate(scales)
    # A root cell cut by the volume's face can be 1 voxel thin and 32-64 wide; keep its
    # aspect ratio within _MAX_ASPECT so that densification's degenerate-shape pruning
    # (ratio 50) does not remove it (its mass stays the cell's).
    scales = np.maximum(scales, scales.max(axis=1, keepdims=True) / _MAX_ASPECT)
    target = np.maximum(np.concatenate(masses), 0.0)
    rho = np.maximum(target / (_GAUSS_NORM * np.prod(scales, axis=1)), floor_rho)
    params = GaussianParams.from_activated(means, scales, rho)
    if refine_iterations > 0:
        from .render import voxelize_gaussians  # Taichi only when asked for

        for _ in range(int(refine_iterations)):
            got = _leaf_sums(voxelize_gaussians(params, shape), padded, m, leaf_masks)
            # Multiplicative (MART / Richardson-Lucy-like) update of each leaf's mass towards
            # its cell's integral; clipped so that one iteration cannot run away.
            ratio = np.clip(target / np.maximum(got, 1e-30), 0.25, 4.0)
            rho = np.maximum(rho * ratio, floor_rho)
            params = GaussianParams.from_activated(means, scales, rho)
    return params


def _leaf_sums(volume: np.ndarray, padded: tuple[int, int, int], min_cell: int,
               leaf_masks: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Integral of ``volume`` over each leaf cell, in the Gaussians' order. [N]"""
    vp = np.zeros(padded)
    vp[:volume.shape[0], :volume.shape[1], :volume.shape[2]] = volume
    level_sums = _block_sum(vp, min_cell)
    out = []
    current = 0
    for lev, leaf in sorted(leaf_masks, key=lambda t: t[0]):
        while current < lev:
            level_sums = _block_sum(level_sums, 2)
            current += 1
        out.append((lev, level_sums[leaf]))
    # Back to the Gaussians' order (coarsest level first).
    return np.concatenate([a for _, a in sorted(out, key=lambda t: -t[0])])
