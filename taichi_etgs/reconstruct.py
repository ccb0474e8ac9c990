"""The Gaussian reconstruction: fit adaptive 3D Gaussians to a tilt series.

Pipeline (design.md section 3):

1. The views are turned into positive density with each view's mean removed
   (:func:`taichi_etgs.preprocess.density_views`) and divided by their overall standard
   deviation, so that learning rates and thresholds do not depend on the detector's units.
2. A classical reconstruction (SIRT by default) of those views seeds the model through the
   hierarchical octree initialisation (:func:`taichi_etgs.init.init_from_volume`).
3. Each iteration renders ``views_per_step`` views, compares them with the measured ones
   (tilt-weighted L1 + D-SSIM; the rendered view's mean is matched to the measured one's,
   a per-view offset that absorbs the ice slab and the detector offset), back-propagates
   through the projector and takes an Adam step. Views are visited in a fresh random order
   every epoch, derived from the seed and the epoch number alone, so a resumed run visits
   the same views.
4. Every ``densify_every`` iterations (from ``densify_from`` until ``densify_until`` of the
   run) Gaussians are cloned, split and pruned from gradient statistics accumulated over
   every view they appeared in.
5. The model is voxelised on the tomogram grid and scaled back to the input's units.

A non-finite loss or parameter rolls the model back to the last good snapshot with halved
learning rates. Ctrl-C saves the state (when a state file was named) before leaving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .gaussians import GaussianParams, density_raw_from_densities
from .geometry import fov_padding

__all__ = ["ReconstructConfig", "ReconstructResult", "Progress", "GaussianReconstruction",
           "normalised_views"]


@dataclass
class ReconstructConfig:
    """Every setting of a Gaussian reconstruction (defaults hold across data sets).

    iterations: optimisation steps.
    views_per_step: views rendered and compared per step.
    max_gaussians: the model never holds more.
    init_gaussians: Gaussians seeded by the octree (None: half of ``max_gaussians``, leaving
        room for densification).
    init: "sirt", "wbp" (classical reconstruction of the same data).
    init_sirt_iterations: SIRT iterations when ``init == "sirt"``.
    tilt_weight: "cos", "uniform" or "etgs" (see :func:`taichi_etgs.loss.tilt_weights`).
    lambda_dssim: weight of D-SSIM against L1.
    densify_every, densify_from: densification period and first iteration.
    densify_until: fraction of the run after which the model stops growing.
    densify_quantile: Gaussians whose mean view-gradient is in this top fraction are
        densified (a scale-free threshold: the absolute level depends on data and loss).
    min_density_fraction: prune Gaussians whose density falls below this fraction of the
        initial model's median density.
    extend_fov: model the specimen on a grid widened in X by
        :func:`~taichi_etgs.geometry.fov_padding`, so that what the high tilts see outside
        the tomogram's box is explained there instead of at the box's sides.
    lr_scale: multiplies every learning rate (the rollback after a NaN halves it).
    seed: seeds the initialisation, the view order and densification.
    """

    iterations: int = 600
    views_per_step: int = 8
    max_gaussians: int = 60_000
    init_gaussians: int | None = None
    init: str = "sirt"
    init_sirt_iterations: int = 20
    tilt_weight: str = "cos"
    lambda_dssim: float = 0.2
    densify_every: int = 100
    densify_from: int = 100
    densify_until: float = 0.6
    densify_quantile: float = 0.05
    min_density_fraction: float = 0.01
    extend_fov: bool = True
    lr_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.iterations >= 1, "iterations must be >= 1"),
            (self.views_per_step >= 1, "views per step must be >= 1"),
            (self.max_gaussians >= 1, "max Gaussians must be >= 1"),
            (self.init_gaussians is None or 1 <= self.init_gaussians <= self.max_gaussians,
             "init Gaussians must be between 1 and max Gaussians"),
            (self.init in ("sirt", "wbp"), f"unknown init {self.init!r}; expected sirt or wbp"),
            (self.densify_every >= 1, "densify-every must be >= 1"),
            (0.0 <= self.densify_until <= 1.0, "densify-until is a fraction in [0, 1]"),
            (0.0 < self.densify_quantile < 1.0, "densify quantile must be in (0, 1)"),
            (self.lambda_dssim >= 0 and self.lambda_dssim <= 1, "lambda D-SSIM must be in [0, 1]"),
            (self.lr_scale > 0, "lr scale must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Progress:
    """What a progress callback receives after each iteration."""

    iteration: int  # iterations completed
    total: int
    loss: float
    n_gaussians: int
    message: str = ""  # a notable event (densification, rollback), else empty


@dataclass
class ReconstructResult:
    """The fitted model and the tomogram voxelised from it."""

    params: GaussianParams
    volume: np.ndarray  # [nz, ny, nx], in the input views' units (positive density)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def normalised_views(views: np.ndarray) -> tuple[np.ndarray, float]:
    """Views divided by their overall standard deviation, and that factor."""
    scale = float(np.std(views, dtype=np.float64))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError("the views contain no signal (zero variance)")
    return (views / scale).astype(np.float32), scale


def _view_order(seed: int, epoch: int, n_views: int) -> np.ndarray:
    """The order views are visited in during one epoch: a function of seed and epoch only."""
    return np.random.default_rng([seed, epoch]).permutation(n_views)


class GaussianReconstruction:
    """A Gaussian reconstruction in progress: model, optimiser and statistics.

    Parameters
    ----------
    views: positive-density views (e.g. :func:`~taichi_etgs.preprocess.density_views`).
        [n_tilts, ny, nx]
    tilts_deg: tilt angles. [n_tilts]
    thickness: tomogram thickness nz in voxels.
    config: the settings.
    width: tomogram width nx (default: the views' width).
    initial_volume: a volume to seed the model from, in the views' units, instead of a
        classical reconstruction. [nz, ny, nx]
    params: a model to continue from instead of seeding one.
    params_view_scale: the units of ``params``' densities, as the ``view_scale`` of the run
        (or 1.0 for a model of a tomogram in the views' units per voxel) that made them;
        None: already in this run's units (a resume).
    """

    def __init__(self, views: np.ndarray, tilts_deg: np.ndarray, thickness: int,
                 config: ReconstructConfig | None = None, *, width: int | None = None,
                 initial_volume: np.ndarray | None = None,
                 params: GaussianParams | None = None,
                 params_view_scale: float | None = None) -> None:
        from .loss import default_data_range, tilt_weights

        self.config = config or ReconstructConfig()
        views = np.asarray(views)
        if views.ndim != 3:
            raise InputError(f"expected views (n_tilts, ny, nx), got shape {views.shape}")
        self.tilts_deg = np.asarray(tilts_deg, dtype=np.float64)
        if self.tilts_deg.shape != (views.shape[0],):
            raise InputError(f"{self.tilts_deg.size} tilt angles for {views.shape[0]} views")
        self.measured, self.scale = normalised_views(views)
        n_tilts, ny, nu = self.measured.shape
        self.shape_zyx = (int(thickness), ny, nu if width is None else int(width))
        self.pad_x = (fov_padding(self.shape_zyx[0], self.tilts_deg)
                      if self.config.extend_fov else 0)
        # The model lives on the widened grid; the tomogram is its central box.
        self.model_shape_zyx = (self.shape_zyx[0], ny, self.shape_zyx[2] + 2 * self.pad_x)
        self.weights = tilt_weights(self.tilts_deg, self.config.tilt_weight)
        self.data_range = default_data_range(self.measured)
        self.iteration = 0
        self.losses: list[float] = []
        self.rng = np.random.default_rng(self.config.seed)
        if params is None:
            params = self._seed_model(initial_volume)
        elif params_view_scale is not None:
            params = params.copy()
            params.density_raw = density_raw_from_densities(
                params.densities() * (params_view_scale / self.scale))
        self._start(params)

    # -- set-up ---------------------------------------------------------------------------

    def _seed_model(self, initial_volume: np.ndarray | None) -> GaussianParams:
        from .init import init_from_volume

        if initial_volume is None:
            initial_volume = self.classical_reconstruction()
        else:
            initial_volume = np.asarray(initial_volume, dtype=np.float32) / self.scale
            if initial_volume.shape != self.shape_zyx:
                raise InputError(f"the initial volume has shape {initial_volume.shape}, "
                                 f"expected {self.shape_zyx} (z, y, x)")
            # Outside the given box, seed from the level the box sits on.
            initial_volume = np.pad(initial_volume, ((0, 0), (0, 0), (self.pad_x,) * 2),
                                    constant_values=float(np.median(initial_volume)))
        n_init = self.config.init_gaussians or max(1, self.config.max_gaussians // 2)
        return init_from_volume(initial_volume, n_init, seed=self.config.seed).astype(np.float32)

    def classical_reconstruction(self) -> np.ndarray:
        """The initial volume: SIRT or WBP of the normalised views on the model's grid.

        [nz, ny, nx + 2 pad_x]; the widened grid already holds every ray's whole path.
        """
        from .sirt import sirt
        from .wbp import weighted_back_projection

        nz, _, nx = self.model_shape_zyx
        if self.config.init == "wbp":
            return weighted_back_projection(self.measured, self.tilts_deg, nz, width=nx)
        return sirt(self.measured, self.tilts_deg, nz, width=nx, extend_fov=False,
                    iterations=self.config.init_sirt_iterations).volume

    def _start(self, params: GaussianParams) -> None:
        from .densify import DensifyStats
        from .optim import Adam, learning_rates, scene_extent_vox

        self.params = params.astype(np.float32)
        self.extent = scene_extent_vox(self.model_shape_zyx)
        self.adam = Adam(self.params, learning_rates(0, self.config.iterations, self.extent))
        self.stats = DensifyStats(self.params.n)
        self.min_density = self.config.min_density_fraction * float(
            np.median(self.params.densities()))
        self._snapshot = None
        self._take_snapshot()

    # -- the loop -------------------------------------------------------------------------

    def views_for(self, iteration: int) -> np.ndarray:
        """Indices of the views rendered at ``iteration`` (0-based). [views_per_step]"""
        n = self.measured.shape[0]
        k = min(self.config.views_per_step, n)
        positions = np.arange(iteration * k, iteration * k + k)
        epochs = positions // n
        order = {int(e): _view_order(self.config.seed, int(e), n) for e in np.unique(epochs)}
        return np.array([order[int(e)][p % n] for e, p in zip(epochs, positions)])

    def loss_and_grad(self, selected: np.ndarray, params: GaussianParams | None = None):
        """Loss of the selected views and the projector's backward result."""
        from .kernels.gaussian_projector import project_gaussians, project_gaussians_backward
        from .loss import view_loss

        params = self.params if params is None else params
        _, ny, nu = self.measured.shape
        tilts = self.tilts_deg[selected]
        measured = self.measured[selected]
        rendered = project_gaussians(params, tilts, ny, nu)
        # Per-view offset: only the measured views' deviations from their mean are known.
        shift = measured.mean(axis=(1, 2), keepdims=True) - rendered.mean(axis=(1, 2),
                                                                        keepdims=True)
        loss, grad = view_loss(rendered + shift, measured, self.weights[selected],
                               lambda_dssim=self.config.lambda_dssim, data_range=self.data_range)
        # The offset depends on the rendering: d(r - mean r)/dr removes each view's mean.
        grad = grad - grad.mean(axis=(1, 2), keepdims=True)
        return float(loss), project_gaussians_backward(params, tilts, grad)

    def step(self) -> Progress:
        """One optimisation step (and densification when due)."""
        from .optim import learning_rates

        cfg = self.config
        loss, back = self.loss_and_grad(self.views_for(self.iteration))
        message = ""
        if not np.isfinite(loss) or not _finite(back.grads):
            return self._rollback(loss)
        rates = learning_rates(self.iteration, cfg.iterations, self.extent)
        self.adam.set_lr({k: v * cfg.lr_scale for k, v in rates.items()})
        self.adam.step(self.params, back.grads)
        self.stats.add(back.uv_grad_norm_sum, back.visible_views)
        self.iteration += 1
        self.losses.append(loss)
        if self._densify_due():
            message = self._densify()
        if self.iteration % cfg.densify_every == 0:
            self._take_snapshot()
        return Progress(self.iteration, cfg.iterations, loss, self.params.n, message)

    def _densify_due(self) -> bool:
        cfg = self.config
        return (self.iteration >= cfg.densify_from
                and self.iteration <= cfg.densify_until * cfg.iterations
                and self.iteration % cfg.densify_every == 0)

    def _densify(self) -> str:
        from .densify import DensifyStats, densify_and_prune, quantile_grad_threshold

        threshold = quantile_grad_threshold(self.stats, 1.0 - self.config.densify_quantile)
        result = densify_and_prune(self.params, self.stats, max_gaussians=self.config.max_gaussians,
                                   min_density=self.min_density,
                                   volume_shape_zyx=self.model_shape_zyx,
                                   rng=self.rng, grad_threshold=threshold)
        self.params = result.params.astype(np.float32)
        self.adam.select(result.keep_mask)
        self.adam.append(result.n_appended)
        self.stats = DensifyStats(self.params.n)
        return (f"densified: +{result.n_cloned} cloned, {result.n_split} split, "
                f"-{result.n_pruned} pruned -> {self.params.n}")

    def _take_snapshot(self) -> None:
        self._snapshot = (self.params.copy(), self.adam.state(), self.iteration,
                          self.rng.bit_generator.state, len(self.losses))

    def _rollback(self, loss: float) -> Progress:
        from .densify import DensifyStats
        from .optim import Adam

        params, adam_state, iteration, rng_state, n_losses = self._snapshot
        self.config = dataclasses.replace(self.config, lr_scale=self.config.lr_scale * 0.5)
        if self.config.lr_scale < 1e-3:
            raise InputError("the loss kept becoming NaN/Inf even at 1/1000 of the learning "
                             "rates: check the input data")
        self.params = params.copy()
        self.adam = Adam.from_state(adam_state)
        self.iteration = iteration
        self.rng.bit_generator.state = rng_state
        del self.losses[n_losses:]
        self.stats = DensifyStats(self.params.n)
        return Progress(self.iteration, self.config.iterations, loss, self.params.n,
                        f"non-finite loss ({loss}); rolled back to iteration {iteration} with "
                        f"learning rates x{self.config.lr_scale:g}")

    def run(self, progress: Callable[[Progress], None] | None = None,
            checkpoint: Callable[[GaussianReconstruction], None] | None = None,
            save_every: int = 0) -> None:
        """Iterate until ``config.iterations``; ``checkpoint`` every ``save_every`` steps."""
        while self.iteration < self.config.iterations:
            info = self.step()
            if progress is not None:
                progress(info)
            if checkpoint is not None and save_every and self.iteration % save_every == 0:
                checkpoint(self)

    def tomogram(self, voxel_size: float = 1.0, shape_zyx: tuple[int, int, int] | None = None
                 ) -> np.ndarray:
        """The model voxelised on the tomogram grid, in the input views' units. [nz, ny, nx]"""
        from .kernels.voxelizer import voxelize_gaussians

        shape = self.shape_zyx if shape_zyx is None else shape_zyx
        volume = voxelize_gaussians(self.params, shape, voxel_size=voxel_size)
        return (volume * self.scale).astype(np.float32)

    # -- state ----------------------------------------------------------------------------

    def geometry(self) -> dict:
        return {"tilts_deg": self.tilts_deg, "shape_zyx": list(self.shape_zyx),
                "model_shape_zyx": list(self.model_shape_zyx),
                "view_scale": self.scale, "n_views": int(self.measured.shape[0]),
                "detector_yx": list(self.measured.shape[1:])}

    def save_state(self, path, input_checksum: str, extra_geometry: dict | None = None) -> None:
        """Write everything a bit-for-bit resume needs (:func:`taichi_etgs.state.save_state`).

        Besides parameters, optimiser and RNG, the run-time quantities that are not settings
        (densification statistics, the pruning level) go into the config under ``_`` keys.
        """
        from .state import save_state

        config = self.config.to_dict()
        config.update(_min_density=self.min_density, _losses=np.asarray(self.losses),
                      _densify_grad_norm_sum=self.stats.grad_norm_sum,
                      _densify_view_count=self.stats.view_count)
        geometry = self.geometry()
        geometry.update(extra_geometry or {})
        save_state(path, self.params, self.adam.state(), self.iteration,
                   self.rng.bit_generator.state, config, geometry, input_checksum)

    def restore(self, state) -> None:
        """Continue from a saved state (:func:`taichi_etgs.state.load_state`)."""
        from .densify import DensifyStats
        from .optim import Adam

        self.params = state.params.astype(np.float32)
        if state.adam is not None:
            self.adam = Adam.from_state(state.adam)
        self.iteration = int(state.iteration)
        self.rng = state.rng()
        self.stats = DensifyStats(self.params.n)
        config = state.config
        if "_densify_grad_norm_sum" in config:
            self.stats.grad_norm_sum[:] = config["_densify_grad_norm_sum"]
            self.stats.view_count[:] = config["_densify_view_count"]
        self.min_density = float(config.get("_min_density", self.min_density))
        self.losses = [float(v) for v in config.get("_losses", [])]
        self._take_snapshot()


def _finite(params: GaussianParams) -> bool:
    return all(np.isfinite(getattr(params, f.name)).all()
               for f in dataclasses.fields(params))
