"""Specimen potentials (volts): atoms, procedural particles, membranes, filaments and ice.

A :class:`Specimen` is a scene described analytically in Angstrom, centred on the
tomogram box (docs/conventions.md's coordinates: voxel ``i`` of an axis of length ``n`` at
``(i + 0.5 - n/2) * voxel_size_A``). :func:`render_potential` rasterises it on any grid,
or on a band of rows of that grid (so a large fine grid can be built and projected a slab
of Y at a time, since ``v = y`` in every view).

Every component is box-integrated, not point-sampled: a voxel holds the *mean* potential
over its volume. Gaussians are integrated exactly (separable erf differences); membrane
profiles and the ice slab edges analytically or with the 1/12 voxel-variance rule of
docs/conventions.md ("Geometry"). The mean potential is what a projection of the voxel grid
integrates, and it does not alias when atoms are far smaller than the voxel.

Physical constants and model choices
------------------------------------
- Atoms: the electron scattering factor of each element is Peng's 5-Gaussian fit
  (International Tables C 4.3.2.2, gemmi's ``c4322`` table),
  ``f_e(s) = sum a_i exp(-b_i s^2)``. Its real-space potential is
  ``V(r) = C sum a_i (4 pi / b_i)^1.5 exp(-4 pi^2 r^2 / b_i)`` with
  ``C = h^2 / (2 pi m0 e) = 47.878 V A^2``, whose volume integral is exactly
  ``C f_e(0)`` (V A^3). Each atom is one isotropic Gaussian with that integral and the
  same second moment as the 5-Gaussian sum blurred by the atom's B-factor:
  ``sigma^2 = (sum a_i b_i / sum a_i + B) / (8 pi^2)``. At tomographic voxel sizes
  (>= 2 A on the fine grid) the radial detail of an atom is far below the grid
  resolution; the integral (the DC term) is exact and the matched second moment makes
  the Fourier transform exact to second order in ``s``, so the difference to the full
  5-Gaussian sum is negligible, at a fraction of the cost.
- An atomic model is rasterised this way once per grid spacing, in its own frame; each
  placed copy is then resampled trilinearly from that map (rotation + translation),
  which conserves its integral (to < 0.01 %) and adds a blur of about half a fine voxel
  rms: 10x faster than rasterising 10^5 atoms per copy, invisible after binning.
- Hydrogens are used when the model has them; most deposited models do not, which
  lowers the protein potential by roughly 10 %.
- Ice: vitreous ice has a mean inner potential of about 4.5 V. Every object displaces
  ice by its excluded volume: heavy atoms 17.2 A^3 each (protein at 1.35 g/cm^3),
  procedural objects by construction; the ice fraction of a voxel is
  ``1 - clip(occupancy, 0, 1)``.
- Membranes: a lipid bilayer is a 50 A thick shell of hydrocarbon tails (4.0 V, below
  ice) with two head-group peaks (Gaussians, sigma 4 A) 38 A apart: from the
  electron-density ratios of headgroups, tails and water (0.45, 0.30, 0.334 e/A^3)
  scaled to the ice potential, with the head peaks raised from 6.1 to 7.5 V for the
  proteins a real membrane carries (an effective profile, not a lipid-only one).
- Procedural particles and filaments are sums of Gaussians of protein (7.0 V at full
  occupancy).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = [
    "ICE_POTENTIAL_V",
    "POTENTIAL_CONSTANT_VA2",
    "PROTEIN_POTENTIAL_V",
    "GaussianCloud",
    "Grid",
    "PlacementWarning",
    "Specimen",
    "Vesicle",
    "actin_filament",
    "build_specimen",
    "default_counts",
    "load_structure",
    "procedural_particle",
    "random_rotation",
    "render_potential",
]

#: h^2 / (2 pi m0 e) in V A^2: converts an electron scattering factor (A) to potential.
POTENTIAL_CONSTANT_VA2 = 47.878
#: Mean inner potential of vitreous ice, V.
ICE_POTENTIAL_V = 4.5
#: Mean potential of protein at full occupancy (procedural objects), V.
PROTEIN_POTENTIAL_V = 7.0
#: Lipid bilayer: tail (hydrocarbon) potential, head-group peak potential, V. The head
#: peaks are raised above the pure-lipid value (~6.1 V) to stand for the membrane proteins
#: and phosphate-rich head groups that make real membranes so visible.
TAIL_POTENTIAL_V = 4.0
HEAD_POTENTIAL_V = 7.5
#: Bilayer geometry, A: half-thickness of the hydrophobic+head region, head peak offset
#: from the mid-plane, head peak width (sigma), edge softness (sigma).
BILAYER_HALF_THICKNESS_A = 25.0
HEAD_OFFSET_A = 19.0
HEAD_SIGMA_A = 4.0
BILAYER_EDGE_SIGMA_A = 1.5
#: Excluded volume of a heavy (non-hydrogen) atom, A^3, and the smoothing of the excluded
#: volume map (sigma, A) that closes the gaps between atoms inside a molecule.
ATOM_VOLUME_A3 = 17.2
ATOM_OCCUPANCY_SIGMA_A = 1.5
#: B-factors outside this range (A^2) are clipped: deposited models contain zeros and
#: refinement artefacts of several hundred.
_B_RANGE_A2 = (0.0, 300.0)
#: Gaussians are integrated out to this many sigmas each side (weights renormalised).
_TRUNCATE_SIGMAS = 3.0
#: Entries (Gaussians x window voxels) per vectorised chunk: bounds temporary memory.
_CHUNK_ENTRIES = 2_000_000


@dataclass(frozen=True)
class Grid:
    """A voxel grid centred on the origin.

    Parameters
    ----------
    shape_zyx: voxel counts (nz, ny, nx).
    voxel_size_A: edge of one voxel, A.
    """

    shape_zyx: tuple[int, int, int]
    voxel_size_A: float

    def to_edge(self, points_zyx_A: np.ndarray) -> np.ndarray:
        """Positions in "edge" index units: voxel ``i`` spans ``[i, i + 1)``. [N, 3]"""
        shape = np.asarray(self.shape_zyx, dtype=np.float64)
        return np.asarray(points_zyx_A, dtype=np.float64) / self.voxel_size_A + shape / 2.0

    def centres_A(self, axis: int) -> np.ndarray:
        """Voxel centres along one axis (0 = z, 1 = y, 2 = x), A. [n]"""
        n = self.shape_zyx[axis]
        return (np.arange(n, dtype=np.float64) + 0.5 - n / 2.0) * self.voxel_size_A


@dataclass
class GaussianCloud:
    """Isotropic Gaussians in a local frame (A), placed once per pose.

    Each Gaussian carries a potential (its volume integral, V A^3) and an excluded volume
    (A^3, the ice it displaces), each with its own width.

    Parameters
    ----------
    centres_zyx_A: local centres. [N, 3]
    sigma_A: potential widths. [N]
    potential_VA3: volume integral of each Gaussian's potential. [N]
    volume_A3: excluded volume of each Gaussian. [N]
    occupancy_sigma_A: widths of the excluded-volume Gaussians. [N]
    name: what it is (structure file stem, "procedural", "actin").
    radius_A: bounding radius around the local origin, for placement.
    use_map: rasterise the cloud once per grid spacing in its own frame and resample
        that map (trilinear) for each pose, instead of rasterising every Gaussian of
        every pose: for atomic models (10^5 atoms), ~10x faster, at the price of a blur
        of about half a voxel (rms) of the fine grid.
    poses: list of ``(rotation_zyx, translation_zyx_A)``: a 3x3 rotation acting on
        (z, y, x) column vectors and the position of the local origin.
    """

    centres_zyx_A: np.ndarray
    sigma_A: np.ndarray
    potential_VA3: np.ndarray
    volume_A3: np.ndarray
    occupancy_sigma_A: np.ndarray
    name: str = "gaussians"
    radius_A: float = 0.0
    poses: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    use_map: bool = False
    _maps: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Vesicle:
    """A spherical lipid-bilayer vesicle: centre and mid-plane radius, A."""

    centre_zyx_A: np.ndarray
    radius_A: float


@dataclass
class Specimen:
    """Everything in the ice layer, in A, centred on the tomogram box.

    Parameters
    ----------
    clouds: Gaussian objects (molecules, procedural particles, filaments).
    vesicles: lipid vesicles.
    ice_thickness_A: thickness of the ice slab, centred on z = 0; 0 for none.
    ice_potential_V: potential of the ice.
    """

    clouds: list[GaussianCloud] = field(default_factory=list)
    vesicles: list[Vesicle] = field(default_factory=list)
    ice_thickness_A: float = 0.0
    ice_potential_V: float = ICE_POTENTIAL_V


# --------------------------------------------------------------------------- objects


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation matrix acting on (z, y, x) vectors. [3, 3]"""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    r_xyz = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    return r_xyz[::-1, ::-1].copy()  # P R P with P the axis reversal: (x,y,z) -> (z,y,x)


