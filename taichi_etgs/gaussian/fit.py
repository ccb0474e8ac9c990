"""The Gaussian reconstruction: fit adaptive 3D Gaussians to a tilt series.

Pipeline (docs/method.md):

1. The views are turned into positive density with each view's mean removed
   (:func:`taichi_etgs.preprocess.density_views`) and divided by their overall standard
   deviation, so that learning rates and thresholds do not depend on the detector's units.
2. A classical reconstruction (SIRT by default) of those views seeds the model through the
   hierarchical octree initialisation (:func:`taichi_etgs.gaussian.seeding.init_from_volume`).
3. Each iteration renders ``views_per_step`` views, compares them with the measured ones
   (tilt-weighted RMSE + D-SSIM; the rendered view's mean is matched to the measured one's,
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
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import InputError
from ..geometry import fov_padding
from .params import GaussianParams, density_raw_from_densities

if TYPE_CHECKING:  # annotations only: collaborators are imported where they are used
    from ..alignment import ViewAlignment
    from .background import SlabBackground

__all__ = ["ReconstructConfig", "Progress", "GaussianReconstruction", "heldout_views",
           "halves_fsc", "prealign_views", "reconstruct_halves", "robust_range",
           "robust_scale", "view_spectrum"]

# The alignment's short fits: their steps (one fit for the shifts alone, each of the two
# that also find the axis), and the steps between two matchings (docs/method.md,
# "Alignment refinement").
_PREALIGN_ITERATIONS = 75
_AXIS_FIT_ITERATIONS = 50
_PREALIGN_EVERY = 25
# The axis search: the share of the axis error a short fit's predictions keep (about half,
# measured: 0.48-0.77), the smallest and largest probe angle (degrees; a larger error is
# not searched for), and the error left uncorrected (degrees: the search's own bias on
# views without error, -0.23 on the sweep's isolated specimen at SNR 1 since the ice
# slab's faces are sharp, -0.16 before; turning resamples every view).
_AXIS_KEPT = 0.5
_AXIS_PROBE_DEG = (0.5, 3.0)
_AXIS_LEFT_DEG = 0.3
# The most models kept for the average the tomogram is made of (thinned to every other one
# beyond): 16 copies of 60,000 Gaussians take about 42 MB, in memory and in a state file.
_MAX_AVERAGED = 16


@dataclass
class ReconstructConfig:
    """Every setting of a Gaussian reconstruction (defaults hold across data sets).

    iterations: optimisation steps.
    views_per_step: views rendered and compared per step.
    max_gaussians: the model never holds more.
    init_gaussians: Gaussians seeded by the octree (None: half of ``max_gaussians``, leaving
        room for densification; fewer, down to a quarter, where the views hold less than
        ``signal_per_gaussian`` signal-bearing Fourier coefficients per Gaussian,
        :meth:`GaussianReconstruction.seed_budget`).
    signal_per_gaussian: signal-bearing coefficients of the views per seeded Gaussian
        (each Gaussian has ten parameters; noisy views determine fewer of them than clean
        ones, docs/method.md "Seeding"). 0: always half of ``max_gaussians``.
    init: "sirt", "wbp" (classical reconstruction of the same data).
    init_sirt_iterations: SIRT iterations when ``init == "sirt"``.
    tilt_weight: "cos", "uniform" or "etgs" (see :func:`taichi_etgs.gaussian.loss.tilt_weights`).
    lambda_dssim: weight of D-SSIM against the data term.
    data_term: "rmse" (each view's root-mean-square misfit, the default) or "l1" (its mean
        absolute misfit, as CryoETGS); see :mod:`taichi_etgs.gaussian.loss`.
    densify_every, densify_from: densification period and first iteration.
    densify_until: fraction of the run after which the model stops growing.
    densify_max_fraction: at most this fraction of the model is cloned or split at once
        (those pulled most consistently; :mod:`taichi_etgs.gaussian.densify`).
    min_density_fraction: prune Gaussians whose density falls below this fraction of the
        initial model's median density.
    extend_fov: model the specimen on a grid widened in X by
        :func:`~taichi_etgs.geometry.fov_padding`, so that what the high tilts see outside
        the tomogram's box is explained there instead of at the box's sides.
    background: "slab" (an ice slab with soft faces and ends, fitted to the data and then
        jointly with the Gaussians: :mod:`taichi_etgs.gaussian.background`) or "offset" (a per-view
        offset only).
    fit_gain: fit a per-view gain (exposure drift, thickness attenuation), mean 1.
    heldout_every: one view in this many (in tilt order) is held out of the fit and only
        scored; the model of the best held-out score is the result (early stop). 0: none.
    validate_every: iterations between two scorings of the held-out views.
    patience: stop when for this many iterations every held-out score has been worse than
        the lowest beyond what the held-out views' noise explains.
    min_scale: floor on every Gaussian's scales, voxels (no sub-voxel needles fitting
        single noisy pixels).
    tv_weight: weight of the 3D total variation of a random voxelised sub-volume per step
        (:mod:`taichi_etgs.gaussian.regularize`), relative to the data term, for volumes in units of
        the seed volume's spread.
    tv_patch: side of that sub-volume, voxels.
    defocus_um: underfocus of the series, micrometres (> 0 puts the CTF in the forward
        model, :mod:`taichi_etgs.gaussian.transfer`; 0: views are taken as projections).
    defocus_per_view_um: the underfocus of each view instead (a list, in the order of the
        views; a file's values, :mod:`taichi_etgs.io.defocus`); with
        ``defocus2_per_view_um`` and ``astigmatism_per_view_deg`` the astigmatism: then
        the defocus along the azimuth, the defocus across it, and the azimuth (degrees
        from image X towards +Y). Lists, so that the state file records them (JSON).
    pixel_size_A, voltage_kV, cs_mm, amplitude_contrast: the rest of the CTF's constants
        (the pixel size is needed with a defocus or an exposure).
    exposure_per_view_e_per_A2: the exposure each view carries (prior dose + half its own,
        e/A^2, a list in the order of the views, :mod:`taichi_etgs.io.dose`): each
        rendered view is filtered with its exposure filter too (Grant & Grigorieff's
        critical exposure, docs/method.md "Dose"); None: none.
    refine_alignment: refine each view's residual shift (:mod:`taichi_etgs.alignment`):
        before the model is seeded by :func:`prealign_views` (matching to the other
        views, then to a short fit), then against the model's predictions at each
        densification of the first half of the run; views the first stage finds aligned
        within its noise are used as given. Off here; the ``reconstruct`` command and
        :func:`taichi_etgs.api.reconstruct` turn it on unless asked not to ("auto",
        docs/method.md "Alignment refinement").
    lr_scale: multiplies every learning rate (the rollback after a NaN halves it).
    seed: seeds the initialisation, the view order and densification.
    """

    iterations: int = 600
    views_per_step: int = 8
    max_gaussians: int = 60_000
    init_gaussians: int | None = None
    signal_per_gaussian: float = 3.0
    init: str = "sirt"
    init_sirt_iterations: int = 20
    tilt_weight: str = "cos"
    lambda_dssim: float = 0.2
    data_term: str = "rmse"
    densify_every: int = 100
    densify_from: int = 100
    densify_until: float = 0.5
    densify_max_fraction: float = 0.05
    min_density_fraction: float = 0.01
    extend_fov: bool = True
    background: str = "slab"
    fit_gain: bool = True
    heldout_every: int = 10
    validate_every: int = 20
    patience: int = 200
    min_scale: float = 0.5
    tv_weight: float = 0.0
    tv_patch: int = 32
    defocus_um: float = 0.0
    defocus_per_view_um: list | None = None
    defocus2_per_view_um: list | None = None
    astigmatism_per_view_deg: list | None = None
    exposure_per_view_e_per_A2: list | None = None
    pixel_size_A: float = 0.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    refine_alignment: bool = False
    lr_scale: float = 1.0
    seed: int = 0

    #: What a state file saved before a setting existed was made with, where that differs
    #: from today's default (a resumed run goes on as it began).
    SAVED_BEFORE: ClassVar[dict] = {"data_term": "l1", "signal_per_gaussian": 0.0}

    def __post_init__(self) -> None:
        from .loss import DATA_TERMS

        checks = [
            (self.iterations >= 1, "iterations must be >= 1"),
            (self.views_per_step >= 1, "views per step must be >= 1"),
            (self.max_gaussians >= 1, "max Gaussians must be >= 1"),
            (self.signal_per_gaussian >= 0, "signal per Gaussian must be >= 0"),
            (self.init_gaussians is None or 1 <= self.init_gaussians <= self.max_gaussians,
             "init Gaussians must be between 1 and max Gaussians"),
            (self.init in ("sirt", "wbp"), f"unknown init {self.init!r}; expected sirt or wbp"),
            (self.densify_every >= 1, "densify-every must be >= 1"),
            (0.0 <= self.densify_until <= 1.0, "densify-until is a fraction in [0, 1]"),
            (self.lambda_dssim >= 0 and self.lambda_dssim <= 1, "lambda D-SSIM must be in [0, 1]"),
            (self.data_term in DATA_TERMS,
             f"unknown data term {self.data_term!r}; expected one of {', '.join(DATA_TERMS)}"),
            (self.lr_scale > 0, "lr scale must be positive"),
            (self.background in ("slab", "offset"),
             f"unknown background {self.background!r}; expected slab or offset"),
            (self.heldout_every == 0 or self.heldout_every >= 3,
             "held-out views: one in heldout_every >= 3 views, or 0 for none"),
            (self.validate_every >= 1, "validate-every must be >= 1"),
            (self.patience >= 1, "patience must be >= 1 iteration"),
            (self.min_scale > 0, "the scale floor must be positive"),
            (self.tv_weight >= 0, "the TV weight must be >= 0"),
            (self.tv_patch >= 4, "the TV patch must be >= 4 voxels"),
            (self.defocus_um >= 0, "the defocus is an underfocus in micrometres, >= 0"),
            (not self.has_ctf or self.pixel_size_A > 0, "a CTF (defocus) needs the pixel size"),
            (self.exposure_per_view_e_per_A2 is None or self.pixel_size_A > 0,
             "an exposure filter (dose) needs the pixel size"),
            (self.exposure_per_view_e_per_A2 is None
             or (np.isfinite(self.exposure_per_view_e_per_A2).all()
                 and min(self.exposure_per_view_e_per_A2, default=0) >= 0),
             "per-view exposures must be finite numbers >= 0"),
            (self.exposure_per_view_e_per_A2 is None or self.defocus_per_view_um is None
             or len(self.exposure_per_view_e_per_A2) == len(self.defocus_per_view_um),
             "per-view exposure and defocus must have one value per view"),
            (self.defocus2_per_view_um is None or self.defocus_per_view_um is not None,
             "a second defocus per view needs the first (defocus_per_view_um)"),
            (len({len(v) for v in (self.defocus_per_view_um, self.defocus2_per_view_um,
                                   self.astigmatism_per_view_deg) if v is not None}) <= 1,
             "per-view defocus, second defocus and azimuth must have one value per view"),
            (all(np.isfinite(v).all() for v in (self.defocus_per_view_um,
                                                self.defocus2_per_view_um,
                                                self.astigmatism_per_view_deg)
                 if v is not None), "per-view defocus values must be finite numbers"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def has_ctf(self) -> bool:
        """Whether the CTF is in the forward model (a defocus, one or per view)."""
        return self.defocus_um > 0 or self.defocus_per_view_um is not None

    @property
    def has_view_filter(self) -> bool:
        """Whether the views are filtered in the forward model (a CTF, an exposure or both)."""
        return self.has_ctf or self.exposure_per_view_e_per_A2 is not None

    def microscope(self):
        """The CTF's and the exposure's constants
        (:class:`~taichi_etgs.gaussian.transfer.Microscope`)."""
        from .transfer import Microscope

        defocus = (self.defocus_um if self.defocus_per_view_um is None
                   else tuple(self.defocus_per_view_um))
        return Microscope(defocus, self.pixel_size_A, self.voltage_kV, self.cs_mm,
                          self.amplitude_contrast,
                          None if self.defocus2_per_view_um is None
                          else tuple(self.defocus2_per_view_um),
                          None if self.astigmatism_per_view_deg is None
                          else tuple(self.astigmatism_per_view_deg),
                          None if self.exposure_per_view_e_per_A2 is None
                          else tuple(self.exposure_per_view_e_per_A2),
                          ctf=self.has_ctf)

    def select_views(self, index) -> ReconstructConfig:
        """The settings for the views ``index`` of the series (per-view defocus and
        exposure picked)."""
        index = np.asarray(index, dtype=np.int64)

        def pick(v):
            return None if v is None else [float(v[i]) for i in index]

        return dataclasses.replace(self, defocus_per_view_um=pick(self.defocus_per_view_um),
                                   defocus2_per_view_um=pick(self.defocus2_per_view_um),
                                   astigmatism_per_view_deg=pick(self.astigmatism_per_view_deg),
                                   exposure_per_view_e_per_A2=pick(
                                       self.exposure_per_view_e_per_A2))

    def densify_config(self):
        """The densification settings (:class:`taichi_etgs.gaussian.densify.DensifyConfig`)."""
        from .densify import DensifyConfig

        return DensifyConfig(every=self.densify_every, start=self.densify_from,
                             stop_fraction=self.densify_until,
                             max_fraction=self.densify_max_fraction,
                             min_density_fraction=self.min_density_fraction)


@dataclass
class Progress:
    """What a progress callback receives after each iteration."""

    iteration: int  # iterations completed
    total: int
    loss: float
    n_gaussians: int
    message: str = ""  # a notable event (densification, rollback, early stop), else empty
    heldout_loss: float | None = None  # the held-out views' score, when scored this step


def _clipped_tails(views: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A sample of the views' values and their 0.5 % and 99.5 % percentiles."""
    sample = np.asarray(views, dtype=np.float64).reshape(-1)
    if sample.size > 2_000_000:  # a strided sample is plenty for percentiles
        sample = sample[:: sample.size // 1_000_000]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return sample, float(lo), float(hi)


def robust_scale(views: np.ndarray) -> float:
    """Standard deviation of the views with their 0.5 % tails clipped.

    A few gold beads, hot pixels or a slab's edges must not set the units the
    reconstruction works in (nor its learning rates).
    """
    sample, lo, hi = _clipped_tails(views)
    scale = float(np.std(np.clip(sample, lo, hi)))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.std(sample))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError("the views contain no signal (zero variance)")
    return scale


def robust_range(views: np.ndarray) -> float:
    """Range between the 0.5 % and 99.5 % percentiles: the SSIM data range ``L``."""
    sample, lo, hi = _clipped_tails(views)
    return hi - lo if hi > lo else float(np.ptp(sample)) or 1.0


@dataclass
class ViewSpectrum:
    """How signal and noise share the views' spatial frequencies (:func:`view_spectrum`).

    rings: the ring of equal spatial frequency of each ``np.fft.fft2`` coefficient (0: DC).
        [ny, nx]
    signal_share: ``S / (S + N)`` per ring, in ``[0, 1]``. [n_rings]
    noise_power: ``E |F(noise)|^2`` per coefficient (white), ``n_pixels * variance``.
    """

    rings: np.ndarray
    signal_share: np.ndarray
    noise_power: float


def view_spectrum(views: np.ndarray, max_views: int = 16) -> ViewSpectrum:
    """The views' power spectrum split into signal and white noise.

    The power is averaged over (at most ``max_views``) views and over rings of equal
    spatial frequency; the noise is taken as white at the median power of the spectrum's
    corners (beyond the inscribed Nyquist circle, where detectors and binning leave little
    signal). Noise-free views give every ring a share of about 1; at low dose the rings
    beyond the signal get about 0.
    """
    views = np.asarray(views)
    n, ny, nx = views.shape
    pick = np.unique(np.linspace(0, n - 1, min(n, max_views)).round().astype(int))
    power = np.zeros((ny, nx))
    for t in pick:
        v = np.asarray(views[t], dtype=np.float64)
        power += np.abs(np.fft.fft2(v - v.mean())) ** 2
    power /= pick.size
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(ny), np.fft.fftfreq(nx), indexing="ij"))
    rings = (freq * min(ny, nx)).round().astype(np.int64)
    ring_power = (np.bincount(rings.ravel(), power.ravel())
                  / np.maximum(np.bincount(rings.ravel()), 1))
    corners = freq > 0.5
    noise = float(np.median(power[corners])) if corners.any() else 0.0
    share = np.clip((ring_power - noise) / np.where(ring_power > 0, ring_power, 1.0), 0.0, 1.0)
    share[0] = 0.0  # the mean is the offset's
    return ViewSpectrum(rings, share, noise)


