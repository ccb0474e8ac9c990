"""Adaptive density control: clone, split and prune Gaussians (docs/method.md,
"Densification").

Every ``DensifyConfig.every`` iterations (from ``start`` until ``stop_fraction`` of the run)
the model is adapted where the optimiser keeps pulling it one way:

Statistic: gradient consistency
-------------------------------
:class:`DensifyStats` accumulates, per Gaussian and over the optimisation steps ``k`` since
the last densification, the 3D position gradient ``g_k = dL/dmu`` (each step's gradient is
already summed over that step's views), ``S = sum_k g_k``, ``Q = sum_k |g_k|^2`` and the number
of steps in which the Gaussian was visible. The *consistency*

    ``C = |S| / sqrt(Q)``   (0 for a Gaussian never seen, or with only zero gradients)

is scale-free (the loss's normalisation, the views' units and the number of views per step
cancel: no threshold to rescale) and lies in ``[0, sqrt(n_seen)]``. Gradients that change
sign at random from step to step give ``C ~ 1``; a pull that keeps its direction gives
``C ~ sqrt(n)``. The measured views' noise is fixed, so what differs between steps is which
views (with their noise and geometry) a step sees: ``S`` approximates the full-batch pull on
the Gaussian and ``sqrt(Q)`` its spread over views. A Gaussian at its best position gets
per-view pulls that cancel, whatever its amplitude; one in an under-fitted region keeps
being pulled one way (the meaning of a large positional gradient in 3DGS).

Why not the mean per-view ``|dL/d(u, v)|`` (the previous statistic, and 3DGS's): the norm is
taken per view, so noise does not average out; on noisy data every Gaussian reads about
``1.6 A`` (``A``: its projected amplitude in units of the views' std), and ranking by it
ranks by amplitude. Measured on the project's data: splitting the top 5 % by that
statistic moved ~45 % of the model's mass and each densification raised the loss from 0.27
to 0.43.

Threshold (:data:`DEFAULT_CONSISTENCY_THRESHOLD` ``= 3``): for independent zero-mean
gradients with covariance ``Sigma_k``, ``S`` is close to ``N(0, sum Sigma_k)`` (central limit)
and ``Q`` to ``tr(sum Sigma_k)`` (law of large numbers), so ``C^2`` is close to
``sum_i lambda_i z_i^2 / sum_i lambda_i``, a weighted mean of three chi^2_1 variables
(``lambda_i``: eigenvalues of ``sum Sigma_k``). Isotropic noise gives ``chi^2_3 / 3``:
``P(C > 3) = P(chi^2_3 > 27) = 6e-6``; noise along one direction only (the worst case, the
most spread weighted mean) gives ``chi^2_1``: ``P(C > 3) = P(|z| > 3) = 0.27 %``. ``C`` is
self-normalised: a few steps with very large gradients pull it towards 1 (one dominant
step gives ``C ~ 1``), never above. Measured (n = 50 steps, 20 000 draws,
``tests/test_densify.py``): isotropic Gaussian noise 0 % above 3, one-directional noise
0.19 %, log-normal step amplitudes (sigma 1.5) 0 %. A constant pull ``m`` plus noise ``e`` of
per-step ``SNR = |m| / sqrt(E|e|^2)`` gives ``C ~ sqrt(n) SNR / sqrt(1 + SNR^2)``: at n = 50,
SNR 0.5 (C ~ 3.2) 72 % are above 3, SNR 0.7: 99.8 %, SNR 0.3: 4 %. Since ``C <=
sqrt(n_seen)``, a Gaussian seen in fewer than 10 steps is never densified.

In a fit (a one-off measurement, not a test: 400 random Gaussians, 10 % moved by 1.5
voxels, L1 loss, Adam at the default rates, ``C`` over steps 100-200): ``C`` follows the
remaining position error (Spearman 0.62) and not the mass (-0.39); 21 % of the moved and
1.4 % of the others were above 3 without noise. With noise of the views' std the moved and
the others are barely told apart (AUC 0.54, 10 % vs 6 % above 3; Spearman with the
remaining error still 0.62): the optimum of noisy data is not the true model, and what
``C`` flags is where the optimiser is still being pulled, whatever the amplitude.

Cap: at most ``max_fraction`` (5 %) of the model (``floor(max_fraction N)``) is densified per
step, highest consistency first (ties: lower index), and the count after the step never
exceeds ``max_gaussians``. If the model is at or over the cap after pruning nothing is added
(nothing is removed to reach it either: that would silently drop mass).

Clone and split: mass and moments kept
--------------------------------------
The field and its projections are *sums* (line integrals), so a densification step should
leave the rendered views as they were and let the optimiser make use of the new freedom.

- **Clone** (largest scale ``<= scale_threshold``): a copy with the same parameters; the
  parent's and the copy's densities are both halved. The views are unchanged (to float
  rounding); the copy starts with fresh optimiser moments, and the optimiser moves the two
  apart. (3DGS keeps opacity because alpha compositing saturates; a sum does not.)
- **Split** (largest scale ``s > scale_threshold``): two children placed deterministically
  at ``mu +- d R e_max`` along the parent's largest axis, ``d = SPLIT_OFFSET s`` (0.5), that
  axis's scale reduced to ``s_c = sqrt(s^2 - d^2) = 0.866 s`` (the other two unchanged, same
  rotation), each child with half the parent's mass (density ``rho s / (2 s_c)``). Mass,
  centre and covariance (first and second moments) are exactly the parent's; the mixture
  differs only from the fourth moment on (excess kurtosis ``-2 (d/s)^4 = -0.125`` along
  the axis). Along that axis the 1-D profile changes by 1.9 % (relative L2; 0.7 % at d/s =
  0.4, 4.5 % at 0.6, 10 % at 0.7: the choice keeps it near 1 %); the children are
  ``1.15 s_c`` apart (unimodal mixture; the optimiser separates them).

  Measured (``tests/test_densify.py``; 21 views, -60..60 degrees, 48 x 48 pixels; relative
  L2 change ``||after - before|| / ||before||`` of all views): splitting 5 % of 300-2000
  random Gaussians (std 1-4 voxels) chosen at random: 0.03-0.07 %; splitting the 5 % of
  largest mass (19 % of the total): 0.08-0.2 % (the previous split, children drawn from
  ``N(mu, Sigma)`` with scales / 1.6: 10 %); the heaviest Gaussian's own views: 1.2 %
  (d/s = 0.4: 0.5 %, 0.6: 2.8 %, 0.7: 6.3 %); a clone step: < 1e-7 (float32 rounding). In a
  fit (400 Gaussians, 100 Adam steps on the L1 of :func:`taichi_etgs.gaussian.loss.view_loss`, then
  ``densify_and_prune`` at the defaults): the loss over all views changed by +7e-5
  (noise-free views; the previous rule on the same Gaussians: +190 %) and -4e-6 (noise of
  half the views' std; previous rule: +0.8 %).

  A split whose child would fall outside the kept box (below) is made a clone instead. No
  random draw is involved: the result is a function of the inputs.

Prune
-----
Gaussians with density ``< min_density`` (or not positive), largest scale ``> max_scale``,
largest/smallest scale ``> max_aspect`` (needles or pancakes: degenerate, and a source of
streaks along the missing wedge), non-finite parameters, or centres outside the volume by
more than ``margin`` voxels are removed. A pruned Gaussian is never cloned or split.
:func:`clamp_scales` keeps scales between a floor and a ceiling between densifications
(call it after each optimiser step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .params import GaussianParams, density_raw_from_densities

__all__ = [
    "DEFAULT_CONSISTENCY_THRESHOLD",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_FRACTION",
    "DEFAULT_SCALE_THRESHOLD",
    "SPLIT_OFFSET",
    "DensifyConfig",
    "DensifyResult",
    "DensifyStats",
    "clamp_scales",
    "densify_and_prune",
]

#: Consistency ``|sum g| / sqrt(sum |g|^2)`` above which a Gaussian is densified: a
#: 3-sigma level even for one-directional noise (module docstring).
DEFAULT_CONSISTENCY_THRESHOLD = 3.0
#: Largest fraction of the model densified in one step.
DEFAULT_MAX_FRACTION = 0.05
#: Largest scale (voxels) up to which a Gaussian is cloned rather than split: splitting a
#: Gaussian of std <= 2 voxels would make children close to the voxel size, below what
#: binned cryo-ET data resolve (and the initial finest leaves have std 1).
DEFAULT_SCALE_THRESHOLD = 2.0
#: Largest/smallest scale ratio beyond which a Gaussian is pruned as degenerate.
DEFAULT_MAX_ASPECT = 50.0
#: Split children sit at ``+- SPLIT_OFFSET s`` along the parent's largest axis (scale ``s``).
SPLIT_OFFSET = 0.5


@dataclass(frozen=True)
class DensifyConfig:
    """Settings of adaptive density control (in the style of gsplat's ``DefaultStrategy``).

    every: densify every this many iterations.
    start: first iteration (iterations completed) at which to densify.
    stop_fraction: fraction of the run after which the model no longer grows.
    consistency_threshold: densify Gaussians whose consistency exceeds it (> 0; module
        docstring: 3 is a 3-sigma level for noise gradients).
    max_fraction: at most this fraction of the model is densified per step, in [0, 1].
    scale_threshold: largest scale (voxels) up to which a Gaussian is cloned; above, split.
    max_aspect: Gaussians whose largest/smallest scale exceeds it are pruned (>= 1).
    margin: voxels beyond the volume's faces within which centres are still kept (>= 0).
    min_density_fraction: prune Gaussians whose density falls below this fraction of the
        initial model's median density (:meth:`min_density`), >= 0.
    """

    every: int = 100
    start: int = 100
    stop_fraction: float = 0.5
    consistency_threshold: float = DEFAULT_CONSISTENCY_THRESHOLD
    max_fraction: float = DEFAULT_MAX_FRACTION
    scale_threshold: float = DEFAULT_SCALE_THRESHOLD
    max_aspect: float = DEFAULT_MAX_ASPECT
    margin: float = 2.0
    min_density_fraction: float = 0.01

    def __post_init__(self) -> None:
        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        checks = [
            (is_int(self.every) and self.every >= 1,
             f"densify every must be an integer >= 1; got {self.every!r}"),
            (is_int(self.start) and self.start >= 0,
             f"densify start must be an integer >= 0; got {self.start!r}"),
            (0.0 <= self.stop_fraction <= 1.0,
             f"densify stop fraction must be in [0, 1]; got {self.stop_fraction!r}"),
            (0.0 < self.consistency_threshold < np.inf,
             f"consistency threshold must be > 0 and finite; got "
             f"{self.consistency_threshold!r}"),
            (0.0 <= self.max_fraction <= 1.0,
             f"densify max fraction must be in [0, 1]; got {self.max_fraction!r}"),
            (0.0 < self.scale_threshold < np.inf,
             f"scale threshold must be > 0 and finite; got {self.scale_threshold!r}"),
            (self.max_aspect >= 1.0,
             f"max aspect must be >= 1; got {self.max_aspect!r}"),
            (0.0 <= self.margin < np.inf, f"margin must be >= 0; got {self.margin!r}"),
            (0.0 <= self.min_density_fraction < np.inf,
             f"min density fraction must be >= 0; got {self.min_density_fraction!r}"),
        ]
        for ok, message in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise InputError(message)

    def is_due(self, iteration: int, iterations: int) -> bool:
        """Whether to densify once ``iteration`` iterations of ``iterations`` are done."""
        return (iteration >= self.start and iteration <= self.stop_fraction * iterations
                and iteration % self.every == 0)

    def min_density(self, initial: GaussianParams) -> float:
        """Absolute pruning density: ``min_density_fraction`` of ``initial``'s median density
        (0 for an empty model)."""
        if initial.n == 0:
            return 0.0
        return self.min_density_fraction * float(np.median(initial.densities()))


class DensifyStats:
    """Per-Gaussian position-gradient statistics, accumulated between densifications.

    Attributes
    ----------
    grad_sum: ``sum_k dL/dmu`` over the steps, float64. [N, 3]
    grad_sq_sum: ``sum_k |dL/dmu|^2`` over the steps, float64. [N]
    seen_steps: steps in which the Gaussian was visible in at least one view, int64. [N]
    """

    _FIELDS = ("grad_sum", "grad_sq_sum", "seen_steps")

    def __init__(self, n: int) -> None:
        if int(n) < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        self.grad_sum = np.zeros((int(n), 3), dtype=np.float64)
        self.grad_sq_sum = np.zeros(int(n), dtype=np.float64)
        self.seen_steps = np.zeros(int(n), dtype=np.int64)

    @property
    def n(self) -> int:
        """Number of Gaussians followed."""
        return int(self.seen_steps.shape[0])

    def __len__(self) -> int:
        return self.n

    def add(self, means_grad_xyz: np.ndarray, visible_views: np.ndarray) -> None:
        """Add one optimisation step.

        means_grad_xyz: ``dL/dmu`` of the step, summed over its views
            (``ProjectionGrads.grads.means_xyz``). [N, 3]
        visible_views: views of the step in which each Gaussian is visible
            (``ProjectionGrads.visible_views``); > 0 counts the step as seen. [N]
        """
        g = np.asarray(means_grad_xyz, dtype=np.float64)
        c = np.asarray(visible_views)
        if g.shape != (self.n, 3) or c.shape != (self.n,):
            raise ValueError(f"expected arrays of shape ({self.n}, 3) and ({self.n},); got "
                             f"{g.shape} and {c.shape}")
        self.grad_sum += g
        self.grad_sq_sum += np.einsum("ni,ni->n", g, g)
        self.seen_steps += c > 0

    def consistency(self) -> np.ndarray:
        """``|sum g| / sqrt(sum |g|^2)``; 0 where never seen or all gradients were 0. [N]"""
        num = np.linalg.norm(self.grad_sum, axis=1)
        ok = (self.seen_steps > 0) & (self.grad_sq_sum > 0)
        return np.where(ok, num / np.sqrt(np.where(ok, self.grad_sq_sum, 1.0)), 0.0)

    def reset(self) -> None:
        """Zero every accumulator (after a densification step)."""
        self.grad_sum[:] = 0.0
        self.grad_sq_sum[:] = 0.0
        self.seen_steps[:] = 0

    def select(self, keep: np.ndarray) -> None:
        """Keep only the Gaussians selected (boolean mask [N] or integer indices)."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape != (self.n,):
            raise ValueError(f"keep mask has shape {keep.shape}; expected ({self.n},)")
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name)[keep].copy())

    def append(self, n_new: int) -> None:
        """Follow ``n_new`` Gaussians appended at the end, with zero statistics."""
        if int(n_new) < 0:
            raise ValueError(f"n_new must be >= 0; got {n_new}")
        for name in self._FIELDS:
            a = getattr(self, name)
            setattr(self, name, np.concatenate([a, np.zeros((int(n_new),) + a.shape[1:],
                                                             a.dtype)]))

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the accumulators, by attribute name (to save and resume a run)."""
        return {name: getattr(self, name).copy() for name in self._FIELDS}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> DensifyStats:
        """Statistics continuing from :meth:`state`'s dictionary (arrays copied).

        Raises
        ------
        InputError: a key missing or arrays of inconsistent shapes.
        """
        missing = [k for k in cls._FIELDS if k not in state]
        if missing:
            raise InputError(f"densification statistics lack {', '.join(missing)}")
        seen = np.asarray(state["seen_steps"])
        n = seen.shape[0] if seen.ndim == 1 else -1
        out = cls(max(n, 0))
        arrays = {"grad_sum": np.asarray(state["grad_sum"], np.float64),
                  "grad_sq_sum": np.asarray(state["grad_sq_sum"], np.float64),
                  "seen_steps": seen}
        if (n < 0 or arrays["grad_sum"].shape != (n, 3) or arrays["grad_sq_sum"].shape != (n,)
                or not np.issubdtype(seen.dtype, np.integer)):
            raise InputError(f"densification statistics have inconsistent shapes: "
                             f"{ {k: np.shape(v) for k, v in arrays.items()} }")
        out.grad_sum[:] = arrays["grad_sum"]
        out.grad_sq_sum[:] = arrays["grad_sq_sum"]
        out.seen_steps[:] = seen
        return out


def clamp_scales(params: GaussianParams, min_scale: float | None = None,
                 max_scale: float | None = None) -> int:
    """Clamp every scale into ``[min_scale, max_scale]`` voxels, **in place**.

    Modifies ``params.log_scales`` (so an optimiser holding ``params`` sees the clamped
    values; its moments are left alone). Call it after each optimiser step. NaN log-scales
    are left as they are (pruning removes them).

    Parameters
    ----------
    params: the model; its ``log_scales`` are changed in place.
    min_scale: floor (voxels, > 0); None: no floor.
    max_scale: ceiling (voxels, >= min_scale); None: no ceiling.

    Returns
    -------
    Number of scale entries (of ``3 N``) that were changed.

    Raises
    ------
    InputError: a bound not positive, or ``max_scale < min_scale``.
    """
    lo = -np.inf if min_scale is None else float(min_scale)
    hi = np.inf if max_scale is None else float(max_scale)
    if not (lo == -np.inf or lo > 0) or not hi > 0 or not hi >= lo:
        raise InputError(f"need 0 < min_scale <= max_scale; got {min_scale}, {max_scale}")
    ls = params.log_scales
    log_lo = -np.inf if lo == -np.inf else np.log(lo)
    log_hi = np.log(hi)
    with np.errstate(invalid="ignore"):
        out = (ls < log_lo) | (ls > log_hi)
    n_changed = int(np.count_nonzero(out))
    if n_changed:
        np.clip(ls, log_lo, log_hi, out=ls)
    return n_changed


@dataclass
class DensifyResult:
    """What :func:`densify_and_prune` returns.

    To follow the step, apply ``keep_mask`` to the old per-Gaussian state first, then
    append ``n_appended`` entries: ``new = concat(old[keep_mask], appended)``. This is
    exactly how ``params`` was built, and what ``Adam.select(keep_mask)`` then
    ``Adam.append(n_appended)`` (and :class:`DensifyStats`) do. To give the appended
    Gaussians their parents' moments instead of zeros, select with the integer indices
    ``concat(flatnonzero(keep_mask), parent_index)``.

    params: the new model (kept Gaussians in their old order, then the appended ones).
        Kept clone parents have their density halved in place. [N_new]
    keep_mask: old Gaussians that stay (False: pruned, or a split parent). [N_old]
    n_appended: Gaussians appended at the end: first the clones (one per cloned parent,
        by increasing parent index), then the split children (two consecutive per split
        parent, ``+d`` then ``-d``, by increasing parent index).
    parent_index: old index of the Gaussian each appended one comes from. [n_appended]
    n_cloned: Gaussians cloned (= clones appended).
    n_split: Gaussians split (each removed and replaced by two children).
    n_pruned: Gaussians pruned (split parents not counted).
    """

    params: GaussianParams
    keep_mask: np.ndarray
    n_appended: int
    parent_index: np.ndarray
    n_cloned: int
    n_split: int
    n_pruned: int


def _inside_box(means_xyz: np.ndarray, half_xyz: np.ndarray) -> np.ndarray:
    return np.all(np.abs(means_xyz) <= half_xyz, axis=1)


def densify_and_prune(params: GaussianParams, stats: DensifyStats, *,
                      max_gaussians: int, min_density: float,
                      volume_shape_zyx: Sequence[int],
                      config: DensifyConfig | None = None,
                      max_scale: float | None = None) -> DensifyResult:
    """Clone small and split large consistently-pulled Gaussians, prune bad ones, keep caps.

    See the module docstring for the rules. Deterministic: no random draw.

    Parameters
    ----------
    params: current raw parameters (N Gaussians); not modified.
    stats: statistics accumulated since the last densification (N Gaussians); not modified
        (reset it, or follow the result with ``select``/``append``, afterwards).
    max_gaussians: the count after this step never exceeds it.
    min_density: Gaussians with density ``rho`` below this are pruned (volume units;
        :meth:`DensifyConfig.min_density`).
    volume_shape_zyx: reconstruction volume (nz, ny, nx); centres must lie within
        ``+-n/2 + margin`` voxels on each axis (centred coordinates).
    config: thresholds, cap fraction, pruning settings; None: ``DensifyConfig()``.
    max_scale: Gaussians whose largest scale exceeds it (voxels) are pruned. None: half the
        volume's largest side (a safety net against diverging scales; never below the
        scales :func:`taichi_etgs.gaussian.seeding.init_from_volume` gives, at most half a cell's
        extent inside the volume).

    Returns
    -------
    DensifyResult: new params and the index bookkeeping for the optimiser state.

    Raises
    ------
    InputError: inconsistent sizes or out-of-range settings.
    """
    cfg = DensifyConfig() if config is None else config
    n = params.n
    if stats.n != n:
        raise InputError(f"stats follow {stats.n} Gaussians but params hold {n}")
    shape = tuple(int(v) for v in volume_shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"volume_shape_zyx must be three positive sizes; got "
                         f"{volume_shape_zyx}")
    if int(max_gaussians) < 0:
        raise InputError(f"max_gaussians must be >= 0; got {max_gaussians}")
    if max_scale is not None and not max_scale > 0:
        raise InputError(f"max_scale must be > 0; got {max_scale}")
    max_gaussians = int(max_gaussians)
    if max_scale is None:
        max_scale = 0.5 * max(shape)

    means = np.asarray(params.means_xyz, np.float64)
    log_scales = np.asarray(params.log_scales, np.float64)
    with np.errstate(over="ignore"):  # a diverged log-scale becomes inf, and is pruned
        scales = np.exp(log_scales)
    rho = params.densities().astype(np.float64)
    s_max = scales.max(axis=1)
    s_min = scales.min(axis=1)
    half = np.array([shape[2], shape[1], shape[0]], np.float64) / 2.0 + cfg.margin

    finite = (np.all(np.isfinite(means), axis=1) & np.all(np.isfinite(scales), axis=1)
              & np.all(np.isfinite(params.quats_wxyz), axis=1) & np.isfinite(rho))
    with np.errstate(invalid="ignore", over="ignore"):
        prune = (~finite | ~(rho > 0) | (rho < min_density) | (s_max > max_scale)
                 | (s_max > cfg.max_aspect * s_min)
                 | ~_inside_box(np.nan_to_num(means), half))

    score = stats.consistency()
    candidate = ~prune & (stats.seen_steps > 0) & (score > cfg.consistency_threshold)
    # Caps: each clone or split adds one Gaussian; highest consistency first.
    cand = np.flatnonzero(candidate)
    cand = cand[np.argsort(-score[cand], kind="stable")]
    room = max_gaussians - int(np.count_nonzero(~prune))
    n_take = max(0, min(cand.size, int(np.floor(cfg.max_fraction * n + 1e-9)), room))
    cand = cand[:n_take]

    # Split geometry (all candidates; only the split ones are used).
    axis = np.argmax(scales[cand], axis=1) if cand.size else np.zeros(0, np.int64)
    rot = params.subset(cand).rotations().astype(np.float64)
    s_axis = scales[cand, axis]
    offset = (SPLIT_OFFSET * s_axis)[:, None] * rot[np.arange(cand.size), :, axis]
    plus, minus = means[cand] + offset, means[cand] - offset
    kids_inside = _inside_box(plus, half) & _inside_box(minus, half)
    is_split = (s_max[cand] > cfg.scale_threshold) & kids_inside
    order = np.argsort(cand, kind="stable")  # by increasing parent index
    cand, axis, plus, minus, is_split = (cand[order], axis[order], plus[order], minus[order],
                                         is_split[order])
    clone_idx = cand[~is_split]
    split_idx = cand[is_split]
    split_axis = axis[is_split]

    # Kept Gaussians (clone parents with halved density).
    keep = ~prune
    keep[split_idx] = False
    half_rho = density_raw_from_densities(rho[clone_idx] * 0.5) if clone_idx.size else \
        np.zeros(0)

    # Clones: copies of the (halved) parents.
    clone_means = means[clone_idx]
    clone_log_scales = log_scales[clone_idx]
    clone_quats = np.asarray(params.quats_wxyz, np.float64)[clone_idx]

    # Split children: +d then -d along the largest axis; that axis's scale to sqrt(s^2 - d^2).
    rep = np.repeat(split_idx, 2)
    child_means = np.stack([plus[is_split], minus[is_split]], axis=1).reshape(-1, 3)
    shrink = 0.5 * np.log1p(-SPLIT_OFFSET ** 2)  # log(s_c / s)
    child_log_scales = log_scales[rep].copy()
    child_log_scales[np.arange(rep.size), np.repeat(split_axis, 2)] += shrink
    child_quats = np.asarray(params.quats_wxyz, np.float64)[rep]
    child_rho = rho[rep] * 0.5 * np.exp(-shrink)  # each child half the parent's mass

    appended = GaussianParams(
        means_xyz=np.concatenate([clone_means, child_means]).astype(params.means_xyz.dtype),
        log_scales=np.concatenate([clone_log_scales, child_log_scales]).astype(
            params.log_scales.dtype),
        quats_wxyz=np.concatenate([clone_quats, child_quats]).astype(params.quats_wxyz.dtype),
        density_raw=np.concatenate([
            half_rho, density_raw_from_densities(child_rho) if rep.size else np.zeros(0)
        ]).astype(params.density_raw.dtype))
    # Kept Gaussians, raw values copied bit-exact except the halved clone parents' density.
    base = params.copy()
    base.density_raw[clone_idx] = half_rho
    kept = base.subset(keep)

    new = GaussianParams(*(np.concatenate([getattr(kept, f), getattr(appended, f)])
                           for f in ("means_xyz", "log_scales", "quats_wxyz", "density_raw")))
    return DensifyResult(params=new, keep_mask=keep, n_appended=int(appended.n),
                         parent_index=np.concatenate([clone_idx, rep]).astype(np.int64),
                         n_cloned=int(clone_idx.size), n_split=int(split_idx.size),
                         n_pruned=int(np.count_nonzero(prune)))