@functools.lru_cache(maxsize=64)
def _element_table(atomic_number: int) -> tuple[float, float]:
    """(f_e(0) in A, mean b in A^2) of Peng's electron scattering factor for an element."""
    import gemmi

    coefs = np.asarray(gemmi.Element(int(atomic_number)).c4322.get_coefs(), dtype=np.float64)
    a, b = coefs[:5], coefs[5:]
    if not np.isfinite(a).all() or a.sum() <= 0:  # unknown element: treat as carbon
        return _element_table(6)
    return float(a.sum()), float((a * b).sum() / a.sum())


@functools.lru_cache(maxsize=8)
def _load_structure_cached(path: str, mtime_ns: int) -> GaussianCloud:
    try:
        import gemmi
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("reading atomic models needs the gemmi package "
                         "(pip install gemmi)", path) from exc
    try:
        st = gemmi.read_structure(path)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"cannot be read as an atomic model (mmCIF/PDB): {exc}",
                         path) from exc
    st.remove_waters()
    if len(st) == 0:
        raise InputError("contains no model", path)
    xyz, z_num, b_iso, occ = [], [], [], []
    for chain in st[0]:
        for residue in chain:
            for atom in residue:
                p = atom.pos
                xyz.append((p.z, p.y, p.x))
                z_num.append(atom.element.atomic_number)
                b_iso.append(atom.b_iso)
                occ.append(atom.occ)
    if not xyz:
        raise InputError("contains no atoms", path)
    zyx = np.asarray(xyz, dtype=np.float64)
    z_num = np.asarray(z_num, dtype=np.int64)
    table = {int(z): _element_table(int(z)) if z > 0 else _element_table(6)
             for z in np.unique(z_num)}
    f0 = np.array([table[int(z)][0] for z in z_num])
    mean_b = np.array([table[int(z)][1] for z in z_num])
    b = np.clip(np.nan_to_num(np.asarray(b_iso, dtype=np.float64)), *_B_RANGE_A2)
    occupancy = np.clip(np.asarray(occ, dtype=np.float64), 0.0, 1.0)
    potential = POTENTIAL_CONSTANT_VA2 * f0 * occupancy
    sigma = np.sqrt((mean_b + b) / (8.0 * np.pi ** 2))
    heavy = z_num != 1
    volume = np.where(heavy, ATOM_VOLUME_A3, 0.0) * occupancy
    occ_sigma = np.sqrt(sigma ** 2 + ATOM_OCCUPANCY_SIGMA_A ** 2)
    centre = (zyx * potential[:, None]).sum(axis=0) / potential.sum()
    zyx -= centre
    radius = float(np.sqrt((zyx ** 2).sum(axis=1)).max() + 2.0 * occ_sigma.max())
    return GaussianCloud(zyx, sigma, potential, volume, occ_sigma,
                         name=Path(path).name.split(".")[0], radius_A=radius)