def heldout_views(tilts_deg: np.ndarray, every: int) -> np.ndarray:
    """Indices of the views held out for validation: one in ``every`` in tilt order.

    The held-out views sit between fitted ones (never the first or last tilt), so that
    predicting them tests how the model interpolates between views. [n_heldout]
    """
    n = len(tilts_deg)
    if every <= 0 or n < every:
        return np.zeros(0, dtype=np.int64)
    rank = np.argsort(np.argsort(np.asarray(tilts_deg), kind="stable"), kind="stable")
    return np.flatnonzero(rank % every == every // 2).astype(np.int64)


def _view_order(seed: int, epoch: int, n_views: int) -> np.ndarray:
    """The order views are visited in during one epoch: a function of seed and epoch only."""
    return np.random.default_rng([seed, epoch]).permutation(n_views)


class _SlabAdam:
    """Adam on the slab's six parameters (numpy: six numbers need no kernel)."""

    # Step sizes: density relative to its start, faces and ends in voxels, angle in rad.
    def __init__(self, density0: float) -> None:
        self.lr = np.array([0.02 * max(density0, 1e-6), 0.05, 0.05, 0.05, 0.05, 1e-3])
        self.m = np.zeros(6)
        self.v = np.zeros(6)
        self.t = 0

    def step(self, vec: np.ndarray, grad: np.ndarray, factor: float) -> np.ndarray:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad * grad
        m_hat = self.m / (1 - 0.9 ** self.t)
        v_hat = self.v / (1 - 0.999 ** self.t)
        return vec - factor * self.lr * m_hat / (np.sqrt(v_hat) + 1e-30)


def _short_fit(views: np.ndarray, tilts_deg: np.ndarray, thickness: int,
               config: ReconstructConfig, width: int | None, start: ViewAlignment,
               find_axis: bool, slab: tuple[SlabBackground, float] | None
               ) -> tuple[ViewAlignment, float | None, tuple[SlabBackground, float]]:
    """A fit of ``config.iterations`` steps with the views turned by ``start``'s axis,
    matching their shifts to its predictions every ``_PREALIGN_EVERY`` steps. Returns the
    shifts so found (at that axis), with ``find_axis`` the axis angle its predictions
    point to, and the views' ice slab (``slab``, or fitted by this run when None:
    :attr:`GaussianReconstruction.slab_fit`)."""
    run = GaussianReconstruction(views, tilts_deg, thickness, config, width=width,
                                 alignment=start, slab=slab)
    while run.iteration < config.iterations:
        run.step()
        if run.iteration % _PREALIGN_EVERY == 0:
            run._refine_alignment()
    axis = run._match_views(fit_axis=True, steps=3).axis_deg if find_axis else None
    return run.alignment, axis, run.slab_fit


def _axis_from_two_fits(first: float, second: float, probe_deg: float) -> float | None:
    """The axis angle from two short fits' estimates, ``first`` (views as given) and
    ``second`` (views turned by ``probe_deg``): each model takes up a share of the error
    left at its axis, the same share at both (docs/method.md), so each estimate is
    ``a + k (axis - a)``. None where the two do not bear that out (``k`` outside
    0.1-1.5: a second estimate that moved with the probe, or away from the first)."""
    kept = 1.0 - (second - first) / probe_deg
    if not 0.1 <= kept <= 1.5:
        return None
    return first / kept


def prealign_views(views: np.ndarray, tilts_deg: np.ndarray, thickness: int,
                   config: ReconstructConfig | None = None, width: int | None = None,
                   slab: tuple[SlabBackground, float] | None = None):
    """Residual shifts (and tilt-axis angle) of the views: matching to the other views,
    then to short Gaussian fits.

    First each view is matched to a weighted back-projection of all the other views
    (:func:`taichi_etgs.alignment.other_views.match_to_other_views`, after removing the
    ice slab's projection that :func:`~taichi_etgs.gaussian.background.fit_slab` finds):
    this takes residual shifts of 1.5 px to 0.23-0.6 px even at 120 e/A^2, where a fit to
    misaligned views learns their misalignment instead. Views that this stage finds
    aligned within the noise of its measurement are left as they are.

    Then a short fit (``_PREALIGN_ITERATIONS`` steps of ``config``, default the
    library's; two of ``_AXIS_FIT_ITERATIONS`` for the axis), seeded from the views so
    corrected, matches the views as given to its predictions every ``_PREALIGN_EVERY``
    steps (:func:`taichi_etgs.alignment.match_views`, shifts), fitting the re-aligned
    views in between: the model, slab and missing wedge included, predicts the views
    better than any reconstruction from the views alone.
    Where the ice slab ends in view (an isolated specimen, a SHREC-style box), the fits
    also find the tilt-axis angle: the first fits the views as given, the second the
    views turned by a probe angle past the axis the first one's predictions point to; a
    fitted model takes up part of an axis error as a deformation of the specimen, the same
    part at any angle, so the two estimates give the axis (:func:`_axis_from_two_fits`).
    An axis error under ``_AXIS_LEFT_DEG`` is left (where the first estimate shows none
    that large, the second fit refines the shifts without a turn): the search's own bias
    on views without error is about as large, and turning resamples every view. Where
    the specimen runs past the field of view the estimate is biased by tenths of a degree
    to degrees, and one fit finds the shifts alone.

    Parameters
    ----------
    views: positive-density views as given. [n, ny, nu]
    tilts_deg: their tilts. [n]
    thickness, width: the tomogram's NZ and NX (width None: nu).
    config: the fit's settings (its iterations and ``refine_alignment`` are ignored).
    slab: the ice slab a fit of these views with ``config`` finds
        (:attr:`GaussianReconstruction.slab_fit`), shared by the short fits; None: the
        first short fit finds it for all.

    Returns
    -------
    :class:`~taichi_etgs.alignment.ViewAlignment`: the correction of the views as given.
    """
    from ..alignment import ViewAlignment
    from ..alignment.other_views import match_to_other_views
    from .background import fit_slab

    config = dataclasses.replace(config or ReconstructConfig(),
                                 iterations=_PREALIGN_ITERATIONS, refine_alignment=False)
    views = np.asarray(views, dtype=np.float32)
    tilts_deg = np.asarray(tilts_deg, dtype=np.float64)
    nu = views.shape[2]
    specimen = views
    ends_in_view = False
    if config.background == "slab":
        ice = fit_slab(views.mean(axis=1), tilts_deg, thickness, width or nu)[0]
        ends_in_view = ice.ends_within(width or nu)
        if ice.density != 0.0:
            specimen = views - ice.project(tilts_deg, nu)[0][:, None, :].astype(np.float32)
    coarse = match_to_other_views(specimen, tilts_deg, thickness, width=width)
    del specimen
    if not np.any(coarse.shifts_px):
        # No shifts beyond the noise of their measurement: matching to a short fit would
        # only move aligned views (0.11 px rms at 120 e/A^2, 1.5 % band FSC lost).
        return coarse
    if not ends_in_view:
        # A specimen running past the field of view: the axis estimate is biased there
        # (0.3-1.7 degree found for an axis without error), so only the shifts.
        left = ("the specimen runs past the field of view, where its estimate is biased"
                if config.background == "slab" else
                "without the ice slab's fit it is not known whether the specimen ends in "
                "view, and where it does not the estimate is biased")
        return _short_fit(views, tilts_deg, thickness, config, width,
                          dataclasses.replace(coarse, axis_left=left), False, slab)[0]
    config = dataclasses.replace(config, iterations=_AXIS_FIT_ITERATIONS)
    found, first, slab = _short_fit(views, tilts_deg, thickness, config, width, coarse, True,
                                    slab)
    if abs(first) < _AXIS_KEPT * _AXIS_LEFT_DEG:
        # No axis error worth a turn: a second fit for the shifts alone, from the first
        # one's, matches them twice more (0.43 -> 0.17 px rms at SNR 1 without axis error,
        # 0.30 either way at 120 e/A^2), as the probe's fit would.
        return _short_fit(views, tilts_deg, thickness, config, width, found, False, slab)[0]
    # Probe past the truth: each model keeps about half of the error left at its axis.
    probe = float(np.copysign(np.clip(abs(first) / _AXIS_KEPT, *_AXIS_PROBE_DEG), first))
    at_probe, second, _ = _short_fit(views, tilts_deg, thickness, config, width,
                                     ViewAlignment(found.shifts_px, probe), True, slab)
    axis = _axis_from_two_fits(first, second, probe)
    if axis is None or not _AXIS_LEFT_DEG <= abs(axis) <= _AXIS_PROBE_DEG[1]:
        left = ("" if axis is not None and abs(axis) < _AXIS_LEFT_DEG else
                "two short fits did not agree on an angle" if axis is None else
                f"the angle found, {axis:+.1f} degree, is beyond the "
                f"{_AXIS_PROBE_DEG[1]:g} degrees searched")
        if abs(probe) <= _AXIS_PROBE_DEG[0]:
            # The second fit started from the first one's shifts and matched twice more
            # (0.32 -> 0.14 px rms at SNR 1 without axis error); its views were turned by
            # the smallest probe about their centres, which moves no view as a whole.
            return ViewAlignment(at_probe.shifts_px, 0.0, left)
        return dataclasses.replace(found, axis_left=left)
    # The shifts found at the axis nearer the one found.
    shifts = at_probe.shifts_px if abs(axis - probe) < abs(axis) else found.shifts_px
    return ViewAlignment(shifts, axis)


class GaussianReconstruction:
    """A Gaussian reconstruction in progress: model, image model, optimiser, validation.

    The image model (docs/method.md): view ``t`` is predicted as
    ``gain_t * (P_t[Gaussians] + P_t[slab]) + offset_t``, ``P_t`` projecting onto view
    ``t``'s detector moved by its residual shift when an alignment is set; the Gaussians
    carry the specimen, the slab (:mod:`taichi_etgs.gaussian.background`) the ice it sits
    in, ``gain_t`` exposure and attenuation, ``offset_t`` (matched to the view's mean) the
    unknown level.

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
    alignment: a known correction of the views as given
        (:class:`~taichi_etgs.alignment.ViewAlignment`), applied to them; refined further
        only with ``config.refine_alignment``, which otherwise finds it with
        :func:`prealign_views`.
    slab: the ice slab already fitted to these views, in their units, and the share of
        their row averages' variance it explains (:attr:`slab_fit` of a run of the same
        views and settings; the short fits of :func:`prealign_views` take their run's);
        None: fitted here.
    """

    def __init__(self, views: np.ndarray, tilts_deg: np.ndarray, thickness: int,
                 config: ReconstructConfig | None = None, *, width: int | None = None,
                 initial_volume: np.ndarray | None = None,
                 params: GaussianParams | None = None,
                 params_view_scale: float | None = None,
                 alignment: ViewAlignment | None = None,
                 slab: tuple[SlabBackground, float] | None = None) -> None:
        from .loss import tilt_weights

        self.config = config or ReconstructConfig()
        views = np.asarray(views)
        if views.ndim != 3:
            raise InputError(f"expected views (n_tilts, ny, nx), got shape {views.shape}")
        self.tilts_deg = np.asarray(tilts_deg, dtype=np.float64)
        if self.tilts_deg.shape != (views.shape[0],):
            raise InputError(f"{self.tilts_deg.size} tilt angles for {views.shape[0]} views")
        n_tilts, ny, nu = views.shape
        self.shape_zyx = (int(thickness), ny, nu if width is None else int(width))
        self.pad_x = (fov_padding(self.shape_zyx[0], self.tilts_deg)
                      if self.config.extend_fov else 0)
        # The model lives on the widened grid; the tomogram is its central box.
        self.model_shape_zyx = (self.shape_zyx[0], ny, self.shape_zyx[2] + 2 * self.pad_x)
        self.heldout = heldout_views(self.tilts_deg, self.config.heldout_every)
        self.train = np.setdiff1d(np.arange(n_tilts), self.heldout)
        self.nu = nu
        self.ctf = None
        if self.config.has_view_filter:
            from .transfer import ViewFilter

            microscope = self.config.microscope()
            if microscope.n_views not in (None, n_tilts):
                raise InputError(f"the defocus or exposure is given for {microscope.n_views} "
                                 f"views but there are {n_tilts}")
            self.ctf = ViewFilter(microscope, (ny, nu))
        # The slab is found in the row averages before anything else, so that the units,
        # the SSIM range and the seed volume are those of the specimen, not of slab edges.
        # It does not depend on the alignment (the views as given are fitted), so a fit
        # this run's alignment makes on the same views takes it as it is.
        if slab is None:
            slab = self._fit_slab(views)
        # The fit as found (the views' units) is kept for the runs that share it; the
        # run's own slab is scaled to its units and then fitted further.
        self.slab_fit = (dataclasses.replace(slab[0]), slab[1])
        self.slab = dataclasses.replace(slab[0])
        self.alignment = None
        if self.config.refine_alignment or alignment is not None:
            if alignment is None:
                from ..alignment import ViewAlignment

                # A model to continue from (a resume) comes with its alignment (restore).
                alignment = (ViewAlignment.identity(n_tilts) if params is not None
                             else self._prealign(views, width))
        slab_views = self._slab_profiles(np.arange(n_tilts))
        if self.ctf is not None:
            slab_views = self.ctf.apply_rows(slab_views)
        specimen = np.asarray(views, dtype=np.float32) - slab_views[:, None, :]
        specimen -= specimen.mean(axis=(1, 2), keepdims=True)
        self.scale = robust_scale(specimen[self.train])
        self.measured = (np.asarray(views) / self.scale).astype(np.float32)
        self.data_range = robust_range(specimen[self.train] / self.scale)
        # The held-out score weighs each frequency ring by its share of signal: at low dose
        # the rings beyond the signal only add noise to the score (docs/method.md).
        self.spectrum = view_spectrum(specimen[self.train])
        if alignment is not None:
            # The views as given are what is fitted: the correction's shifts move the
            # model's projections instead (_set_alignment).
            self.given = self.measured
            self._set_alignment(alignment)
            if np.any(alignment.shifts_px) or alignment.axis_deg != 0.0:
                # Only the seed is made from resampled views.
                specimen = alignment.apply(specimen)
        self.slab.density /= self.scale
        self.weights = tilt_weights(self.tilts_deg, self.config.tilt_weight)
        self.gains = np.ones(n_tilts)
        self.iteration = 0
        self.losses: list[float] = []
        self.validation: dict = {"iteration": [], "heldout_loss": []}
        self.best_iteration = 0
        self.stopped_early = False
        self.rng = np.random.default_rng(self.config.seed)
        if params is None:
            seed_views = specimen if self.ctf is None else self.ctf.phase_flip(specimen)
            params = self._seed_model(initial_volume, seed_views / self.scale)
        elif params_view_scale is not None:
            params = params.copy()
            params.density_raw = density_raw_from_densities(
                params.densities() * (params_view_scale / self.scale))
        del specimen
        self._start(params)

    # -- set-up ---------------------------------------------------------------------------

    def _slab_profiles(self, index: np.ndarray, shifts: np.ndarray | None = None
                       ) -> np.ndarray:
        """The slab's projections for the views ``index``, moved by ``shifts``
        (:meth:`_view_shifts`). [len(index), nu]"""
        if self.slab.density == 0.0:
            return np.zeros((len(index), self.nu))
        return self.slab.project(self.tilts_deg[index], self.nu,
                                 u_shift=None if shifts is None else shifts[:, 0])[0]

    def _fit_slab(self, views: np.ndarray) -> tuple[SlabBackground, float]:
        """The ice slab in the fitted views' row averages, through their CTF and exposure
        filter (:func:`~taichi_etgs.gaussian.background.fit_slab`); an empty one without
        ``background == "slab"``."""
        from .background import SlabBackground, fit_slab

        if self.config.background != "slab":
            return SlabBackground(0.0, 0.0, 0.0, 0.0, 0.0), 0.0
        row_means = np.stack([np.asarray(v, dtype=np.float64).mean(axis=0) for v in views])
        return fit_slab(row_means[self.train], self.tilts_deg[self.train], self.shape_zyx[0],
                        self.shape_zyx[2],
                        transfer=None if self.ctf is None else partial(self.ctf.apply_rows,
                                                                       index=self.train))

    def _prealign(self, views: np.ndarray, width: int | None):
        """The views' alignment from a short fit of its own (:func:`prealign_views`): the
        model written is then seeded from aligned views instead of having learned the
        misalignment in its first steps."""
        return prealign_views(views, self.tilts_deg, self.shape_zyx[0], self.config, width,
                              slab=self.slab_fit)

    def _set_alignment(self, alignment: ViewAlignment) -> None:
        """Take ``alignment`` as the correction of the views as given.

        Its shifts move the model's projections the opposite way (:meth:`_view_shifts`),
        rendered exactly: resampling the views instead would blur their signal and noise
        by an amount that depends on each shift, and fill their borders with made-up
        pixels (docs/method.md, "Alignment refinement"). An axis angle turns the views
        (once, from the views as given)."""
        from ..alignment import ViewAlignment

        turned = self.alignment is None or alignment.axis_deg != self.alignment.axis_deg
        self.alignment = alignment
        if not turned:
            return  # the shifts alone changed: the views fitted stay as they are
        self.measured = self.given
        if alignment.axis_deg != 0.0:
            turn = ViewAlignment(np.zeros_like(alignment.shifts_px), alignment.axis_deg)
            self.measured = turn.apply(self.given)
        self._heldout_measured_cache = None

    def _view_shifts(self, index: np.ndarray) -> np.ndarray | None:
        """How far the model's projections of the views ``index`` are moved to predict the
        views as given: against the correction's shifts. None when none moves. [n, 2]"""
        if self.alignment is None or not np.any(self.alignment.shifts_px[index]):
            return None
        return -np.asarray(self.alignment.shifts_px, dtype=np.float64)[index]

    def _match_views(self, *, fit_axis: bool, steps: int) -> ViewAlignment:
        """The correction that matches the views as given to the model's predictions of
        all of them, starting from the current one."""
        from ..alignment import match_views

        every = np.arange(self.measured.shape[0])
        predicted = self.gains[:, None, None].astype(np.float32) * self.predict(
            every, as_given=False)
        return match_views(self.given, predicted, self.tilts_deg, self.alignment,
                           steps=steps, fit_axis=fit_axis)

    def _refine_alignment(self) -> str:
        """Match the views as given to the model's predictions of all of them (shifts)."""
        before = self.alignment
        self._set_alignment(self._match_views(fit_axis=False, steps=2))
        moved = np.sqrt(np.mean((self.alignment.shifts_px - before.shifts_px) ** 2))
        return (f"alignment: axis {self.alignment.axis_deg:+.2f} deg, shifts moved "
                f"{moved:.2f} px rms")

    def _seed_model(self, initial_volume: np.ndarray | None,
                    specimen_views: np.ndarray) -> GaussianParams:
        from .seeding import init_from_volume

        if initial_volume is None:
            initial_volume = self.classical_reconstruction(specimen_views)
        else:
            initial_volume = np.asarray(initial_volume, dtype=np.float32) / self.scale
            if initial_volume.shape != self.shape_zyx:
                raise InputError(f"the initial volume has shape {initial_volume.shape}, "
                                 f"expected {self.shape_zyx} (z, y, x)")
            # Outside the given box, seed from the level the box sits on.
            initial_volume = np.pad(initial_volume, ((0, 0), (0, 0), (self.pad_x,) * 2),
                                    constant_values=float(np.median(initial_volume)))
        return init_from_volume(initial_volume, self.seed_count(),
                                seed=self.config.seed).astype(np.float32)

    def seed_count(self) -> int:
        """How many Gaussians the octree seeds: ``init_gaussians`` where set, else
        :meth:`seed_budget`."""
        return self.config.init_gaussians or self.seed_budget()

    def seed_budget(self) -> int:
        """How many Gaussians the octree seeds when ``init_gaussians`` is not set: half of
        ``max_gaussians``, or fewer, down to a quarter, for views too noisy to determine
        that many: one per ``signal_per_gaussian`` signal-bearing Fourier coefficients of
        the fitted views (each coefficient counted by its ring's share of signal,
        :func:`view_spectrum`). docs/method.md, "Seeding"."""
        budget = max(1, self.config.max_gaussians // 2)
        if self.config.signal_per_gaussian > 0:
            spectrum = self.spectrum
            signal = float(spectrum.signal_share[spectrum.rings].sum()) * self.train.size
            budget = max(budget // 2, min(budget, int(signal / self.config.signal_per_gaussian)))
        return max(1, budget)

    def classical_reconstruction(self, specimen_views: np.ndarray | None = None) -> np.ndarray:
        """The initial volume: SIRT or WBP of the fitted views, slab removed, on the model's
        grid. [nz, ny, nx + 2 pad_x]; the widened grid already holds every ray's whole path.
        """
        from ..classical.sirt import sirt
        from ..classical.wbp import weighted_back_projection

        views = self.measured if specimen_views is None else specimen_views
        views, tilts = views[self.train], self.tilts_deg[self.train]
        nz, _, nx = self.model_shape_zyx
        if self.config.init == "wbp":
            return weighted_back_projection(views, tilts, nz, width=nx)
        return sirt(views, tilts, nz, width=nx, extend_fov=False,
                    iterations=self.config.init_sirt_iterations).volume

    def _start(self, params: GaussianParams) -> None:
        from .densify import DensifyStats
        from .optim import Adam, learning_rates, scene_extent_vox

        self.params = params.astype(np.float32)
        self._clamp_scales()
        self.extent = scene_extent_vox(self.model_shape_zyx)
        self.adam = Adam(self.params, learning_rates(0, self.config.iterations, self.extent))
        self.slab_adam = _SlabAdam(self.slab.density)
        # TV's unit: the spread of the seed model's density (a scale-free weight).
        self.tv_unit = float(np.percentile(self.params.densities(), 90)) or 1.0
        self.stats = DensifyStats(self.params.n)
        self.min_density = self.config.densify_config().min_density(self.params)
        self._snapshot = None
        self._take_snapshot()
        self._best = None
        self._best_alignment = None
        # (lowest held-out score, the ring-normalised spectra of its predictions)
        self._heldout_reference = None
        self._heldout_measured_cache = None
        # Every model validate() kept, (iteration, score, params, slab vector): those the
        # held-out views cannot tell from the best make the tomogram (keep_best).
        self._candidates: list[tuple[int, float, GaussianParams, np.ndarray]] = []
        self._averaged: list[tuple[int, GaussianParams, np.ndarray]] | None = None

    def _clamp_scales(self) -> None:
        from .densify import clamp_scales

        clamp_scales(self.params, self.config.min_scale,
                     max(self.config.min_scale, 0.5 * max(self.shape_zyx)))

    # -- the image model ------------------------------------------------------------------

    def predict(self, index: np.ndarray, params: GaussianParams | None = None,
                slab_profiles: np.ndarray | None = None, *, as_given: bool = True
                ) -> np.ndarray:
        """Model views ``CTF * (P[Gaussians] + P[slab])`` before gain and offset (the CTF
        when one is set); ``slab_profiles``: the slab's projections for ``index`` when
        already computed. ``as_given``: as the views were given, each moved by its
        misalignment (:meth:`_view_shifts`); False: as the corrected views. [n, ny, nu]"""
        from .render import project_gaussians

        params = self.params if params is None else params
        _, ny, nu = self.measured.shape
        shifts = self._view_shifts(index) if as_given else None
        rendered = project_gaussians(params, self.tilts_deg[index], ny, nu, shifts)
        if self.slab.density != 0.0:
            if slab_profiles is None:
                slab_profiles = self._slab_profiles(index, shifts)
            rendered += slab_profiles[:, None, :].astype(rendered.dtype)
        if self.ctf is not None:
            rendered = self.ctf.apply(rendered, index)
        return rendered

    # -- the loop -------------------------------------------------------------------------

    def views_for(self, iteration: int) -> np.ndarray:
        """Indices of the views rendered at ``iteration`` (0-based). [views_per_step]"""
        n = self.train.size
        k = min(self.config.views_per_step, n)
        positions = np.arange(iteration * k, iteration * k + k)
        epochs = positions // n
        order = {int(e): _view_order(self.config.seed, int(e), n) for e in np.unique(epochs)}
        return self.train[np.array([order[int(e)][p % n] for e, p in zip(epochs, positions)])]

    def loss_and_grad(self, selected: np.ndarray, params: GaussianParams | None = None):
        """Loss of the selected views, the projector's backward result and the gradient by
        the slab's parameters (zero without a slab). [6]"""
        from .loss import view_loss
        from .render import project_gaussians_backward

        params = self.params if params is None else params
        tilts = self.tilts_deg[selected]
        measured = self.measured[selected]
        # The slab's projections and their derivatives in one pass (most of a step's
        # host time on wide views).
        shifts = self._view_shifts(selected)
        slab_profiles = jac = None
        if self.slab.density != 0.0:
            slab_profiles, jac = self.slab.project(
                tilts, self.nu, with_jacobian=True,
                u_shift=None if shifts is None else shifts[:, 0])
        model = self.predict(selected, params, slab_profiles)
        gain = self.gains[selected][:, None, None].astype(model.dtype)
        predicted = gain * model
        # Per-view offset: only the measured views' deviations from their mean are known.
        shift = measured.mean(axis=(1, 2), keepdims=True) - predicted.mean(axis=(1, 2),
                                                                          keepdims=True)
        loss, grad = view_loss(predicted + shift, measured, self.weights[selected],
                               lambda_dssim=self.config.lambda_dssim, data_range=self.data_range,
                               data_term=self.config.data_term)
        # The offset depends on the rendering: d(r - mean r)/dr removes each view's mean.
        grad = (grad - grad.mean(axis=(1, 2), keepdims=True)) * gain
        if self.ctf is not None:
            grad = self.ctf.adjoint(grad, selected)
        slab_grad = np.zeros(6)
        if jac is not None:
            slab_grad = np.einsum("tu,tup->p", grad.sum(axis=1, dtype=np.float64), jac)
        if self.config.fit_gain:
            self._update_gains(selected, model, measured)
        return float(loss), project_gaussians_backward(params, tilts, grad, shifts), slab_grad

    def _update_gains(self, selected: np.ndarray, model: np.ndarray,
                      measured: np.ndarray) -> None:
        """Move each view's gain towards its least-squares value (a running average: one
        batch's estimate is noisy), keeping the mean gain at 1 (the density scale is
        set by the Gaussians)."""
        # The outermost columns are left out: where a slab's end meets the detector's edge
        # (a box cut to the field of view) a half-pixel misfit there would set the gain.
        edge = 4 if model.shape[2] > 32 else 0
        r = model[:, :, edge:model.shape[2] - edge].reshape(model.shape[0], -1).astype(np.float64)
        m = measured[:, :, edge:model.shape[2] - edge].reshape(model.shape[0], -1).astype(
            np.float64)
        r = r - r.mean(axis=1, keepdims=True)
        var = np.einsum("ij,ij->i", r, r)
        ok = var > 1e-12 * max(float(var.max()), 1e-300)
        ls = np.where(ok, np.einsum("ij,ij->i", r, m) / np.where(ok, var, 1.0), 1.0)
        ls = np.clip(ls / self.gains[self.train].mean(), 0.7, 1.4)
        self.gains[selected] = 0.9 * self.gains[selected] + 0.1 * ls
        self.gains[self.train] /= self.gains[self.train].mean()

    def step(self) -> Progress:
        """One optimisation step (and densification when due)."""
        from .background import SlabBackground
        from .optim import DEFAULT_LR, learning_rates

        cfg = self.config
        self._averaged = None  # the model moves on: the tomogram is the current one again
        loss, back, slab_grad = self.loss_and_grad(self.views_for(self.iteration))
        message = ""
        if not np.isfinite(loss) or not _finite(back.grads) or not np.all(np.isfinite(slab_grad)):
            return self._rollback(loss)
        if cfg.tv_weight > 0:
            self._add_tv_grads(back.grads)
        rates = learning_rates(self.iteration, cfg.iterations, self.extent)
        self.adam.set_lr({k: v * cfg.lr_scale for k, v in rates.items()})
        self.adam.step(self.params, back.grads)
        self._clamp_scales()
        if self.config.background == "slab" and self.slab.density > 0:
            decay = rates["means_xyz"] / (DEFAULT_LR["means_xyz"][0] * self.extent)
            vec = self.slab_adam.step(self.slab.vector(), slab_grad, decay * cfg.lr_scale)
            vec[0] = max(vec[0], 0.0)
            self.slab = SlabBackground.from_vector(vec, self.slab.edge)
        self.stats.add(back.grads.means_xyz, back.visible_views)
        self.iteration += 1
        self.losses.append(loss)
        if self._densify_due():
            message = self._densify()
            # Views found aligned (no shift at all) stay so: further matching would only
            # move them by its noise (0.09 px rms at 120 e/A^2).
            if (self.config.refine_alignment and self.alignment is not None
                    and np.any(self.alignment.shifts_px)):
                message += "; " + self._refine_alignment()
        if self.iteration % cfg.densify_every == 0:
            self._take_snapshot()
        return Progress(self.iteration, cfg.iterations, loss, self.params.n, message)

    def _add_tv_grads(self, grads: GaussianParams) -> None:
        """Add the gradient of ``tv_weight * TV`` of a random sub-volume of the tomogram's
        box to ``grads`` (in place)."""
        from .regularize import random_patch_origin, total_variation
        from .render import voxelize_gaussians, voxelize_gaussians_backward

        patch = tuple(min(self.config.tv_patch, n) for n in self.shape_zyx)
        origin = random_patch_origin(self.rng, self.shape_zyx, patch)
        volume = voxelize_gaussians(self.params, patch, origin_xyz=origin)
        _, grad = total_variation(volume / self.tv_unit, eps=0.01)
        back = voxelize_gaussians_backward(
            self.params, (self.config.tv_weight / self.tv_unit) * grad, origin_xyz=origin)
        for f in dataclasses.fields(grads):
            getattr(grads, f.name)[...] += getattr(back, f.name)

    # -- validation -----------------------------------------------------------------------

    def heldout_loss(self, params: GaussianParams | None = None) -> float:
        """One minus the held-out views' Fourier ring correlation with their prediction,
        averaged over the rings weighted by each ring's share of signal.

        The 2D analogue of the FSC the tomogram is judged by: per ring it is blind to
        gain, offset and per-ring scale, and rings that hold only noise weigh nothing.
        0 for a perfect prediction of noise-free views, 1 for one that predicts nothing;
        noise sets the floor. NaN without held-out views.
        """
        return self._heldout_fit(params)[0]

    def _ring_sums(self, spectra: np.ndarray) -> np.ndarray:
        """Sum of each ring's coefficients over the held-out views. [n_rings]"""
        rings = self.spectrum.rings
        n = self.spectrum.signal_share.size
        return np.bincount(np.broadcast_to(rings, spectra.shape).ravel(),
                           np.asarray(spectra).ravel(), minlength=n)[:n]

    def _normalised_prediction(self, predicted: np.ndarray) -> np.ndarray:
        """Spectra of the predicted views, each ring scaled to unit energy over the views:
        what the FRC compares. [n_heldout, ny, nx] complex"""
        spectra = np.fft.fft2(predicted - predicted.mean(axis=(1, 2), keepdims=True))
        energy = self._ring_sums(np.abs(spectra) ** 2)
        return spectra / np.sqrt(np.where(energy > 0, energy, 1.0))[self.spectrum.rings]

    def _heldout_fit(self, params: GaussianParams | None = None
                     ) -> tuple[float, np.ndarray | None]:
        """The held-out score and the ring-normalised spectra of the predictions."""
        if self.heldout.size == 0 or self.spectrum.signal_share.sum() <= 0:
            return float("nan"), None
        return self._score_prediction(self.predict(self.heldout, params))

    def _score_prediction(self, predicted: np.ndarray) -> tuple[float, np.ndarray]:
        """Score predicted held-out views (:meth:`heldout_loss`). [n_heldout, ny, nx]"""
        share = self.spectrum.signal_share
        q = self._normalised_prediction(np.asarray(predicted, dtype=np.float64))
        spectra, norm = self._heldout_measured()
        frc = self._ring_sums((q * np.conj(spectra)).real) / norm
        return float(1.0 - np.sum(share * frc) / share.sum()), q

    def _heldout_measured(self) -> tuple[np.ndarray, np.ndarray]:
        """Spectra of the measured held-out views (mean removed) and their ring norms,
        computed once: the views do not change during a run."""
        if self._heldout_measured_cache is None:
            m = self.measured[self.heldout].astype(np.float64)
            spectra = np.fft.fft2(m - m.mean(axis=(1, 2), keepdims=True))
            norm = np.sqrt(self._ring_sums(np.abs(spectra) ** 2))
            self._heldout_measured_cache = (spectra, np.where(norm > 0, norm, 1.0))
        return self._heldout_measured_cache

    def _worse_beyond_noise(self, value: float, normalised: np.ndarray) -> bool:
        """Whether the held-out score ``value`` exceeds the lowest so far by more than the
        held-out views' own noise can explain.

        Two predictions' ring correlations differ by their agreement with the signal plus
        ``sum Re((q1 - q2) conj F(noise)) / |F(m)|`` per ring, whose standard deviation
        for white noise of power ``N`` per coefficient is ``sqrt(N sum |q1 - q2|^2) /
        |F(m)|``. At low dose that term moves the score by more than fitting does, so a
        score within two of its standard deviations of the lowest is a tie, and a tie goes
        to the later model: it has seen more of the data.
        """
        lowest, reference = self._heldout_reference
        share = self.spectrum.signal_share
        moved = self._ring_sums(np.abs(normalised - reference) ** 2)
        spread = np.sqrt(self.spectrum.noise_power * moved) / self._heldout_measured()[1]
        sd = float(np.sqrt(np.sum((share * spread) ** 2)) / share.sum())
        return value > lowest + 2.0 * sd

    def validate(self) -> float:
        """Score the held-out views now; the model becomes the one to keep unless its score
        is worse than the lowest so far beyond the held-out views' noise."""
        value, fitted = self._heldout_fit()
        self.validation["iteration"].append(int(self.iteration))
        self.validation["heldout_loss"].append(value)
        if not np.isfinite(value):
            return value
        if self._heldout_reference is None or value < self._heldout_reference[0]:
            self._heldout_reference = (value, fitted)
        elif self._worse_beyond_noise(value, fitted):
            return value
        self._best = (value, self.params.copy(), self.slab.vector(), self.gains.copy(),
                      self.iteration)
        self._best_alignment = self.alignment
        self.best_iteration = self.iteration
        self._candidates.append((self.iteration, value, self._best[1], self._best[2]))
        if len(self._candidates) > _MAX_AVERAGED:
            # Every other one back from the newest, the lowest score's kept: the average
            # still spans the run.
            lowest = min(self._candidates, key=lambda c: c[1])
            last = len(self._candidates) - 1
            self._candidates = [c for k, c in enumerate(self._candidates)
                                if (last - k) % 2 == 0 or c is lowest]
        return value

    def _densify_due(self) -> bool:
        return self.config.densify_config().is_due(self.iteration, self.config.iterations)

    def _densify(self) -> str:
        from .densify import DensifyStats, densify_and_prune

        result = densify_and_prune(self.params, self.stats, max_gaussians=self.config.max_gaussians,
                                   min_density=self.min_density,
                                   volume_shape_zyx=self.model_shape_zyx,
                                   config=self.config.densify_config())
        self.params = result.params.astype(np.float32)
        self.adam.select(result.keep_mask)
        self.adam.append(result.n_appended)
        self.stats = DensifyStats(self.params.n)
        return (f"densified: +{result.n_cloned} cloned, {result.n_split} split, "
                f"-{result.n_pruned} pruned -> {self.params.n}")

    def _take_snapshot(self) -> None:
        self._snapshot = (self.params.copy(), self.adam.state(), self.iteration,
                          self.rng.bit_generator.state, len(self.losses),
                          self.slab.vector(), self.gains.copy())

    def _rollback(self, loss: float) -> Progress:
        from .background import SlabBackground
        from .densify import DensifyStats
        from .optim import Adam

        params, adam_state, iteration, rng_state, n_losses, slab, gains = self._snapshot
        self.config = dataclasses.replace(self.config, lr_scale=self.config.lr_scale * 0.5)
        if self.config.lr_scale < 1e-3:
            raise InputError("the loss kept becoming NaN/Inf even at 1/1000 of the learning "
                             "rates: check the input data")
        self.params = params.copy()
        self.adam = Adam.from_state(adam_state)
        self.iteration = iteration
        self.rng.bit_generator.state = rng_state
        self.slab = SlabBackground.from_vector(slab, self.slab.edge)
        self.gains = gains.copy()
        del self.losses[n_losses:]
        self.stats = DensifyStats(self.params.n)
        return Progress(self.iteration, self.config.iterations, loss, self.params.n,
                        f"non-finite loss ({loss}); rolled back to iteration {iteration} with "
                        f"learning rates x{self.config.lr_scale:g}")

    def run(self, progress: Callable[[Progress], None] | None = None,
            checkpoint: Callable[[GaussianReconstruction], None] | None = None,
            save_every: int = 0) -> None:
        """Iterate until ``config.iterations`` or the early stop, then keep the best model.

        The held-out views are scored every ``validate_every`` iterations (and before the
        first); the run stops early once every score for ``patience`` iterations has been
        worse than the lowest beyond the held-out views' noise, and ends on the last model
        that was not (:meth:`validate`). ``checkpoint`` is called every
        ``save_every`` steps.
        """
        cfg = self.config
        if self.stopped_early:  # a resumed run that had already stopped: nothing to fit
            self.keep_best()
            return
        if self.heldout.size and self.iteration % cfg.validate_every == 0 \
                and self.iteration not in self.validation["iteration"]:
            self.validate()
        while self.iteration < cfg.iterations:
            info = self.step()
            if self.heldout.size and self.iteration % cfg.validate_every == 0:
                info.heldout_loss = self.validate()
            stop = bool(self.heldout.size) and self.iteration - self.best_iteration >= cfg.patience
            if stop:
                info.message = (f"{info.message}; " if info.message else "") + (
                    f"the held-out views have been worse than their best for {cfg.patience} "
                    f"iterations: stopping, the model of iteration {self.best_iteration} is kept")
            if progress is not None:
                progress(info)
            if checkpoint is not None and save_every and self.iteration % save_every == 0:
                checkpoint(self)
            if stop:
                self.stopped_early = True
                break
        self.keep_best()

    def keep_best(self) -> None:
        """Make the model of the best held-out score the current one, and the tomogram the
        mean of the models the held-out views cannot tell from it (no-op without held-out
        views)."""
        from .background import SlabBackground

        if self._best is None:
            return
        _, params, slab, gains, iteration = self._best
        if iteration != self.iteration:
            if self._best_alignment is not None:
                self._set_alignment(self._best_alignment)
            self.params = params.copy()
            self.slab = SlabBackground.from_vector(slab, self.slab.edge)
            self.gains = gains.copy()
        self._averaged = self._tied_models()

    def _tied_models(self) -> list[tuple[int, GaussianParams, np.ndarray]]:
        """The kept models whose held-out score is the lowest or within the held-out views'
        noise of it (:meth:`_worse_beyond_noise`), scored now against the views as they
        are at the end. (iteration, params, slab vector), in iteration order.

        Why their mean: at low dose the score stays within noise of its lowest for hundreds
        of iterations while the fit moves; the models along the way differ mostly by the
        noise each has fitted, which their mean averages out (on the benchmark's
        physical-noise point with the specimen past the field of view, band FSC 0.747 for
        the last such model, 0.769 for the lowest score's, 0.754 for the mean of at most
        16 in bench/results/sweep.md).
        """
        from .background import SlabBackground

        best = [(self._best[4], self.params, self.slab.vector())]
        if self._heldout_reference is None:
            return best
        lowest = self._heldout_reference[0]
        current = self.slab
        tied = []
        try:
            for iteration, _, params, slab in self._candidates:
                self.slab = SlabBackground.from_vector(slab, current.edge)
                value, fitted = self._heldout_fit(params)
                if value <= lowest or not self._worse_beyond_noise(value, fitted):
                    tied.append((iteration, params, slab))
        finally:
            self.slab = current
        return tied or best

    @property
    def averaged_iterations(self) -> list[int]:
        """The iterations of the models the tomogram is the mean of (after the run: see
        :meth:`keep_best`); during the run, the current one."""
        if self._averaged is None:
            return [int(self.iteration)]
        return [int(it) for it, _, _ in self._averaged]

    def tomogram(self, voxel_size: float = 1.0, shape_zyx: tuple[int, int, int] | None = None,
                 include_slab: bool = True) -> np.ndarray:
        """The model (Gaussians and, unless ``include_slab`` is false, the slab) voxelised
        on the tomogram grid, in the input views' units; after the run, the mean of the
        models :meth:`keep_best` chose (:attr:`averaged_iterations`). [nz, ny, nx]"""
        from .background import SlabBackground
        from .render import voxelize_gaussians

        shape = self.shape_zyx if shape_zyx is None else shape_zyx
        members = (self._averaged if self._averaged is not None
                   else [(self.iteration, self.params, self.slab.vector())])
        volume = None
        for _, params, slab_vector in members:
            part = voxelize_gaussians(params, shape, voxel_size=voxel_size)
            slab = SlabBackground.from_vector(slab_vector, self.slab.edge)
            if include_slab and slab.density != 0.0:
                part += slab.volume(shape, voxel_size)
            volume = part if volume is None else volume + part
        return (volume * (self.scale / len(members))).astype(np.float32)

    def validation_report(self) -> dict:
        """What the run knows of its own quality (for the output's sidecar and the log)."""
        alignment = {} if self.alignment is None else {"alignment": self.alignment.to_dict()}
        return alignment | {"heldout_views": self.heldout.tolist(),
                "heldout_loss": {"iteration": list(self.validation["iteration"]),
                                 "value": list(self.validation["heldout_loss"])},
                "best_iteration": int(self.best_iteration),
                "best_heldout_loss": (float(self._best[0]) if self._best is not None
                                      else None),
                "averaged_iterations": self.averaged_iterations,
                "stopped_early": bool(self.stopped_early),
                "slab": self.slab.to_dict() | {"density": self.slab.density * self.scale},
                "slab_explained_row_variance": float(self.slab_fit[1]),
                "gain_range": [float(self.gains.min()), float(self.gains.max())]}

    # -- state ----------------------------------------------------------------------------

    def geometry(self, **known):
        """The model's :class:`~taichi_etgs.gaussian.state.ModelGeometry`; ``known``: what
        the caller knows besides (``pixel_size_A``, ``source``, ``contrast``, ``run``)."""
        from .state import ModelGeometry

        return ModelGeometry(shape_zyx=tuple(self.shape_zyx),
                             model_shape_zyx=tuple(self.model_shape_zyx),
                             tilts_deg=self.tilts_deg, view_scale=float(self.scale),
                             n_views=int(self.measured.shape[0]),
                             detector_yx=tuple(self.measured.shape[1:]), **known)

    def save_state(self, path, input_checksum: str, extra_geometry: dict | None = None) -> None:
        """Write everything a bit-for-bit resume needs (:func:`.state.save_state`).

        Besides parameters, optimiser and RNG, the run-time quantities that are not settings
        (densification statistics, the pruning level, slab, gains, validation history and
        the best model so far) go into the config under ``_`` keys. ``extra_geometry``:
        more fields of the model's geometry (:meth:`geometry`).
        """
        from .state import save_state

        config = self.config.to_dict()
        config.update(_min_density=self.min_density, _losses=np.asarray(self.losses),
                      **{f"_densify_{k}": v for k, v in self.stats.state().items()},
                      _slab=self.slab.vector(), _slab_adam=[self.slab_adam.m, self.slab_adam.v,
                                                           self.slab_adam.t],
                      _gains=self.gains, _validation=self.validation,
                      _stopped_early=self.stopped_early)
        if self.alignment is not None:
            config.update(_alignment_shifts=self.alignment.shifts_px,
                          _alignment_axis=[self.alignment.axis_deg],
                          _alignment_axis_left=self.alignment.axis_left)
        if self._best is not None:
            value, params, slab, gains, iteration = self._best
            config.update(_best=[value, slab, gains, iteration],
                          _best_params=[params.means_xyz, params.log_scales,
                                        params.quats_wxyz, params.density_raw])
        candidates = None
        if self._candidates:
            iterations, values, models, slabs = zip(*self._candidates)
            config.update(_candidates=[list(iterations), list(values),
                                       [m.n for m in models], np.stack(slabs)])
            candidates = GaussianParams(*(np.concatenate([getattr(m, f.name) for m in models])
                                          for f in dataclasses.fields(GaussianParams)))
        if self._heldout_reference is not None:
            lowest, normalised = self._heldout_reference
            config.update(_heldout_reference=[lowest],
                          _heldout_reference_spectra=np.stack(
                              [normalised.real, normalised.imag]).astype(np.float32))
        geometry = self.geometry(**(extra_geometry or {}))
        save_state(path, self.params, self.adam.state(), self.iteration,
                   self.rng.bit_generator.state, config, geometry, input_checksum,
                   candidates=candidates)

    def restore(self, state) -> None:
        """Continue from a saved state (:func:`taichi_etgs.gaussian.state.load_state`)."""
        from .background import SlabBackground
        from .densify import DensifyStats
        from .optim import Adam

        self.params = state.params.astype(np.float32)
        if state.adam is not None:
            self.adam = Adam.from_state(state.adam)
        self.iteration = int(state.iteration)
        self.rng = state.rng()
        self.stats = DensifyStats(self.params.n)
        config = state.config
        if "_densify_grad_sum" in config:
            self.stats = DensifyStats.from_state(
                {k: config[f"_densify_{k}"] for k in ("grad_sum", "grad_sq_sum", "seen_steps")})
        self.min_density = float(config.get("_min_density", self.min_density))
        self.losses = [float(v) for v in config.get("_losses", [])]
        if "_slab" in config:
            self.slab = SlabBackground.from_vector(config["_slab"], self.slab.edge)
            m, v, t = config["_slab_adam"]
            self.slab_adam.m, self.slab_adam.v = np.asarray(m), np.asarray(v)
            self.slab_adam.t = int(t)
            self.gains = np.asarray(config["_gains"], dtype=np.float64)
            self.validation = {k: list(v) for k, v in config["_validation"].items()}
            self.stopped_early = bool(config.get("_stopped_early", False))
        if "_best" in config:
            value, slab, gains, iteration = config["_best"]
            params = GaussianParams(*(np.asarray(a) for a in config["_best_params"]))
            self._best = (float(value), params, np.asarray(slab), np.asarray(gains),
                          int(iteration))
            self.best_iteration = int(iteration)
        if "_candidates" in config and state.candidates is not None:
            iterations, values, sizes, slabs = config["_candidates"]
            arrays = [getattr(state.candidates, f.name)
                      for f in dataclasses.fields(GaussianParams)]
            ends = np.cumsum([0, *(int(n) for n in sizes)])
            self._candidates = [
                (int(it), float(v), GaussianParams(*(a[b:e] for a in arrays)), np.asarray(sl))
                for it, v, b, e, sl in zip(iterations, values, ends[:-1], ends[1:], slabs)]
        if "_alignment_shifts" in config and self.alignment is not None:
            from ..alignment import ViewAlignment

            self._set_alignment(ViewAlignment(np.asarray(config["_alignment_shifts"],
                                                         dtype=float),
                                              float(config["_alignment_axis"][0]),
                                              str(config.get("_alignment_axis_left", ""))))
        if "_heldout_reference" in config:
            re_im = np.asarray(config["_heldout_reference_spectra"], dtype=np.float64)
            self._heldout_reference = (float(config["_heldout_reference"][0]),
                                       re_im[0] + 1j * re_im[1])
        self._take_snapshot()


def _finite(params: GaussianParams) -> bool:
    return all(np.isfinite(getattr(params, f.name)).all()
               for f in dataclasses.fields(params))


def reconstruct_halves(views: np.ndarray, tilts_deg: np.ndarray, thickness: int,
                       config: ReconstructConfig | None = None, *, width: int | None = None,
                       seed_gaussians: int | None = None,
                       progress: Callable[[int, Progress], None] | None = None
                       ) -> tuple[GaussianReconstruction, GaussianReconstruction]:
    """Two independent reconstructions, from the odd and from the even views in tilt order.

    The gold-standard practice of RELION, cryoCARE and DeepDeWedge: their Fourier shell
    correlation (:func:`taichi_etgs.evaluation.metrics.half_map_fsc`) tells how far the tomogram is
    reproducible from independent data, with no ground truth. Each half has its own seed,
    held-out views and early stop, but as many Gaussians as the tomogram it validates: a
    half seeding from its own views' signal, half the data, would seed fewer, and two
    smoother halves agree more than the tomogram deserves (docs/method.md, "Validation").

    Parameters
    ----------
    views: positive-density views. [n_tilts, ny, nx]
    tilts_deg: tilt angles. [n_tilts]
    thickness: tomogram thickness, voxels.
    config: the settings of each half (its seed is offset by 1 and 2).
    width: tomogram width (default: the views').
    seed_gaussians: Gaussians each half seeds when ``config.init_gaussians`` is not set:
        the full run's :meth:`GaussianReconstruction.seed_count` (default: each half's
        own budget, from its views).
    progress: called with (half 1 or 2, progress) after each iteration.

    Returns
    -------
    The two finished runs (``.tomogram()`` voxelises each).
    """
    config = config or ReconstructConfig()
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if tilts.size < 4:
        raise InputError(f"half reconstructions need at least 4 views; got {tilts.size}")
    order = np.argsort(tilts, kind="stable")
    init = config.init_gaussians or seed_gaussians
    runs = []
    for k, index in enumerate((np.sort(order[0::2]), np.sort(order[1::2])), start=1):
        # Half the views per step: each half sees each of its views as often as the full
        # run sees each of its, in about half the time (a step's cost is its views').
        per_step = max(1, round(config.views_per_step * index.size / tilts.size))
        run = GaussianReconstruction(np.asarray(views)[index], tilts[index], thickness,
                                     dataclasses.replace(config.select_views(index),
                                                         seed=config.seed + k,
                                                         views_per_step=per_step,
                                                         init_gaussians=init),
                                     width=width)
        run.run(progress=None if progress is None else (lambda info, k=k: progress(k, info)))
        runs.append(run)
    return runs[0], runs[1]


def halves_fsc(first: GaussianReconstruction, second: GaussianReconstruction,
               pixel_size_A: float, voxel_size: float = 1.0,
               shape_zyx: tuple[int, int, int] | None = None) -> dict:
    """Half-map FSC of two half reconstructions' specimens (:func:`reconstruct_halves`).

    Only the Gaussians are compared: both halves fit the same seven-parameter ice slab to
    the same ice, and its faces and ends, hundreds of times the specimen's contrast, would
    make any two halves agree however noisy their specimens are.

    Parameters
    ----------
    first, second: the two finished half runs.
    pixel_size_A: the views' pixel size, A.
    voxel_size, shape_zyx: the tomogram grid, as for :meth:`GaussianReconstruction.tomogram`.

    Returns
    -------
    :func:`taichi_etgs.evaluation.metrics.half_map_fsc`'s dictionary.
    """
    from ..evaluation.metrics import half_map_fsc

    volumes = [run.tomogram(voxel_size, shape_zyx, include_slab=False)
               for run in (first, second)]
    return half_map_fsc(volumes[0], volumes[1], pixel_size_A * voxel_size)
