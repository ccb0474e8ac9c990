"""Simulated tilt series with a ground truth: ``taichi-etgs simulate``.

Pipeline (:func:`simulate_tilt_series`):

1. **Specimen** (:mod:`taichi_etgs.simulation.specimen`): an ice slab holding vesicles, actin-like
   filaments and macromolecules (atomic models, or procedural particles when no model is
   given) at random non-overlapping positions and orientations; potential in volts.
2. **Field of view**: by default the specimen extends laterally beyond the box along X
   (the axis the tilt moves across the beam): far enough that every ray of every view
   runs through specimen all the way, i.e. ``nx/2 / cos(max_tilt) + T/2 tan(max_tilt)``
   voxels each side of the centre (``T`` the specimen thickness, tilts above 80 deg
   capped at 80), so high tilts see material from outside the box, as in real data.
   (Y needs no margin: a ray stays in its detector row.) ``isolated=True`` cuts the
   specimen to the box (whole objects inside it) instead.
3. **Projection without inverse crime**: the potential is rasterised (box-integrated) on
   a grid ``oversampling`` times finer than the output, projected with the voxel
   projector of :mod:`taichi_etgs.classical.projector` on that grid, divided by ``oversampling``
   (a line integral in fine-voxel lengths becomes one in output-voxel lengths) and
   averaged over ``oversampling x oversampling`` fine pixels per detector pixel. The
   fine grid is built and projected a band of Y rows at a time (``v = y`` in every
   view), which bounds the memory.
4. **Ground truth**: the same fine potential averaged over each output voxel, cropped to
   the box: volts, positive, **ice included** (the slab is what the views see; vacuum
   above and below a thinner slab is 0).
5. **Residual misalignment** (:mod:`taichi_etgs.simulation.misalignment`, off by default):
   per-view shifts, a tilt-axis angle error and tilt-angle offsets, applied to the
   noise-free views on the fine detector; the truth goes into ``info["misalignment"]``.
6. **Noise** (:mod:`taichi_etgs.simulation.imaging`): none, Gaussian at a per-pixel SNR, or physical
   (CTF, radiation damage, Poisson counts at the dose).

Output views are in **dark contrast**: for ``noise="none"`` and ``"gaussian"`` they are
the negated projected potential (V x output voxel; more density = more negative), for
``"physical"`` electron counts per pixel (more density = fewer electrons).

Everything random comes from ``seed``: one stream for the specimen, one for the noise and
one for the misalignment, so changing the noise model keeps the specimen, and asking for a
misalignment keeps the specimen and the noise of the same seed without it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from .._atomic import write_text_atomic
from ..errors import InputError
from ..pipeline import jsonio
from ..pipeline.outputs import check_writable
from .misalignment import draw_misalignment, misalign_views
from .specimen import (
    Grid,
    Specimen,
    build_specimen,
    default_counts,
    load_structure,
    render_potential,
)

__all__ = [
    "NOISE_MODELS",
    "OUTPUT_FILES",
    "STACK_ORDERS",
    "SimulationConfig",
    "SimulationResult",
    "TILT_ORDERS",
    "TiltScheme",
    "acquisition_sequence",
    "project_specimen",
    "simulate_tilt_series",
    "specimen_grid_shape",
    "tilt_scheme",
    "write_simulation",
]

NOISE_MODELS = ("gaussian", "physical", "none")
STACK_ORDERS = ("angle", "acquisition")
#: Acquisition orders (:func:`acquisition_sequence`).
TILT_ORDERS = ("sequential", "bidirectional", "dose-symmetric")
#: The lateral padding stops growing beyond this tilt (1/cos diverges at 90 deg).
_MAX_PADDING_TILT_DEG = 80.0
#: Fine voxels rasterised and projected at once.
_SLAB_VOXELS = 8_000_000


@dataclass(frozen=True)
class SimulationConfig:
    """Every parameter of a simulation (all have defaults: ``SimulationConfig()`` runs).

    Parameters
    ----------
    shape_zyx: tomogram (and ground truth) shape; views are ``(n_tilts, ny, nx)``.
    pixel_size_A: output voxel and detector pixel size, A.
    oversampling: fine grid factor (>= 2) used for the specimen and its projection.
    tilt_min_deg, tilt_max_deg, tilt_step_deg: the tilt range (ends included when the
        step divides it).
    tilts_deg: explicit tilt angles instead of the range.
    dose_symmetric: acquire in the dose-symmetric order (Hagen: 0, +s, -s, -2s, +2s,
        +3s, -3s, ...; groups of ``dose_symmetric_group`` alternate sides); otherwise
        from the lowest tilt to the highest.
    dose_symmetric_group: views per group in the dose-symmetric scheme.
    tilt_order: the acquisition order by name (:data:`TILT_ORDERS`,
        :func:`acquisition_sequence`); "" takes it from ``dose_symmetric``.
    tilt_start_deg: the start angle of the bidirectional and dose-symmetric orders (and
        of a sequential one, which then starts at the end nearer to it); None: 0 (and the
        lowest tilt for sequential).
    stack_order: "angle" (views sorted by tilt, as after IMOD's newstack) or
        "acquisition" (as recorded); the .tlt file follows the stack.
    total_dose_e_per_A2: total exposure, split evenly over the views.
    noise: "gaussian", "physical" or "none".
    snr: per-pixel SNR for the Gaussian model (signal variance / noise variance).
    defocus_um, voltage_kV, cs_mm, amplitude_contrast: microscope (physical model).
    radiation_damage: apply the exposure filter (physical model).
    mean_free_path_A: inelastic mean free path in ice (zero-loss attenuation).
    isolated: cut the specimen to the box instead of extending it laterally.
    structures: atomic model files (mmCIF/PDB, gzipped or not); empty: procedural
        particles.
    n_particles, n_vesicles, n_filaments: objects centred in the box; None: about as
        many as :func:`taichi_etgs.simulation.specimen.default_counts` gives for the box, as many
        of them as fit (explicit counts that do not fit raise a PlacementWarning).
    ice_thickness_A: ice slab thickness; None: the box thickness.
    shift_sd_px: standard deviation of each view's residual shift in X and in Y, output
        pixels (:mod:`~taichi_etgs.simulation.misalignment`); 0: none.
    axis_error_deg: the views' tilt axis, degrees from Y (IMOD's tilt axis angle); 0: none.
    tilt_offset_sd_deg: standard deviation of each view's true tilt minus its recorded
        one; 0: none.
    seed: seed of every random choice.
    """

    shape_zyx: tuple[int, int, int] = (64, 128, 128)
    pixel_size_A: float = 10.0
    oversampling: int = 2
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    tilt_step_deg: float = 3.0
    tilts_deg: tuple[float, ...] | None = None
    dose_symmetric: bool = False
    dose_symmetric_group: int = 2
    tilt_order: str = ""
    tilt_start_deg: float | None = None
    stack_order: str = "angle"
    total_dose_e_per_A2: float = 120.0
    noise: str = "gaussian"
    snr: float = 0.5
    defocus_um: float = 3.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    radiation_damage: bool = True
    mean_free_path_A: float = 3500.0
    isolated: bool = False
    structures: tuple[str, ...] = ()
    n_particles: int | None = None
    n_vesicles: int | None = None
    n_filaments: int | None = None
    ice_thickness_A: float | None = None
    shift_sd_px: float = 0.0
    axis_error_deg: float = 0.0
    tilt_offset_sd_deg: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape_zyx)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"shape must be three positive sizes (z, y, x), got "
                             f"{self.shape_zyx}")
        object.__setattr__(self, "shape_zyx", shape)
        object.__setattr__(self, "structures", tuple(str(s) for s in self.structures))
        if self.tilts_deg is not None:
            object.__setattr__(self, "tilts_deg", tuple(float(t) for t in self.tilts_deg))
        checks = [
            (self.pixel_size_A > 0, f"pixel size must be positive, got {self.pixel_size_A}"),
            (int(self.oversampling) == self.oversampling and self.oversampling >= 2,
             (f"oversampling must be a whole number >= 2 (so that the data are not made "
             f"with the reconstruction's own grid), got {self.oversampling}")),
            (self.noise in NOISE_MODELS,
             f"unknown noise model {self.noise!r}; expected one of {', '.join(NOISE_MODELS)}"),
            (self.stack_order in STACK_ORDERS,
             f"unknown stack order {self.stack_order!r}; expected angle or acquisition"),
            (self.noise != "gaussian" or self.snr > 0, f"SNR must be positive, got {self.snr}"),
            (self.total_dose_e_per_A2 > 0 or self.noise != "physical",
             f"total dose must be positive, got {self.total_dose_e_per_A2}"),
            (0 <= self.amplitude_contrast < 1,
             f"amplitude contrast must be in [0, 1), got {self.amplitude_contrast}"),
            (self.voltage_kV > 0, f"voltage must be positive, got {self.voltage_kV}"),
            (self.dose_symmetric_group >= 1, "dose-symmetric group size must be >= 1"),
            (self.tilt_order in ("", *TILT_ORDERS),
             f"unknown tilt order {self.tilt_order!r}; expected {', '.join(TILT_ORDERS)}"),
            (self.tilt_start_deg is None or np.isfinite(self.tilt_start_deg),
             "the start angle must be a finite number"),
            (self.ice_thickness_A is None or self.ice_thickness_A >= 0,
             f"ice thickness must be >= 0, got {self.ice_thickness_A}"),
            (self.mean_free_path_A > 0, "mean free path must be positive"),
            (np.isfinite(self.shift_sd_px) and self.shift_sd_px >= 0,
             f"the shift sd must be a number of pixels >= 0, got {self.shift_sd_px}"),
            (np.isfinite(self.axis_error_deg) and abs(self.axis_error_deg) < 45,
             f"the tilt-axis error must be under 45 degrees, got {self.axis_error_deg}"),
            (np.isfinite(self.tilt_offset_sd_deg) and self.tilt_offset_sd_deg >= 0,
             f"the tilt offset sd must be >= 0 degrees, got {self.tilt_offset_sd_deg}"),
        ]
        for n_name in ("n_particles", "n_vesicles", "n_filaments"):
            value = getattr(self, n_name)
            checks.append((value is None or value >= 0, f"{n_name} must be >= 0, got {value}"))
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        object.__setattr__(self, "oversampling", int(self.oversampling))

    def resolved(self) -> SimulationConfig:
        """A copy with the automatic values (None) replaced by the ones used."""
        nz, ny, nx = self.shape_zyx
        ice_A = (nz * self.pixel_size_A if self.ice_thickness_A is None
                 else float(self.ice_thickness_A))
        usable_ice_A = min(ice_A, nz * self.pixel_size_A) if self.isolated else ice_A
        radius_A = None
        if self.structures and self.n_particles is None:
            radius_A = float(np.mean([load_structure(p).radius_A for p in self.structures]))
        counts = default_counts((ny * self.pixel_size_A, nx * self.pixel_size_A),
                                usable_ice_A, radius_A)
        return dataclasses.replace(
            self,
            n_particles=counts[0] if self.n_particles is None else int(self.n_particles),
            n_vesicles=counts[1] if self.n_vesicles is None else int(self.n_vesicles),
            n_filaments=counts[2] if self.n_filaments is None else int(self.n_filaments),
            ice_thickness_A=ice_A,
            tilts_deg=tuple(tilt_scheme(self).tilts_deg.tolist()),
        )

    def to_dict(self) -> dict:
        """JSON-ready dictionary of every field."""
        d = dataclasses.asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d


@dataclass
class TiltScheme:
    """Views in stack order: angle, acquisition rank, dose and prior exposure.

    Attributes
    ----------
    tilts_deg: tilt of each view, degrees. [n]
    acquisition_rank: position of each view in the acquisition sequence (0 first). [n]
    dose_e_per_A2: exposure of each view. [n]
    prior_dose_e_per_A2: exposure received before each view. [n]
    """

    tilts_deg: np.ndarray
    acquisition_rank: np.ndarray
    dose_e_per_A2: np.ndarray
    prior_dose_e_per_A2: np.ndarray


def _dose_symmetric_sequence(angles: np.ndarray, group: int, start_deg: float = 0.0
                             ) -> list[int]:
    """Indices of ``angles`` (sorted ascending) in the dose-symmetric order."""
    start = int(np.argmin(np.abs(angles - start_deg)))
    positive = list(range(start + 1, len(angles)))
    negative = list(range(start - 1, -1, -1))
    sequence = [start]
    take, side = max(1, group // 2), 0  # Hagen: the first group has half the views
    while positive or negative:
        source = (positive, negative)[side]
        if not source:
            source = (positive, negative)[1 - side]
        sequence.extend(source[:take])
        del source[:take]
        take, side = group, 1 - side
    return sequence


def acquisition_sequence(angles_deg, order: str = "sequential", *, group: int = 2,
                         start_deg: float | None = None) -> np.ndarray:
    """The order in which the views of ``angles_deg`` (any order) were acquired.

    - ``sequential``: from the lowest tilt to the highest; with ``start_deg`` nearer the
      highest tilt than the lowest, from the highest down.
    - ``bidirectional``: from the view nearest ``start_deg`` (default 0) to the end of the
      range farther from it (the negative end on a tie), then from the start's
      neighbour on the other side to the other end (SerialEM's bidirectional series,
      whose first half passes through zero when the start is off it).
    - ``dose-symmetric`` (Hagen): the view nearest ``start_deg`` (default 0), then groups
      of ``group`` views alternating sides, the first group on the positive side having
      half as many (0, +s, -s, -2s, +2s, +3s, -3s, ... for ``group`` 2).

    Views at the same angle keep their stack order. Returns the indices into
    ``angles_deg`` in acquisition order. [n]
    """
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if order not in TILT_ORDERS:
        raise InputError(f"unknown tilt order {order!r}; expected {', '.join(TILT_ORDERS)}")
    if int(group) < 1:
        raise InputError(f"the dose-symmetric group size must be >= 1, got {group}")
    by_angle = np.argsort(angles, kind="stable")
    a = angles[by_angle]
    n = a.size
    if n == 0:
        return by_angle
    if order == "sequential":
        down = start_deg is not None and abs(a[-1] - start_deg) < abs(a[0] - start_deg)
        sequence = list(range(n - 1, -1, -1)) if down else list(range(n))
    elif order == "bidirectional":
        s0 = 0.0 if start_deg is None else float(start_deg)
        start = int(np.argmin(np.abs(a - s0)))
        down = list(range(start, -1, -1))
        up = list(range(start, n))
        if a[-1] - a[start] > a[start] - a[0]:
            sequence = up + down[1:]
        else:
            sequence = down + up[1:]
    else:
        sequence = _dose_symmetric_sequence(a, int(group),
                                            0.0 if start_deg is None else float(start_deg))
    return by_angle[np.asarray(sequence, dtype=np.int64)]


def tilt_scheme(config: SimulationConfig) -> TiltScheme:
    """Tilt angles, acquisition order and doses of a configuration, in stack order."""
    if config.tilts_deg is not None:
        angles = np.sort(np.asarray(config.tilts_deg, dtype=np.float64))
    else:
        lo, hi, step = config.tilt_min_deg, config.tilt_max_deg, config.tilt_step_deg
        if not (step > 0 and hi >= lo):
            raise InputError(f"tilt range {lo}..{hi} by {step} is empty; need max >= min "
                             f"and a positive step")
        count = math.floor((hi - lo) / step + 1e-6) + 1
        angles = np.round(lo + step * np.arange(count), 6)
    if angles.size == 0:
        raise InputError("no tilt angles")
    if not np.all(np.isfinite(angles)) or np.any(np.abs(angles) >= 90):
        raise InputError("tilt angles must be finite and within (-90, 90) degrees")
    n = angles.size
    order = config.tilt_order or ("dose-symmetric" if config.dose_symmetric else "sequential")
    sequence = acquisition_sequence(angles, order, group=config.dose_symmetric_group,
                                    start_deg=config.tilt_start_deg)
    rank = np.empty(n, dtype=np.int64)
    rank[sequence] = np.arange(n)
    dose = np.full(n, config.total_dose_e_per_A2 / n)
    prior = np.empty(n)
    prior[sequence] = np.concatenate([[0.0], np.cumsum(dose[sequence])[:-1]])
    stack = np.asarray(sequence) if config.stack_order == "acquisition" else np.arange(n)
    return TiltScheme(angles[stack], rank[stack], dose[stack], prior[stack])


@dataclass
class SimulationResult:
    """A simulated tilt series and its ground truth.

    Attributes
    ----------
    tilts: views in dark contrast, float32. [n_tilts, ny, nx]
    tilts_deg: tilt of each view in stack order. [n_tilts]
    ground_truth: specimen potential over the box, volts, float32. [nz, ny, nx]
    pixel_size_A: voxel and pixel size, A.
    config: the resolved configuration (:meth:`SimulationConfig.to_dict`).
    info: everything derived: doses, grids, what was placed where, noise constants.
    """

    tilts: np.ndarray
    tilts_deg: np.ndarray
    ground_truth: np.ndarray
    pixel_size_A: float
    config: dict
    info: dict = field(default_factory=dict)


def specimen_grid_shape(shape_zyx: tuple[int, int, int], pixel_size_A: float,
                        max_tilt_deg: float, ice_thickness_A: float,
                        isolated: bool) -> tuple[int, int]:
    """``(nz, nx)`` of the specimen region in output voxels (see the module notes).

    The box sits at its centre; the extra width and thickness are even numbers of voxels
    so that both grids share voxel boundaries.
    """
    nz, _, nx = shape_zyx
    if isolated:
        return nz, nx
    nz_spec = max(nz, math.ceil(ice_thickness_A / pixel_size_A - 1e-9))
    nz_spec += (nz_spec - nz) % 2
    theta = math.radians(min(abs(max_tilt_deg), _MAX_PADDING_TILT_DEG))
    half = 0.5 * nx / math.cos(theta) + 0.5 * nz_spec * math.tan(theta)
    nx_spec = max(nx, 2 * math.ceil(half - 1e-9))
    nx_spec += (nx_spec - nx) % 2
    return nz_spec, nx_spec


def _bin3(volume: np.ndarray, f: int) -> np.ndarray:
    a, b, c = (n // f for n in volume.shape)
    return volume.reshape(a, f, b, f, c, f).mean(axis=(1, 3, 5), dtype=np.float64)


def project_specimen(specimen: Specimen, shape_zyx: tuple[int, int, int], pixel_size_A: float,
                     tilts_deg: np.ndarray, *, oversampling: int = 2, isolated: bool = False,
                     fine_views: bool = False, margin_px: int = 0,
                     progress: Callable[[str], None] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free views and ground truth of a specimen, projected on a finer grid.

    Parameters
    ----------
    specimen: the scene (A, centred on the box).
    shape_zyx: output tomogram shape.
    pixel_size_A: output voxel size, A.
    tilts_deg: view angles, degrees. [n_tilts]
    oversampling: fine voxels per output voxel along each axis (>= 1; the simulator
        uses >= 2).
    isolated: the specimen is cut to the box; otherwise it is rasterised over the
        region of :func:`specimen_grid_shape`.
    fine_views: return the views on the fine detector (for a CTF applied before binning).
    margin_px: output pixels of detector added on each side along X (the views of a
        misaligned microscope show what lies beyond the box's columns).

    Returns
    -------
    views: line integrals of the potential, V x output voxel, float32.
        [n_tilts, ny, nx + 2 margin] (or [n_tilts, ny * f, (nx + 2 margin) * f] with
        ``fine_views``)
    ground_truth: mean potential in each output voxel of the box, V, float32. [nz, ny, nx]
    """
    from ..classical.projector import forward_project

    nz, ny, nx = (int(n) for n in shape_zyx)
    f = int(oversampling)
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    max_tilt = float(np.max(np.abs(tilts))) if tilts.size else 0.0
    nz_spec, nx_spec = specimen_grid_shape((nz, ny, nx), pixel_size_A, max_tilt,
                                           specimen.ice_thickness_A, isolated)
    pz, px = (nz_spec - nz) // 2, (nx_spec - nx) // 2
    grid = Grid((nz_spec * f, ny * f, nx_spec * f), pixel_size_A / f)
    rows = max(1, _SLAB_VOXELS // (nz_spec * nx_spec * f ** 3))
    n_u = nx + 2 * int(margin_px)
    n_out = (tilts.size, ny * f, n_u * f) if fine_views else (tilts.size, ny, n_u)
    views = np.empty(n_out, dtype=np.float32)
    truth = np.empty((nz, ny, nx), dtype=np.float32)
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        if progress is not None:
            progress(f"specimen rows {y0}-{y1} of {ny}")
        potential = render_potential(specimen, grid, (y0 * f, y1 * f))
        box = potential[pz * f:(pz + nz) * f, :, px * f:(px + nx) * f]
        truth[:, y0:y1] = _bin3(box, f)
        # Line integrals in fine-voxel lengths -> output-voxel lengths: divide by f.
        fine = forward_project(potential, tilts, n_u=n_u * f) / np.float32(f)
        if fine_views:
            views[:, y0 * f:y1 * f] = fine
        else:
            views[:, y0:y1] = _bin_views(fine, f)
    return views, truth


def _bin_views(fine: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f x f`` fine pixels per detector pixel, float64. [n, ny, nx]"""
    t, a, b = fine.shape
    return fine.reshape(t, a // f, f, b // f, f).mean(axis=(2, 4), dtype=np.float64)


def simulate_tilt_series(config: SimulationConfig | None = None, *,
                         progress: Callable[[str], None] | None = None) -> SimulationResult:
    """Simulate a tilt series and its ground truth (see the module notes).

    Parameters
    ----------
    config: all parameters; default ``SimulationConfig()``.
    progress: called with a short message at each stage (for a CLI).

    Returns
    -------
    The result; deterministic for a given configuration (seed included).

    Raises
    ------
    InputError: impossible settings or unreadable atomic models.

    Warns
    -----
    PlacementWarning: some of the objects asked for explicitly found no room (left
        out; the counts placed are in ``info["placed_in_box"]`` and ``info["objects"]``).
    """
    from .imaging import gaussian_noise_sigma, physical_images

    config = config or SimulationConfig()
    best_effort = tuple(kind for kind in ("particles", "vesicles", "filaments")
                        if getattr(config, f"n_{kind}") is None)
    config = config.resolved()
    nz, ny, nx = config.shape_zyx
    pix = config.pixel_size_A
    scheme = tilt_scheme(config)
    # Children of a SeedSequence do not depend on how many are spawned: the specimen and
    # noise streams are those of the simulations made before the misalignment existed.
    specimen_seed, noise_seed, alignment_seed = np.random.SeedSequence(
        int(config.seed)).spawn(3)
    misalignment = draw_misalignment(
        len(scheme.tilts_deg), np.random.default_rng(alignment_seed),
        shift_sd_px=config.shift_sd_px, axis_error_deg=config.axis_error_deg,
        tilt_offset_sd_deg=config.tilt_offset_sd_deg)
    projected_tilts = scheme.tilts_deg + misalignment.tilt_offsets_deg
    max_tilt = float(np.max(np.abs(projected_tilts)))
    nz_spec, nx_spec = specimen_grid_shape(config.shape_zyx, pix, max_tilt,
                                           config.ice_thickness_A, config.isolated)
    if progress is not None:
        progress("placing objects")
    specimen, placed = build_specimen(
        np.random.default_rng(specimen_seed), (nz * pix, ny * pix, nx * pix),
        config.ice_thickness_A,
        half_width_x_A=None if config.isolated else 0.5 * nx_spec * pix,
        structures=config.structures, n_particles=config.n_particles,
        n_vesicles=config.n_vesicles, n_filaments=config.n_filaments,
        best_effort=best_effort)
    physical = config.noise == "physical"
    # Shifts and turns are interpolated on the fine detector, where the spline's blur is
    # below the detector pixel.
    moved = bool(misalignment.shifts_xy_px.any()) or misalignment.axis_error_deg != 0
    margin = misalignment.reach_px(config.shape_zyx[1:]) if moved else 0
    views, truth = project_specimen(specimen, config.shape_zyx, pix, projected_tilts,
                                    oversampling=config.oversampling,
                                    isolated=config.isolated, fine_views=physical or moved,
                                    margin_px=margin, progress=progress)
    # The SNR is the specimen's: white noise is set from the views as a perfectly aligned
    # microscope shows them, not from vacuum or ice a shift brought in.
    snr_views = views
    if moved:
        if progress is not None:
            progress("misalignment")
        f = config.oversampling
        inside = np.s_[..., margin * f:(margin + nx) * f]
        snr_views = _bin_views(views[inside], f) if config.noise == "gaussian" else None
        views = misalign_views(views, misalignment, f)[inside]
        if not physical:
            views = _bin_views(views, config.oversampling).astype(np.float32)
    if progress is not None:
        progress(f"noise: {config.noise}")
    noise_rng = np.random.default_rng(noise_seed)
    noise_info: dict = {"model": config.noise}
    if physical:
        tilts, extra = physical_images(
            views, pix, config.oversampling, scheme.dose_e_per_A2,
            scheme.prior_dose_e_per_A2, noise_rng, defocus_um=config.defocus_um,
            voltage_kV=config.voltage_kV, cs_mm=config.cs_mm,
            amplitude_contrast=config.amplitude_contrast,
            radiation_damage=config.radiation_damage,
            mean_free_path_A=config.mean_free_path_A)
        noise_info.update(extra)
        noise_info["units"] = "electrons per pixel"
    else:
        tilts = -views  # dark contrast
        noise_info["units"] = "negated projected potential, V x voxel"
        if config.noise == "gaussian":
            sigma = gaussian_noise_sigma(snr_views, scheme.tilts_deg, config.snr,
                                         scheme.dose_e_per_A2)
            noise = noise_rng.standard_normal(tilts.shape, dtype=np.float32)
            tilts = tilts + noise * sigma.astype(np.float32)[:, None, None]
            noise_info["sigma_per_view"] = sigma.tolist()
    placed_counts = {k: sum(1 for o in placed[k] if o["in_box"])
                     for k in ("particles", "vesicles", "filaments")}
    info = {
        "contrast": "dark",
        "ground_truth": "mean specimen potential per voxel in volts, ice included",
        "acquisition_rank": scheme.acquisition_rank.tolist(),
        "dose_e_per_A2": scheme.dose_e_per_A2.tolist(),
        "prior_dose_e_per_A2": scheme.prior_dose_e_per_A2.tolist(),
        "specimen_shape_zyx": [nz_spec, ny, nx_spec],
        "fine_grid_shape_zyx": [nz_spec * config.oversampling, ny * config.oversampling,
                                nx_spec * config.oversampling],
        "placed_in_box": placed_counts,
        "noise": noise_info,
        "misalignment": misalignment.to_dict(),
        "objects": placed,
    }
    return SimulationResult(np.ascontiguousarray(tilts, dtype=np.float32),
                            scheme.tilts_deg.copy(), truth, float(pix), config.to_dict(),
                            info)


OUTPUT_FILES = ("tilts.mrc", "tilts.tlt", "ground_truth.mrc", "simulation.json")
#: Written besides with the physical noise model (the views then carry a CTF).
DEFOCUS_FILE = "tilts.defocus"
#: Written besides with the physical noise model: each view's dose and prior dose.
DOSE_FILE = "tilts.dose"


def write_simulation(result: SimulationResult, out_dir: str | PathLike, force: bool = False,
                     ) -> dict[str, Path]:
    """Write ``tilts.mrc``, ``tilts.tlt``, ``ground_truth.mrc`` and ``simulation.json``,
    and with the physical noise model (views with a CTF) ``tilts.defocus``: the defocus
    of every view in IMOD's format (``--defocus tilts.defocus``), and ``tilts.dose``: the
    dose of every view and the dose before it, e/A^2 (``--dose tilts.dose``).

    The folder is created if needed. Nothing is written when any of the files exists and
    ``force`` is False. Each file is written atomically.

    Returns
    -------
    Path of each file, by name.

    Raises
    ------
    InputError: a file exists (without ``force``), or ``out_dir`` is a file.
    """
    from .. import __version__
    from ..io import write_stack, write_volume
    from ..io.angles import write_tilt_angles

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    names = OUTPUT_FILES + ((DEFOCUS_FILE, DOSE_FILE) if result.config.get("noise") == "physical"
                            else ())
    paths = {name: out / name for name in names}
    for path in paths.values():
        check_writable(path, force, folder_must_exist=False)
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    label = (f"taichi-etgs {__version__} simulate seed={cfg.get('seed')} "
             f"noise={cfg.get('noise')}")
    write_stack(paths["tilts.mrc"], result.tilts, result.pixel_size_A, force=force,
                labels=[label, "dark contrast"])
    write_volume(paths["ground_truth.mrc"], result.ground_truth, result.pixel_size_A,
                 force=force, labels=[label, "ground truth: potential (V), ice included"])
    write_tilt_angles(paths["tilts.tlt"], result.tilts_deg, force=force)
    if DEFOCUS_FILE in paths:
        from ..io.defocus import write_imod_defocus

        n = len(result.tilts_deg)
        write_imod_defocus(paths[DEFOCUS_FILE], result.tilts_deg,
                           np.full(n, float(cfg["defocus_um"])))
    if DOSE_FILE in paths:
        from ..io.dose import write_dose

        write_dose(paths[DOSE_FILE], result.info["dose_e_per_A2"],
                   result.info["prior_dose_e_per_A2"])
    document = {"software": f"taichi-etgs {__version__}", "seed": cfg.get("seed"),
                "pixel_size_A": result.pixel_size_A,
                "shape_zyx": list(result.ground_truth.shape),
                "tilts_deg": np.asarray(result.tilts_deg).tolist(),
                "config": cfg, "derived": result.info}
    write_text_atomic(paths["simulation.json"], jsonio.dumps(document, indent=1) + "\n")
    return paths