def load_structure(path: str | PathLike) -> GaussianCloud:
    """Read an atomic model (mmCIF or PDB, optionally gzipped) as a Gaussian cloud.

    Waters are removed; the first model is used; atoms are centred on their
    potential-weighted centroid. Each atom is one Gaussian (see the module notes).
    The returned cloud has no poses; copy it (``dataclasses.replace``) to place it.

    Raises
    ------
    InputError: the file is missing or not an atomic model, or gemmi is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("atomic model not found", p)
    cloud = _load_structure_cached(str(p.resolve()), p.stat().st_mtime_ns)
    # A new cloud (its own poses) sharing the arrays and the per-voxel-size map cache.
    return GaussianCloud(cloud.centres_zyx_A, cloud.sigma_A, cloud.potential_VA3,
                         cloud.volume_A3, cloud.occupancy_sigma_A, name=cloud.name,
                         radius_A=cloud.radius_A, use_map=True, _maps=cloud._maps)


def _gaussian_volume_A3(peak_fraction: np.ndarray, sigma_A: np.ndarray) -> np.ndarray:
    """Integral of a Gaussian of the given peak value and width."""
    return peak_fraction * (2.0 * np.pi) ** 1.5 * sigma_A ** 3


def procedural_particle(rng: np.random.Generator, radius_A: float) -> GaussianCloud:
    """A blobby "macromolecule": 4-16 overlapping protein Gaussians of varied sizes.

    The Gaussians are scaled so that their summed occupancy peaks at 0.8-1: the particle
    is protein (7 V) at its densest, with soft edges and lobes of varied density.

    Parameters
    ----------
    rng: random generator (consumed).
    radius_A: rough radius of the particle.
    """
    n = int(rng.integers(4, 17))
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    centres = direction * (0.55 * radius_A * rng.uniform(0.0, 1.0, size=(n, 1)) ** (1 / 3))
    sigma = radius_A * rng.uniform(0.18, 0.35, size=n)
    peak = rng.uniform(0.5, 1.0, size=n)
    # Scale so that the summed occupancy peaks at 0.8-1 (protein, not denser).
    d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    summed = (peak[None, :] * np.exp(-0.5 * d2 / sigma[None, :] ** 2)).sum(axis=1)
    peak *= rng.uniform(0.8, 1.0) / summed.max()
    volume = _gaussian_volume_A3(peak, sigma)
    radius = float(np.max(np.linalg.norm(centres, axis=1) + 2.0 * sigma))
    return GaussianCloud(centres, sigma, PROTEIN_POTENTIAL_V * volume, volume, sigma.copy(),
                         name="procedural", radius_A=radius)


#: Actin: rise per subunit (A), twist per subunit (deg), subunit centre radius and size (A).
_ACTIN_RISE_A = 27.5
_ACTIN_TWIST_DEG = -166.7
_ACTIN_RADIUS_A = 20.0
_ACTIN_SIGMA_A = 14.0
_ACTIN_PEAK = 0.8
ACTIN_FILAMENT_RADIUS_A = _ACTIN_RADIUS_A + 2.5 * _ACTIN_SIGMA_A
_FILAMENT_MIN_LENGTH_A = 8 * _ACTIN_RISE_A


def actin_filament(length_A: float, start_phase_rad: float = 0.0) -> GaussianCloud:
    """An actin-like filament along local +x: one Gaussian subunit per 27.5 A rise.

    Subunits follow a one-start helix (twist -166.7 deg), which looks like the two-start
    long-pitch double helix of F-actin. Centred on the local origin.
    """
    n = max(1, round(length_A / _ACTIN_RISE_A))
    k = np.arange(n, dtype=np.float64)
    phase = start_phase_rad + np.deg2rad(_ACTIN_TWIST_DEG) * k
    x = (k - (n - 1) / 2.0) * _ACTIN_RISE_A
    centres = np.stack([_ACTIN_RADIUS_A * np.sin(phase), _ACTIN_RADIUS_A * np.cos(phase), x],
                       axis=1)
    sigma = np.full(n, _ACTIN_SIGMA_A)
    volume = _gaussian_volume_A3(np.full(n, _ACTIN_PEAK), sigma)
    return GaussianCloud(centres, sigma, PROTEIN_POTENTIAL_V * volume, volume, sigma.copy(),
                         name="actin", radius_A=float(length_A / 2 + ACTIN_FILAMENT_RADIUS_A))


# --------------------------------------------------------------------------- rendering


def _rasterise_gaussians(outs: list[np.ndarray], row0: int, grid: Grid,
                         centres_zyx_A: np.ndarray, sigma_A: np.ndarray,
                         integrals: list[np.ndarray]) -> None:
    """Add box-integrated isotropic Gaussians to each of ``outs`` (mean value per voxel).

    All outputs share the centres and widths; ``integrals[c]`` is each Gaussian's volume
    integral (value x A^3) in ``outs[c]``. The outputs hold rows
    ``row0 .. row0 + out.shape[1]`` of ``grid``. Each Gaussian is integrated over the
    voxels within 3 sigma, the per-axis weights renormalised to keep its integral exact.
    """
    keep = np.zeros(len(sigma_A), dtype=bool)
    for integral in integrals:
        keep |= integral != 0
    if not keep.any():
        return
    p = grid.to_edge(centres_zyx_A[keep])
    p[:, 1] -= row0
    s = sigma_A[keep] / grid.voxel_size_A
    ws = [integral[keep] / grid.voxel_size_A ** 3 for integral in integrals]
    shape = np.asarray(outs[0].shape)
    reach = _TRUNCATE_SIGMAS * s
    inside = np.all((p + reach[:, None] > 0) & (p - reach[:, None] < shape), axis=1)
    if not inside.any():
        return
    window = (np.ceil(2.0 * reach[inside]) + 1).astype(np.int64)
    order = np.argsort(window, kind="stable")
    p, s, reach, window = p[inside][order], s[inside][order], reach[inside][order], window[order]
    ws = [w[inside][order] for w in ws]
    from scipy.special import erf

    start = 0
    n = len(s)
    while start < n:
        # Chunks share one window size (the largest in the chunk; sorted ascending).
        stop = min(n, start + max(1, _CHUNK_ENTRIES // int(window[start]) ** 3))
        win = int(window[stop - 1])
        stop = min(stop, start + max(1, _CHUNK_ENTRIES // win ** 3))
        pc, sc = p[start:stop], s[start:stop]
        # Voxels first .. first + win - 1 cover [p - reach, p + reach] for every member.
        first = np.floor(pc - reach[start:stop, None]).astype(np.int64)
        offs = np.arange(win + 1)
        weights = []
        for axis in range(3):
            edges = first[:, axis, None] + offs[None, :]
            cdf = erf((edges - pc[:, axis, None]) / (np.sqrt(2.0) * sc[:, None]))
            wa = np.diff(cdf, axis=1)
            weights.append(wa / wa.sum(axis=1, keepdims=True))
        # Accumulate over the chunk's whole index range (volume borders included, so no
        # per-entry mask), then add the part inside the volume.
        lo = first.min(axis=0)
        hi = first.max(axis=0) + win
        box = hi - lo
        v_lo = np.maximum(lo, 0)
        v_hi = np.minimum(hi, shape)
        if np.any(v_hi <= v_lo):
            start = stop
            continue
        base = ((first[:, 0] - lo[0]) * box[1] + (first[:, 1] - lo[1])) * box[2] \
            + (first[:, 2] - lo[2])
        table = ((offs[:win, None, None] * box[1] + offs[None, :win, None]) * box[2]
                 + offs[None, None, :win]).ravel()
        flat = (base[:, None] + table[None, :]).ravel()
        unit = (weights[0][:, :, None, None] * weights[1][:, None, :, None]
                * weights[2][:, None, None, :]).reshape(len(sc), -1)
        for out, w in zip(outs, ws):
            wc = w[start:stop]
            if not wc.any():
                continue
            acc = np.bincount(flat, weights=(unit * wc[:, None]).ravel(),
                              minlength=int(np.prod(box))).reshape(box)
            out[v_lo[0]:v_hi[0], v_lo[1]:v_hi[1], v_lo[2]:v_hi[2]] += acc[
                v_lo[0] - lo[0]:v_hi[0] - lo[0], v_lo[1] - lo[1]:v_hi[1] - lo[1],
                v_lo[2] - lo[2]:v_hi[2] - lo[2]].astype(out.dtype)
        start = stop


def _cloud_map(cloud: GaussianCloud, voxel_size_A: float, reach_A: float,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Potential and excluded-volume maps of a cloud in its own frame (cached). [n, n, n]"""
    key = round(float(voxel_size_A), 9)
    if key not in cloud._maps:
        n = 2 * int(np.ceil(reach_A / voxel_size_A)) + 4  # even: origin on a voxel corner
        local = Grid((n, n, n), float(voxel_size_A))
        pot = np.zeros(local.shape_zyx, dtype=np.float32)
        occ = np.zeros_like(pot)
        _rasterise_gaussians([pot], 0, local, cloud.centres_zyx_A, cloud.sigma_A,
                             [cloud.potential_VA3])
        _rasterise_gaussians([occ], 0, local, cloud.centres_zyx_A, cloud.occupancy_sigma_A,
                             [cloud.volume_A3])
        cloud._maps[key] = (pot, occ)
    return cloud._maps[key]


