"""Adaptive density control: clone, split and prune Gaussians (design.md section 3).

Every K iterations the model is adapted where the fit is poor:

- **Statistic** (:class:`DensifyStats`): per Gaussian, the sum over every view it appears in
  (all views of all iterations since the last reset, not one view per iteration as in the
  CryoETGS reference code) of the norm of ``dL/d(u, v)`` of its projected centre, in
  detector *pixel* units (no W/2, H/2 scaling), and the number of such views. Its mean per
  view, ``grad_norm_sum / view_count``, is what the gradient threshold compares to.
- **Clone** high-gradient Gaussians whose largest scale is ``<= scale_threshold``: the copy
  has the same parameters, and the parent's and the copy's densities are both halved. In
  3DGS a clone keeps its opacity because alpha compositing saturates; here the field and its
  projections are *sums*, so an unhalved copy would double the local mass and every view
  near it, a jump in the loss that the optimiser must first undo. Halving keeps the rendered
  views unchanged at the densification step (mass conserved exactly), and the optimiser then
  moves the two apart (the copy starts with fresh optimiser moments, which breaks the
  symmetry).
- **Split** high-gradient Gaussians whose largest scale is ``> scale_threshold`` into
  ``n_children`` (2) children: centres drawn from the parent's Gaussian ``N(mu, Sigma)``,
  same rotation, scales ``/ 1.6``, density ``rho * 1.6^3 / n_children``, so the children's
  total mass ``rho_c (2 pi)^(3/2) prod(s / 1.6)`` summed over children equals the parent's
  exactly (projections are line integrals: total mass is what every view's sum sees). The
  parent is removed. Children drawn outside the allowed box are clamped onto it.
- **Prune** Gaussians with density ``< min_density``, largest scale ``> max_scale``,
  largest/smallest scale ``> max_aspect`` (needles or pancakes: degenerate, and a source of
  streaks along the missing wedge), non-finite parameters, or centres outside the volume by
  more than ``margin`` voxels. A pruned Gaussian is never cloned or split.
- **Cap**: the count after the step never exceeds ``max_gaussians``; when the candidates do
  not all fit, those with the highest mean gradient go first (ties: lower index). If the
  model is already at or over the cap after pruning, nothing is added (nothing is removed
  to reach the cap either: that would silently drop mass).

Gradient threshold units and scaling
------------------------------------
The statistic is ``|dL/d(u, v)|`` per view, so it scales with the loss: linearly with the
weight the loss gives each pixel's residual and, for L1 and D-SSIM (whose per-pixel
gradient does not depend on the image scale), linearly with the image scale through
``d pixel / d u``. :data:`DEFAULT_GRAD_THRESHOLD` ``= 0.5`` is in *sum units*: for a loss that
sums per-pixel L1 residuals over each view, on views normalised to unit standard
deviation. The project's :func:`taichi_etgs.loss.view_loss` averages over the ``n_pix``
pixels of a view and the ``B`` views of a step (D-SSIM included, its statistic was measured
at 0.995 times the sum-L1 one divided by ``B n_pix``), so use
``grad_threshold_for_view_loss(n_pix, B) = 0.5 / (n_pix B)`` with it; any other per-pixel
weight rescales the same way (and a squared loss also scales with the residual's size).
3DGS's 0.0002 (NDC units, mean L1 over ~1e6 pixels of [0, 1] colour images) is of order 1
in sum units. The reference CryoETGS thresholds are in wrongly scaled units; not reused.

What the value means. A Gaussian of projected peak amplitude ``A`` (in units of the views'
std) and projected std ``s`` pixels whose residual keeps one sign over each half of its
footprint gets ``2 sqrt(2 pi) A s ~ 5 A s`` per view; where noise dominates the residual
(cryo-ET) the sign is random and every Gaussian reads about ``1.6 A`` (norm of a random
sum). Measured (400 Gaussians of std 1.5, 11 views of 64^2, unit-std views, sum-L1, one
Gaussian in ten moved by one std): with noise of the views' std, misplaced median 1.06,
well placed 0.97; without noise, L1's saturated sign gradient gives 2-3 to both. So on
low-SNR data this statistic (the mean of per-view norms of design.md) ranks Gaussians
mostly by projected amplitude, not by misfit: the noise does not average out because the
norm is taken per view. 0.5 densifies Gaussians whose projection stands above about 0.3
of the views' std, the strongest ones, which is where splitting adds detail. Because the
absolute level depends so much on data and loss, :func:`quantile_grad_threshold` gives a
scale-free alternative (densify the top fraction of seen Gaussians).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .gaussians import GaussianParams, density_raw_from_densities

__all__ = [
    "DEFAULT_GRAD_THRESHOLD",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_SCALE_THRESHOLD",
    "SPLIT_SCALE_FACTOR",
    "DensifyResult",
    "DensifyStats",
    "densify_and_prune",
    "grad_threshold_for_view_loss",
    "quantile_grad_threshold",
]

#: Mean per-view ``|dL/d(u, v)|`` above which a Gaussian is densified, for a loss that sums
#: per-pixel residuals of unit-std views (module docstring: how to rescale it).
DEFAULT_GRAD_THRESHOLD = 0.5
#: Largest scale (voxels) up to which a high-gradient Gaussian is cloned rather than split:
#: splitting a Gaussian of std <= 2 voxels would make children close to the voxel size,
#: below what binned cryo-ET data resolve (and the initial finest leaves have std 1).
DEFAULT_SCALE_THRESHOLD = 2.0
#: Largest/smallest scale ratio beyond which a Gaussian is pruned as degenerate.
DEFAULT_MAX_ASPECT = 50.0
#: Children's scales are the parent's divided by this (3DGS, design.md section 3).
SPLIT_SCALE_FACTOR = 1.6


class DensifyStats:
    """Per-Gaussian image-space gradient statistics, accumulated between densifications.

    Attributes
    ----------
    grad_norm_sum: sum over views of ``|dL/d(u, v)|`` of the projected centre, pixel
        units, float64. [N]
    view_count: number of views summed, int64. [N]
    """

    def __init__(self, n: int) -> None:
        if int(n) < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        self.grad_norm_sum = np.zeros(int(n), dtype=np.float64)
        self.view_count = np.zeros(int(n), dtype=np.int64)

    @property
    def n(self) -> int:
        """Number of Gaussians followed."""
        return int(self.view_count.shape[0])

    def __len__(self) -> int:
        return self.n

    def add(self, grad_norm_sum: np.ndarray, view_count: np.ndarray) -> None:
        """Add one backward pass's statistics (``ProjectionGrads.uv_grad_norm_sum`` and
        ``ProjectionGrads.visible_views`` of :func:`project_gaussians_backward`).

        grad_norm_sum: per-Gaussian sum of per-view gradient norms in that pass. [N]
        view_count: per-Gaussian number of views in that pass. [N]
        """
        g = np.asarray(grad_norm_sum, dtype=np.float64)
        c = np.asarray(view_count)
        if g.shape != (self.n,) or c.shape != (self.n,):
            raise ValueError(f"expected arrays of shape ({self.n},); got {g.shape} and "
                             f"{c.shape}")
        self.grad_norm_sum += g
        self.view_count += c.astype(np.int64)

    def mean_grad(self) -> np.ndarray:
        """Mean per-view gradient norm; 0 where a Gaussian was never seen. [N]"""
        return np.where(self.view_count > 0,
                        self.grad_norm_sum / np.maximum(self.view_count, 1), 0.0)

    def reset(self) -> None:
        """Zero every accumulator (after a densification step)."""
        self.grad_norm_sum[:] = 0.0
        self.view_count[:] = 0

    def select(self, keep: np.ndarray) -> None:
        """Keep only the Gaussians selected (boolean mask [N] or integer indices)."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape != (self.n,):
            raise ValueError(f"keep mask has shape {keep.shape}; expected ({self.n},)")
        self.grad_norm_sum = self.grad_norm_sum[keep].copy()
        self.view_count = self.view_count[keep].copy()

    def append(self, n_new: int) -> None:
        """Follow ``n_new`` Gaussians appended at the end, with zero statistics."""
        if int(n_new) < 0:
            raise ValueError(f"n_new must be >= 0; got {n_new}")
        self.grad_norm_sum = np.concatenate([self.grad_norm_sum, np.zeros(int(n_new))])
        self.view_count = np.concatenate([self.view_count,
                                          np.zeros(int(n_new), dtype=np.int64)])


