"""Adam with per-group learning rates for the Gaussian model, and its learning-rate schedule.

The four parameter groups are the fields of :class:`~taichi_etgs.gaussian.params.GaussianParams`:
``"means_xyz"``, ``"log_scales"``, ``"quats_wxyz"`` and ``"density_raw"`` (:data:`GROUPS`).
Each has its own learning rate; moments are held as ``GaussianParams`` shaped like the
parameters. The update itself is one fused Taichi kernel per group
(:mod:`taichi_etgs.kernels.adam`).

Why ``eps = 1e-15`` (3DGS's value, not PyTorch's 1e-8): the loss is a mean over views and
pixels, so the gradient of one Gaussian is tiny (1e-9..1e-6 for a Gaussian that covers a
few hundred of a million pixels) and its size depends on the image size and batch. Adam's
step ``lr m / (sqrt(v) + eps)`` is invariant to that scale only while ``sqrt(v) >> eps``;
with 1e-8 the small Gaussians' steps would shrink by orders of magnitude and the effective
learning rate would depend on the detector size. 1e-15 is far below any gradient that
matters and still keeps ``0 / 0`` away for parameters whose gradient is exactly zero
(``m = 0`` gives a zero step). It is representable in float32 (smallest normal 1.2e-38).

Learning rates (:data:`DEFAULT_LR`, decayed log-linearly by :func:`lr_schedule`):

- ``means_xyz``: 2e-4 -> 2e-6, **in units of the scene extent**. Means are in voxels, so the
  rate applied is ``DEFAULT_LR * scene_extent_vox`` with ``scene_extent_vox = max(nz, ny,
  nx) / 2`` (:func:`scene_extent_vox`): the half-size that R2-Gaussian normalises its scene
  by to ``[-1, 1]^3`` and for which it uses 2e-4 (3DGS: 1.6e-4 times its scene radius). For
  a 512-voxel-wide tomogram that is 0.05 voxel per step at the start and 5e-4 at the end:
  well below the size of the smallest Gaussians, so positions do not jump over detail.
  CryoETGS's 0.01 -> 1e-5 (its published setting) is in its own normalised coordinates and
  would be 2.6 voxels per step here, too large to reuse as is.
- ``log_scales``: 0.01 -> 5e-5, ``quats_wxyz``: 0.01 -> 5e-5, ``density_raw``: 0.05 -> 5e-5
  (CryoETGS's values). These parameters are unitless (a step in ``log_scales`` is a relative
  change of size; quaternions have unit norm; ``density_raw`` is a softplus argument, whose
  steps are relative changes of faint densities), so they carry over without scaling.

Adam's step count is shared by all Gaussians (as in 3DGS): Gaussians appended by
densification start with zero moments, so their first step is ``~3.2 lr`` in size
(``0.1 g / sqrt(0.001 g^2)``), as in 3DGS.

This module imports no Taichi until :meth:`Adam.step` runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from .params import GaussianParams

__all__ = [
    "DEFAULT_LR",
    "EXTENT_SCALED_GROUPS",
    "GROUPS",
    "Adam",
    "AdamState",
    "learning_rates",
    "lr_schedule",
    "scene_extent_vox",
]

#: Parameter groups, in the order of the fields of GaussianParams.
GROUPS: tuple[str, ...] = tuple(f.name for f in fields(GaussianParams))

#: ``(lr_init, lr_final)`` per group; see the module docstring for the choices.
DEFAULT_LR: dict[str, tuple[float, float]] = {
    "means_xyz": (2e-4, 2e-6),  # times scene_extent_vox (EXTENT_SCALED_GROUPS)
    "log_scales": (1e-2, 5e-5),
    "quats_wxyz": (1e-2, 5e-5),
    "density_raw": (5e-2, 5e-5),
}
#: Groups whose DEFAULT_LR values are fractions of the scene extent, to be multiplied by
#: :func:`scene_extent_vox` since the parameters are in voxels.
EXTENT_SCALED_GROUPS: tuple[str, ...] = ("means_xyz",)


def scene_extent_vox(shape_zyx: Sequence[int]) -> float:
    """Half the largest side of the volume, voxels: the unit of position learning rates.

    shape_zyx: volume shape (nz, ny, nx). [3]
    """
    shape = [int(s) for s in shape_zyx]
    if not shape or min(shape) < 1:
        raise ValueError(f"volume shape must be positive sizes, got {tuple(shape_zyx)}")
    return 0.5 * max(shape)


def lr_schedule(step: int, lr_init: float, lr_final: float, max_steps: int,
                warmup_steps: int = 0, warmup_factor: float = 0.01) -> float:
    """Log-linear decay from ``lr_init`` (step 0) to ``lr_final`` (step ``max_steps``).

    ``lr(t) = exp((1 - t/T) log(lr_init) + (t/T) log(lr_final))`` for ``0 <= t <= T``, held at
    ``lr_final`` after ``T``. With ``warmup_steps > 0`` it is multiplied by a factor that
    rises smoothly from ``warmup_factor`` at step 0 to 1 at ``warmup_steps``
    (``f + (1 - f) sin(pi/2 * t / warmup_steps)``, 3DGS's "delay"), which keeps the first
    steps small while Adam's second moment is still being estimated.

    Parameters
    ----------
    step: iteration, from 0.
    lr_init, lr_final: learning rates at step 0 and at ``max_steps``, > 0.
    max_steps: length of the decay, >= 1.
    warmup_steps: length of the warm-up, >= 0 (0: none).
    warmup_factor: multiplier at step 0 during warm-up, in (0, 1].

    Returns
    -------
    The learning rate at ``step`` (``lr_init`` for negative steps).
    """
    if not (lr_init > 0 and lr_final > 0 and math.isfinite(lr_init)
            and math.isfinite(lr_final)):
        raise ValueError(f"learning rates must be positive and finite, got {lr_init}, "
                         f"{lr_final}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if warmup_steps < 0 or not 0 < warmup_factor <= 1:
        raise ValueError(f"need warmup_steps >= 0 and 0 < warmup_factor <= 1, got "
                         f"{warmup_steps}, {warmup_factor}")
    t = min(max(step / max_steps, 0.0), 1.0)
    lr = math.exp((1.0 - t) * math.log(lr_init) + t * math.log(lr_final))
    if t == 1.0:
        lr = float(lr_final)  # exactly, not exp(log(x)) rounded
    elif t == 0.0:
        lr = float(lr_init)
    if warmup_steps > 0:
        ramp = min(max(step / warmup_steps, 0.0), 1.0)
        lr *= warmup_factor + (1.0 - warmup_factor) * math.sin(0.5 * math.pi * ramp)
    return lr


def learning_rates(step: int, max_steps: int, scene_extent_vox: float,
                   table: Mapping[str, tuple[float, float]] | None = None,
                   warmup_steps: int = 0, warmup_factor: float = 0.01) -> dict[str, float]:
    """Learning rate of every group at ``step``, position rates scaled to voxels.

    Parameters
    ----------
    step: iteration, from 0.
    max_steps: length of the decay (usually the number of iterations).
    scene_extent_vox: :func:`scene_extent_vox` of the volume; multiplies the groups in
        :data:`EXTENT_SCALED_GROUPS`.
    table: ``{group: (lr_init, lr_final)}`` for every group; None: :data:`DEFAULT_LR`.
    warmup_steps, warmup_factor: as in :func:`lr_schedule`, applied to every group.

    Returns
    -------
    ``{group: lr}`` for the four groups, ready for :attr:`Adam.lr`.
    """
    table = DEFAULT_LR if table is None else table
    missing = [g for g in GROUPS if g not in table]
    if missing:
        raise ValueError(f"learning-rate table lacks groups {missing}")
    if not (scene_extent_vox > 0 and math.isfinite(scene_extent_vox)):
        raise ValueError(f"scene_extent_vox must be positive, got {scene_extent_vox}")
    out = {}
    for g in GROUPS:
        lr_init, lr_final = table[g]
        lr = lr_schedule(step, lr_init, lr_final, max_steps, warmup_steps, warmup_factor)
        out[g] = lr * scene_extent_vox if g in EXTENT_SCALED_GROUPS else lr
    return out


@dataclass
class AdamState:
    """Everything :class:`Adam` needs to continue bit for bit (what a state file stores).

    step: Adam steps taken so far (the ``t`` of the bias corrections).
    exp_avg: first moments, shaped like the parameters. [N, ...] per field
    exp_avg_sq: second moments, shaped like the parameters. [N, ...] per field
    lr: current learning rate per group.
    beta1, beta2, eps: the constants.
    """

    step: int
    exp_avg: GaussianParams
    exp_avg_sq: GaussianParams
    lr: dict[str, float] = field(default_factory=dict)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-15


def _check_lr(lr: Mapping[str, float]) -> dict[str, float]:
    unknown = [g for g in lr if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter groups {unknown}; expected {list(GROUPS)}")
    out = {g: float(v) for g, v in lr.items()}
    bad = [g for g, v in out.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"learning rates must be finite and >= 0; bad for {bad}")
    return out


class Adam:
    """Adam over the four groups of a :class:`GaussianParams`, updated in place.

    Parameters
    ----------
    params: the parameters to optimise (sets N and the moments' dtypes).
    lr: learning rate per group, every group of :data:`GROUPS` (see
        :func:`learning_rates`); change it between steps through :attr:`lr`.
    beta1, beta2: moment decay rates (0.9, 0.999).
    eps: added to ``sqrt(v)`` (1e-15; see the module docstring).

    Attributes
    ----------
    lr: ``{group: learning rate}``; the next :meth:`step` uses these.
    step_count: steps taken.
    exp_avg, exp_avg_sq: the moments, shaped and typed like the parameters.
    """

    def __init__(self, params: GaussianParams, lr: Mapping[str, float], beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-15) -> None:
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and eps >= 0):
            raise ValueError(f"need 0 <= beta1, beta2 < 1 and eps >= 0, got {beta1}, "
                             f"{beta2}, {eps}")
        self.lr = _check_lr(lr)
        missing = [g for g in GROUPS if g not in self.lr]
        if missing:
            raise ValueError(f"no learning rate given for groups {missing}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.step_count = 0
        self.exp_avg = params.zeros_like()
        self.exp_avg_sq = params.zeros_like()

    @property
    def n(self) -> int:
        """Number of Gaussians the moments are for."""
        return self.exp_avg.n

    def set_lr(self, lr: Mapping[str, float]) -> None:
        """Update the learning rates of the groups named in ``lr`` (others unchanged)."""
        self.lr.update(_check_lr(lr))

    def step(self, params: GaussianParams, grads: GaussianParams) -> None:
        """One Adam step: update ``params`` in place from ``grads``.

        Each field of ``params`` is updated in its own array when it is a writeable,
        C-contiguous float32 or float64 array; otherwise it is first replaced by such a
        copy (float64 unless float32). The moments follow the parameters' dtypes.
        Non-finite gradients are not filtered: they make the moments non-finite.

        Parameters
        ----------
        params: parameters, N Gaussians. Modified in place.
        grads: ``dL / dparams`` (any float dtype), N Gaussians.

        Raises
        ------
        ValueError: N of ``params``, ``grads`` and the moments disagree.
        """
        from .. import runtime
        from ..kernels.adam import adam_update_kernel

        if params.n != self.n or grads.n != self.n:
            raise ValueError(f"Adam holds moments for {self.n} Gaussians but got params for "
                             f"{params.n} and grads for {grads.n}; call select/append after "
                             f"densification")
        runtime.ensure_initialized()
        t = self.step_count + 1
        bc1 = 1.0 - self.beta1 ** t
        bc2 = 1.0 - self.beta2 ** t
        inv_sqrt_bc2 = 1.0 / math.sqrt(bc2)
        for name in GROUPS:
            p = getattr(params, name)
            if p.dtype not in (np.float32, np.float64):
                p = p.astype(np.float64)
            if not (p.flags.c_contiguous and p.flags.writeable):
                p = np.array(p, order="C")
            setattr(params, name, p)
            m = getattr(self.exp_avg, name)
            v = getattr(self.exp_avg_sq, name)
            if m.dtype != p.dtype or not (m.flags.c_contiguous and v.flags.c_contiguous):
                m = np.ascontiguousarray(m, dtype=p.dtype)
                v = np.ascontiguousarray(v, dtype=p.dtype)
                setattr(self.exp_avg, name, m)
                setattr(self.exp_avg_sq, name, v)
            g = np.ascontiguousarray(getattr(grads, name), dtype=p.dtype)
            if p.size == 0:
                continue
            hyper = np.array([self.lr[name] / bc1, self.beta1, 1.0 - self.beta1, self.beta2,
                              1.0 - self.beta2, inv_sqrt_bc2, self.eps], dtype=p.dtype)
            adam_update_kernel(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                               hyper)
        self.step_count = t

    def select(self, keep: np.ndarray) -> None:
        """Keep the moments of the selected Gaussians only (pruning, or reordering).

        keep: boolean mask [N], or integer indices into the current N (may repeat, e.g.
            to give split children their parent's moments). Apply the same selection to
            the parameters.
        """
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape != (self.n,):
            raise ValueError(f"keep mask has shape {keep.shape}; expected ({self.n},)")
        if keep.dtype != bool and not np.issubdtype(keep.dtype, np.integer):
            raise ValueError(f"keep must be a boolean mask or integer indices, got "
                             f"{keep.dtype}")
        self.exp_avg = self.exp_avg.subset(keep)
        self.exp_avg_sq = self.exp_avg_sq.subset(keep)

    def append(self, n_new: int) -> None:
        """Add zero moments for ``n_new`` Gaussians appended after the current N."""
        n_new = int(n_new)
        if n_new < 0:
            raise ValueError(f"n_new must be >= 0, got {n_new}")
        for moments in (self.exp_avg, self.exp_avg_sq):
            for f in fields(GaussianParams):
                a = getattr(moments, f.name)
                setattr(moments, f.name, np.concatenate(
                    [a, np.zeros((n_new, *a.shape[1:]), dtype=a.dtype)]))

    def state(self) -> AdamState:
        """A copy of everything needed to resume (for :func:`.state.save_state`)."""
        return AdamState(step=self.step_count, exp_avg=self.exp_avg.copy(),
                         exp_avg_sq=self.exp_avg_sq.copy(), lr=dict(self.lr),
                         beta1=self.beta1, beta2=self.beta2, eps=self.eps)

    @classmethod
    def from_state(cls, state: AdamState) -> Adam:
        """An optimiser that continues from ``state`` (its arrays are copied)."""
        opt = cls(state.exp_avg, state.lr, state.beta1, state.beta2, state.eps)
        if state.exp_avg_sq.n != state.exp_avg.n:
            raise ValueError("AdamState moments disagree in N")
        opt.exp_avg = state.exp_avg.copy()
        opt.exp_avg_sq = state.exp_avg_sq.copy()
        opt.step_count = int(state.step)
        return opt