def _resample_cloud_map(potential: np.ndarray, occupancy: np.ndarray, row0: int, grid: Grid,
                        cloud: GaussianCloud, rotation: np.ndarray, translation: np.ndarray,
                        reach_A: float) -> None:
    """Add one pose of a cloud by trilinear resampling of its cached maps."""
    from scipy.ndimage import map_coordinates

    pot_map, occ_map = _cloud_map(cloud, grid.voxel_size_A, reach_A)
    n_map = pot_map.shape[0]
    t = np.asarray(translation, dtype=np.float64)
    ranges = []
    for axis in range(3):
        pos = grid.centres_A(axis)
        lo = int(np.searchsorted(pos, t[axis] - reach_A))
        hi = int(np.searchsorted(pos, t[axis] + reach_A))
        if axis == 1:
            lo, hi = max(lo, row0), min(hi, row0 + potential.shape[1])
        lo, hi = max(lo, 0), min(hi, grid.shape_zyx[axis])
        if hi <= lo:
            return
        ranges.append((lo, hi, pos[lo:hi] - t[axis]))
    (z0, z1, dz), (y0, y1, dy), (x0, x1, dx) = ranges
    rel = np.stack(np.meshgrid(dz, dy, dx, indexing="ij"), axis=0).reshape(3, -1)
    # Local coordinates: R^T (world - t); then map index units (voxel i centred at i).
    coords = np.asarray(rotation, dtype=np.float64).T @ rel
    coords = coords / grid.voxel_size_A + (n_map / 2.0 - 0.5)
    box = (z1 - z0, y1 - y0, x1 - x0)
    sl = (slice(z0, z1), slice(y0 - row0, y1 - row0), slice(x0, x1))
    for out, m in ((potential, pot_map), (occupancy, occ_map)):
        sampled = map_coordinates(m, coords, order=1, mode="constant", cval=0.0,
                                  prefilter=False)
        out[sl] += sampled.reshape(box).astype(out.dtype)