def grad_threshold_for_view_loss(n_pixels_per_view: int, views_per_step: int,
                                 threshold_sum_units: float = DEFAULT_GRAD_THRESHOLD) -> float:
    """Gradient threshold for :func:`taichi_etgs.loss.view_loss` (a mean over pixels and views).

    Parameters
    ----------
    n_pixels_per_view: detector pixels of one view (``ny * nu``).
    views_per_step: views in each loss evaluation (each backward pass).
    threshold_sum_units: threshold for a loss summed over pixels (module docstring).

    Returns
    -------
    ``threshold_sum_units / (n_pixels_per_view * views_per_step)``.
    """
    if int(n_pixels_per_view) < 1 or int(views_per_step) < 1:
        raise InputError("n_pixels_per_view and views_per_step must be >= 1")
    return float(threshold_sum_units) / (int(n_pixels_per_view) * int(views_per_step))


def quantile_grad_threshold(stats: DensifyStats, quantile: float) -> float:
    """The ``quantile`` of the mean per-view gradient over the Gaussians seen at least once.

    Passing ``quantile_grad_threshold(stats, 0.9)`` as ``grad_threshold`` densifies about the
    top 10 % of seen Gaussians, whatever the loss's scale. Returns ``inf`` (nothing will be
    densified) when no Gaussian was seen.

    Parameters
    ----------
    stats: accumulated statistics.
    quantile: in [0, 1].
    """
    if not 0.0 <= quantile <= 1.0:
        raise InputError(f"quantile must be in [0, 1]; got {quantile}")
    seen = stats.view_count > 0
    if not np.any(seen):
        return float("inf")
    return float(np.quantile(stats.mean_grad()[seen], quantile))


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
        by increasing parent index), then the split children (``n_children`` consecutive
        per split parent, by increasing parent index).
    parent_index: old index of the Gaussian each appended one comes from. [n_appended]
    n_cloned: Gaussians cloned (= clones appended).
    n_split: Gaussians split (each removed and replaced by ``n_children`` children).
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
                      volume_shape_zyx: Sequence[int], rng: np.random.Generator,
                      grad_threshold: float = DEFAULT_GRAD_THRESHOLD,
                      scale_threshold: float = DEFAULT_SCALE_THRESHOLD,
                      max_scale: float | None = None,
                      max_aspect: float = DEFAULT_MAX_ASPECT,
                      margin: float = 2.0, n_children: int = 2) -> DensifyResult:
    """Clone small and split large high-gradient Gaussians, prune bad ones, keep the cap.

    See the module docstring for the rules and for the units of ``grad_threshold``.

    Parameters
    ----------
    params: current raw parameters (N Gaussians); not modified.
    stats: statistics accumulated since the last densification (N Gaussians); not modified
        (reset it, or follow the result with ``select``/``append``, afterwards).
    max_gaussians: the count after this step never exceeds it.
    min_density: Gaussians with density ``rho`` below this are pruned (volume units).
    volume_shape_zyx: reconstruction volume (nz, ny, nx); centres must lie within
        ``+-n/2 + margin`` voxels on each axis (centred coordinates).
    rng: draws the split children's positions; the result is a deterministic function of
        the inputs and the generator's state.
    grad_threshold: mean per-view ``|dL/d(u, v)|`` (pixel units) at or above which a
        Gaussian is densified.
    scale_threshold: largest scale (voxels) up to which a Gaussian is cloned; above it, split.
    max_scale: Gaussians whose largest scale exceeds it (voxels) are pruned. None: half the
        volume's largest side (a safety net against diverging scales; never below the
        scales :func:`taichi_etgs.init.init_from_volume` gives, at most half a cell's
        extent inside the volume).
    max_aspect: Gaussians whose largest/smallest scale exceeds it are pruned.
    margin: voxels beyond the volume's faces within which centres are still kept.
    n_children: children per split.

    Returns
    -------
    DensifyResult: new params and the index bookkeeping for the optimiser state.

    Raises
    ------
    InputError: inconsistent sizes or out-of-range settings.
    """
    n = params.n
    if stats.n != n:
        raise InputError(f"stats follow {stats.n} Gaussians but params hold {n}")
    shape = tuple(int(s) for s in volume_shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"volume_shape_zyx must be three positive sizes; got "
                         f"{volume_shape_zyx}")
    if int(max_gaussians) < 0 or int(n_children) < 2:
        raise InputError(f"need max_gaussians >= 0 and n_children >= 2; got {max_gaussians}, "
                         f"{n_children}")
    if not (grad_threshold > 0 and scale_threshold > 0 and max_aspect >= 1 and margin >= 0):
        raise InputError("grad_threshold and scale_threshold must be > 0, max_aspect >= 1, "
                         "margin >= 0")
    max_gaussians, n_children = int(max_gaussians), int(n_children)
    if max_scale is None:
        max_scale = 0.5 * max(shape)

    means = np.asarray(params.means_xyz, np.float64)
    with np.errstate(over="ignore"):  # a diverged log-scale becomes inf, and is pruned
        scales = np.exp(np.asarray(params.log_scales, np.float64))
    rho = params.densities().astype(np.float64)
    s_max = scales.max(axis=1)
    s_min = scales.min(axis=1)
    half = np.array([shape[2], shape[1], shape[0]], np.float64) / 2.0 + margin

    finite = (np.all(np.isfinite(means), axis=1) & np.all(np.isfinite(scales), axis=1)
              & np.all(np.isfinite(params.quats_wxyz), axis=1) & np.isfinite(rho))
    with np.errstate(invalid="ignore", over="ignore"):
        prune = (~finite | (rho < min_density) | (s_max > max_scale)
                 | (s_max > max_aspect * s_min) | ~_inside_box(np.nan_to_num(means), half))

    grad = stats.mean_grad()
    candidate = ~prune & (stats.view_count > 0) & (grad >= grad_threshold)
    # Cap: each clone or split adds (1 or n_children - 1) Gaussians; highest gradient first.
    cand = np.flatnonzero(candidate)
    cand = cand[np.argsort(-grad[cand], kind="stable")]
    is_clone = s_max[cand] <= scale_threshold
    cost = np.where(is_clone, 1, n_children - 1)
    room = max_gaussians - int(np.count_nonzero(~prune))
    n_take = int(np.searchsorted(np.cumsum(cost), room, side="right")) if room > 0 else 0
    cand, is_clone = cand[:n_take], is_clone[:n_take]
    clone_idx = np.sort(cand[is_clone])
    split_idx = np.sort(cand[~is_clone])

    # Kept Gaussians (clone parents with halved density).
    keep = ~prune
    keep[split_idx] = False
    new_rho = rho.copy()
    new_rho[clone_idx] *= 0.5

    # Clones: copies of the (halved) parents.
    clone_means = means[clone_idx]
    clone_log_scales = np.asarray(params.log_scales, np.float64)[clone_idx]
    clone_quats = np.asarray(params.quats_wxyz, np.float64)[clone_idx]
    clone_rho = new_rho[clone_idx]

    # Split children: positions from N(mu, Sigma) = mu + R diag(s) z.
    rep = np.repeat(split_idx, n_children)
    z = rng.standard_normal((rep.size, 3))
    rot = params.subset(rep).rotations().astype(np.float64)
    child_means = means[rep] + np.einsum("nij,nj->ni", rot, scales[rep] * z)
    # Clamp into the kept box (just inside it) so no child is pruned for its position.
    child_means = np.clip(child_means, -half * (1 - 1e-9), half * (1 - 1e-9))
    child_log_scales = np.log(scales[rep] / SPLIT_SCALE_FACTOR)
    child_quats = np.asarray(params.quats_wxyz, np.float64)[rep]
    child_rho = rho[rep] * SPLIT_SCALE_FACTOR ** 3 / n_children

    appended = GaussianParams(
        means_xyz=np.concatenate([clone_means, child_means]).astype(params.means_xyz.dtype),
        log_scales=np.concatenate([clone_log_scales, child_log_scales]).astype(
            params.log_scales.dtype),
        quats_wxyz=np.concatenate([clone_quats, child_quats]).astype(params.quats_wxyz.dtype),
        density_raw=density_raw_from_densities(
            np.concatenate([clone_rho, child_rho])).astype(params.density_raw.dtype))
    # Kept Gaussians, raw values copied bit-exact except the halved clone parents' density.
    base = params.copy()
    base.density_raw[clone_idx] = density_raw_from_densities(new_rho[clone_idx])
    kept = base.subset(keep)

    new = GaussianParams(*(np.concatenate([getattr(kept, f), getattr(appended, f)])
                           for f in ("means_xyz", "log_scales", "quats_wxyz", "density_raw")))
    return DensifyResult(params=new, keep_mask=keep, n_appended=int(appended.n),
                         parent_index=np.concatenate([clone_idx, rep]).astype(np.int64),
                         n_cloned=int(clone_idx.size), n_split=int(split_idx.size),
                         n_pruned=int(np.count_nonzero(prune)))