def _smooth_slab(d_A: np.ndarray, half_A: float, sigma_A: float) -> np.ndarray:
    """Indicator of ``|d| < half`` convolved with a Gaussian of width ``sigma``."""
    from scipy.special import erf

    k = 1.0 / (np.sqrt(2.0) * sigma_A)
    return 0.5 * (erf((half_A - d_A) * k) + erf((half_A + d_A) * k))


def _rasterise_vesicle(potential: np.ndarray, occupancy: np.ndarray, row0: int, grid: Grid,
                       vesicle: Vesicle) -> None:
    """Add a bilayer shell: tails and occupancy as a smoothed slab, heads as Gaussians.

    Box integration is approximated by widening every profile by the voxel's variance
    along the membrane normal, ``voxel^2 / 12`` (the pixel-area rule of docs/conventions.md).
    """
    vox = grid.voxel_size_A
    extra = vox ** 2 / 12.0
    edge_sigma = np.sqrt(BILAYER_EDGE_SIGMA_A ** 2 + extra)
    head_sigma = np.sqrt(HEAD_SIGMA_A ** 2 + extra)
    head_amp = (HEAD_POTENTIAL_V - TAIL_POTENTIAL_V) * HEAD_SIGMA_A / head_sigma
    reach = BILAYER_HALF_THICKNESS_A + 4.0 * max(edge_sigma, head_sigma)
    r_out = vesicle.radius_A + reach
    r_in = max(0.0, vesicle.radius_A - reach)
    c = np.asarray(vesicle.centre_zyx_A, dtype=np.float64)
    ranges = []
    for axis in range(3):
        n = grid.shape_zyx[axis]
        pos = grid.centres_A(axis)
        lo = int(np.searchsorted(pos, c[axis] - r_out))
        hi = int(np.searchsorted(pos, c[axis] + r_out))
        if axis == 1:
            lo, hi = max(lo, row0), min(hi, row0 + potential.shape[1])
        lo, hi = max(lo, 0), min(hi, n)
        if hi <= lo:
            return
        ranges.append((lo, hi, pos[lo:hi] - c[axis]))
    (z0, z1, dz), (y0, y1, dy), (x0, x1, dx) = ranges
    ryx2 = dy[:, None] ** 2 + dx[None, :] ** 2
    for k in range(z1 - z0):
        r = np.sqrt(dz[k] ** 2 + ryx2)
        near = (r > r_in) & (r < r_out)
        if not near.any():
            continue
        d = r[near] - vesicle.radius_A
        occ = _smooth_slab(d, BILAYER_HALF_THICKNESS_A, edge_sigma)
        heads = head_amp * (np.exp(-0.5 * ((d - HEAD_OFFSET_A) / head_sigma) ** 2)
                            + np.exp(-0.5 * ((d + HEAD_OFFSET_A) / head_sigma) ** 2))
        pot_plane = potential[z0 + k, y0 - row0:y1 - row0, x0:x1]
        occ_plane = occupancy[z0 + k, y0 - row0:y1 - row0, x0:x1]
        pot_plane[near] += (TAIL_POTENTIAL_V * occ + heads).astype(potential.dtype)
        occ_plane[near] += occ.astype(occupancy.dtype)


def _ice_fraction_z(grid: Grid, thickness_A: float) -> np.ndarray:
    """Fraction of each z-layer of voxels inside the slab ``|z| < thickness/2``. [nz]"""
    nz = grid.shape_zyx[0]
    half = 0.5 * thickness_A / grid.voxel_size_A
    lo_edge = np.arange(nz, dtype=np.float64) - nz / 2.0
    return np.clip(np.minimum(lo_edge + 1, half) - np.maximum(lo_edge, -half), 0.0, 1.0)


def render_potential(specimen: Specimen, grid: Grid, rows: tuple[int, int] | None = None,
                     ) -> np.ndarray:
    """Rasterise a specimen's potential (mean volts per voxel) on a grid.

    Parameters
    ----------
    specimen: the scene.
    grid: where to rasterise; objects outside it are cut off.
    rows: ``(y0, y1)``: only this band of Y rows of the grid (default all).

    Returns
    -------
    Potential in volts, float32: objects plus the ice they do not displace.
    [nz, y1 - y0, nx]
    """
    nz, ny, nx = grid.shape_zyx
    y0, y1 = (0, ny) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= y0 < y1 <= ny:
        raise ValueError(f"rows {rows} outside the grid's {ny} rows")
    potential = np.zeros((nz, y1 - y0, nx), dtype=np.float32)
    occupancy = np.zeros_like(potential)
    # Y extent of the band in A (with a margin for the Gaussians' tails).
    band_lo = (y0 - ny / 2.0) * grid.voxel_size_A
    band_hi = (y1 - ny / 2.0) * grid.voxel_size_A
    for cloud in specimen.clouds:
        if cloud.sigma_A.size == 0:
            continue
        shared = np.array_equal(cloud.sigma_A, cloud.occupancy_sigma_A)
        reach = cloud.radius_A + _TRUNCATE_SIGMAS * max(cloud.sigma_A.max(),
                                                        cloud.occupancy_sigma_A.max())
        for rotation, translation in cloud.poses:
            ty = float(np.asarray(translation)[1])
            if ty + reach < band_lo or ty - reach > band_hi:
                continue  # bounding sphere off the band
            if cloud.use_map:
                _resample_cloud_map(potential, occupancy, y0, grid, cloud, rotation,
                                    translation, reach)
                continue
            world = cloud.centres_zyx_A @ np.asarray(rotation).T + np.asarray(translation)
            if shared:
                _rasterise_gaussians([potential, occupancy], y0, grid, world, cloud.sigma_A,
                                     [cloud.potential_VA3, cloud.volume_A3])
            else:
                _rasterise_gaussians([potential], y0, grid, world, cloud.sigma_A,
                                     [cloud.potential_VA3])
                _rasterise_gaussians([occupancy], y0, grid, world, cloud.occupancy_sigma_A,
                                     [cloud.volume_A3])
    for vesicle in specimen.vesicles:
        _rasterise_vesicle(potential, occupancy, y0, grid, vesicle)
    if specimen.ice_thickness_A > 0 and specimen.ice_potential_V != 0:
        ice = (specimen.ice_potential_V
               * _ice_fraction_z(grid, specimen.ice_thickness_A)).astype(np.float32)
        np.clip(occupancy, 0.0, 1.0, out=occupancy)
        potential += ice[:, None, None] * (1.0 - occupancy)
    return potential


# --------------------------------------------------------------------------- placement


class PlacementWarning(UserWarning):
    """Not every requested object fitted in the ice without overlapping another."""


#: Procedural particle radii (A), vesicle mid-plane radii (A), filament lengths as a
#: fraction of the box width, and the number of procedural species.
PARTICLE_RADIUS_RANGE_A = (40.0, 110.0)
VESICLE_RADIUS_RANGE_A = (120.0, 300.0)
_VESICLE_MIN_RADIUS_A = 80.0
_FILAMENT_LENGTH_RANGE = (0.5, 1.0)  # of the box width (or of 100 nm if larger)
_FILAMENT_MIN_SPAN_A = 1000.0
_FILAMENT_MAX_ELEVATION_DEG = 10.0
_N_PROCEDURAL_SPECIES = 3
_MAX_TRIES = 300


def _vesicle_radius_cap_A(ice_half_A: float) -> float:
    """Largest vesicle radius that fits in the ice (membrane and a margin included)."""
    return min(VESICLE_RADIUS_RANGE_A[1], ice_half_A - BILAYER_HALF_THICKNESS_A - 5.0)


class _Placer:
    """Rejection sampling of non-overlapping spheres in the ice layer."""

    def __init__(self, rng: np.random.Generator, box_zyx_A: tuple[float, float, float],
                 ice_thickness_A: float, half_width_x_A: float, isolated: bool) -> None:
        self.rng = rng
        self.box = np.asarray(box_zyx_A, dtype=np.float64)
        self.ice_half = 0.5 * ice_thickness_A
        if isolated:  # the specimen is cut to the box, in Z too
            self.ice_half = min(self.ice_half, 0.5 * self.box[0])
        self.half_x = half_width_x_A
        self.isolated = isolated
        self.centres: list[np.ndarray] = []
        self.radii: list[float] = []

    def free(self, centres: np.ndarray, radius: float) -> bool:
        if not self.centres:
            return True
        have = np.asarray(self.centres)
        r = np.asarray(self.radii)
        d = np.linalg.norm(centres[:, None, :] - have[None, :, :], axis=2)
        return bool(np.all(d >= radius + r[None, :]))

    def claim(self, centres: np.ndarray, radius: float) -> None:
        for c in centres:
            self.centres.append(c)
            self.radii.append(radius)

    def z_range(self, radius: float) -> float:
        return max(0.0, self.ice_half - radius)

    def sample_centre(self, radius: float, where: str) -> np.ndarray | None:
        """A centre for a sphere: ``where`` is "box" (centre in the box) or "outside"."""
        rng = self.rng
        half_y, half_box_x = 0.5 * self.box[1], 0.5 * self.box[2]
        if self.isolated:  # whole object inside the box
            lim_y, lim_x = half_y - radius, half_box_x - radius
            if lim_y < 0 or lim_x < 0:
                return None
            x = rng.uniform(-lim_x, lim_x)
            y = rng.uniform(-lim_y, lim_y)
        else:
            y = rng.uniform(-half_y, half_y)
            if where == "box":
                x = rng.uniform(-half_box_x, half_box_x)
            else:
                x = rng.choice([-1.0, 1.0]) * rng.uniform(half_box_x, self.half_x)
        zr = self.z_range(radius)
        return np.array([rng.uniform(-zr, zr), y, x])


def _filament_frame(direction_xyz: np.ndarray) -> np.ndarray:
    """Rotation (on zyx vectors) taking local +x to ``direction``."""
    d = direction_xyz / np.linalg.norm(direction_xyz)
    side = np.array([-d[1], d[0], 0.0])
    side = side / np.linalg.norm(side) if np.linalg.norm(side) > 1e-9 else np.array([0, 1.0, 0])
    up = np.cross(d, side)
    r_xyz = np.stack([d, side, up], axis=1)
    return r_xyz[::-1, ::-1].copy()


def build_specimen(rng: np.random.Generator, box_zyx_A: tuple[float, float, float],
                   ice_thickness_A: float, *, half_width_x_A: float | None = None,
                   structures: tuple[str | PathLike, ...] = (), n_particles: int = 10,
                   n_vesicles: int = 2, n_filaments: int = 2,
                   best_effort: tuple[str, ...] = ()) -> tuple[Specimen, dict]:
    """Populate an ice layer with vesicles, filaments and particles at random.

    Objects do not overlap (bounding spheres; filaments as chains of spheres) and lie
    inside the ice. Placed in turn: vesicles, filaments, particles. The counts are those
    whose centre lies in the box; when the specimen
    extends beyond the box (``half_width_x_A`` larger than half the box width), the
    region outside it gets the same number density of objects.

    Parameters
    ----------
    rng: random generator (consumed).
    box_zyx_A: size of the tomogram box, A.
    ice_thickness_A: ice slab thickness, A (centred on z = 0).
    half_width_x_A: half the lateral extent of the specimen along X, A; None: the
        specimen is the box ("isolated": every object lies wholly inside it).
    structures: atomic model files; each particle is one of them at random. Empty: three
        procedural particle species.
    n_particles, n_vesicles, n_filaments: objects with their centre in the box.
    best_effort: kinds ("particles", "vesicles", "filaments") whose count is only a
        target (an automatic default): no warning when fewer fit.

    Returns
    -------
    (specimen, info): info lists what was placed (and what could not be).

    Warns
    -----
    PlacementWarning: some objects centred in the box found no room after 300 tries
        each (they are left out and counted in ``info["not_placed"]``). Objects of the
        surroundings that find no room are only counted, in
        ``info["not_placed_outside_box"]``.
    """
    box = np.asarray(box_zyx_A, dtype=np.float64)
    isolated = half_width_x_A is None or half_width_x_A <= 0.5 * box[2]
    half_x = 0.5 * box[2] if isolated else float(half_width_x_A)
    placer = _Placer(rng, tuple(box), ice_thickness_A, half_x, isolated)
    ratio = 0.0 if isolated else (half_x - 0.5 * box[2]) / (0.5 * box[2])
    specimen = Specimen(ice_thickness_A=float(ice_thickness_A))
    info: dict = {"vesicles": [], "filaments": [], "particles": [], "not_placed": {},
                  "not_placed_outside_box": {}}

    def counts(n: int) -> list[str]:
        extra = int(np.round(n * ratio))
        return ["box"] * int(n) + ["outside"] * extra

    # Vesicles first (the largest), then filaments, then particles.
    r_cap = _vesicle_radius_cap_A(placer.ice_half)
    missed = {"box": 0, "outside": 0}
    for where in counts(n_vesicles):
        if r_cap < _VESICLE_MIN_RADIUS_A:
            missed[where] += 1
            continue
        for _ in range(_MAX_TRIES):
            radius = rng.uniform(min(VESICLE_RADIUS_RANGE_A[0], r_cap), r_cap)
            bound = radius + BILAYER_HALF_THICKNESS_A + 5.0
            c = placer.sample_centre(bound, where)
            if c is not None and placer.free(c[None], bound):
                placer.claim(c[None], bound)
                specimen.vesicles.append(Vesicle(c, float(radius)))
                info["vesicles"].append({"centre_zyx_A": c.tolist(), "radius_A": radius,
                                         "in_box": where == "box"})
                break
        else:
            missed[where] += 1
    info["not_placed"]["vesicles"] = missed["box"]
    info["not_placed_outside_box"]["vesicles"] = missed["outside"]

    missed = {"box": 0, "outside": 0}
    r_fil = ACTIN_FILAMENT_RADIUS_A
    for where in counts(n_filaments):
        for _ in range(_MAX_TRIES):
            c = placer.sample_centre(r_fil, where)
            if c is None:
                break
            phi = rng.uniform(0.0, 2.0 * np.pi)
            length = rng.uniform(*_FILAMENT_LENGTH_RANGE) * max(box[2], _FILAMENT_MIN_SPAN_A)
            d_xy = np.array([np.cos(phi), np.sin(phi)])
            if isolated:  # both ends inside the box
                lim = np.array([0.5 * box[2], 0.5 * box[1]]) - r_fil
                pos = np.array([c[2], c[1]])
                with np.errstate(divide="ignore"):
                    t = np.min(np.where(np.abs(d_xy) > 1e-9,
                                        (lim - np.sign(d_xy) * pos) / np.abs(d_xy), np.inf))
                length = min(length, 2.0 * t)
            if length < _FILAMENT_MIN_LENGTH_A:
                continue
            room = placer.z_range(r_fil) - abs(c[0])
            max_elev = min(np.deg2rad(_FILAMENT_MAX_ELEVATION_DEG),
                           np.arcsin(np.clip(room / (0.5 * length), 0.0, 1.0)))
            elev = rng.uniform(-max_elev, max_elev)
            direction = np.array([np.cos(elev) * d_xy[0], np.cos(elev) * d_xy[1],
                                  np.sin(elev)])  # xyz
            s = np.arange(-0.5 * length, 0.5 * length + r_fil, r_fil)
            chain = c[None, :] + s[:, None] * direction[::-1][None, :]
            if placer.free(chain, r_fil):
                placer.claim(chain, r_fil)
                cloud = actin_filament(length, rng.uniform(0.0, 2.0 * np.pi))
                cloud.poses.append((_filament_frame(direction), c))
                specimen.clouds.append(cloud)
                info["filaments"].append({"centre_zyx_A": c.tolist(), "length_A": length,
                                          "direction_zyx": direction[::-1].tolist(),
                                          "in_box": where == "box"})
                break
        else:
            missed[where] += 1
            continue
        if c is None:
            missed[where] += 1
    info["not_placed"]["filaments"] = missed["box"]
    info["not_placed_outside_box"]["filaments"] = missed["outside"]

    if structures:
        species = [load_structure(path) for path in structures]
    else:
        species = [procedural_particle(rng, rng.uniform(*PARTICLE_RADIUS_RANGE_A))
                   for _ in range(_N_PROCEDURAL_SPECIES)]
    missed = {"box": 0, "outside": 0}
    for where in counts(n_particles):
        k = int(rng.integers(len(species)))
        cloud = species[k]
        for _ in range(_MAX_TRIES):
            c = placer.sample_centre(cloud.radius_A, where)
            if c is None:
                break
            if placer.free(c[None], cloud.radius_A):
                placer.claim(c[None], cloud.radius_A)
                rotation = random_rotation(rng)
                cloud.poses.append((rotation, c))
                info["particles"].append({"species": k, "name": cloud.name,
                                          "centre_zyx_A": c.tolist(),
                                          "rotation_zyx": rotation.tolist(),
                                          "in_box": where == "box"})
                break
        else:
            missed[where] += 1
            continue
        if c is None:
            missed[where] += 1
    info["not_placed"]["particles"] = missed["box"]
    info["not_placed_outside_box"]["particles"] = missed["outside"]
    short = {k: v for k, v in info["not_placed"].items() if v and k not in best_effort}
    if short:
        warnings.warn(
            "no room (without overlaps, inside the ice) for "
            + ", ".join(f"{v} {k}" for k, v in short.items())
            + "; the box holds fewer objects than asked for", PlacementWarning,
            stacklevel=2)
    specimen.clouds.extend(cl for cl in species if cl.poses)
    info["species"] = [{"name": cl.name, "radius_A": cl.radius_A,
                        "n_gaussians": int(cl.sigma_A.size)} for cl in species]
    return specimen, info


#: Default number densities per A^2 of box area (particles, vesicles, filaments), and the
#: typical bounding radius of a procedural particle they were set for.
_DEFAULT_DENSITY_PER_A2 = (1.0 / 1.0e5, 1.0 / 8.0e5, 1.0 / 8.0e5)
_PROCEDURAL_RADIUS_A = 80.0


def default_counts(box_yx_A: tuple[float, float], ice_thickness_A: float | None = None,
                   particle_radius_A: float | None = None) -> tuple[int, int, int]:
    """Particles, vesicles and filaments for a box of this area when none are given.

    One particle per 1000 nm^2 and one vesicle and one filament per 8000 nm^2, at least
    one of each: 16 particles, 2 vesicles and 2 filaments in a 128 x 128 box of 10 A
    pixels; no filaments in a box narrower than 44 nm. Particles larger than the
    procedural ones (bounding radius ~8 nm) are fewer,
    by the ratio of their cross-sections: 5 ribosomes (16 nm) in that box. No vesicles
    when the ice is too thin to hold the smallest one (22 nm).
    """
    area = float(box_yx_A[0]) * float(box_yx_A[1])
    counts = [max(1, int(np.round(area * d))) for d in _DEFAULT_DENSITY_PER_A2]
    if particle_radius_A is not None and particle_radius_A > _PROCEDURAL_RADIUS_A:
        counts[0] = max(1, int(np.round(counts[0] * (_PROCEDURAL_RADIUS_A
                                                     / particle_radius_A) ** 2)))
    if ice_thickness_A is not None and _vesicle_radius_cap_A(0.5 * ice_thickness_A) \
            < _VESICLE_MIN_RADIUS_A:
        counts[1] = 0
    if min(box_yx_A) < 2 * _FILAMENT_MIN_LENGTH_A:
        counts[2] = 0
    return counts[0], counts[1], counts[2]
