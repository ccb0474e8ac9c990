"""Memory and disk a run needs, estimated from its sizes and checked before any heavy work.

A reconstruction of a large tilt series can take hours; running out of memory (the kernel
kills the process without a word) or disk (the tomogram cannot be written) at the end is
the worst way to learn that it was too big. The CLI therefore estimates, from the binned
stack size, the tomogram size and the Gaussian budget, what a run will hold in memory at
its peak and what it will write, and refuses up front, naming the option that brings the
run within reach (``--binning``, ``--thickness``, ``--max-gaussians``).

The estimates are deliberately simple, slightly pessimistic sums of the big arrays each
method allocates (float32 unless said otherwise), documented in
:func:`estimate_memory_bytes`; they cover host memory only (on a GPU the volumes also
live in device memory). Set the environment variable ``TAICHI_ETGS_NO_RESOURCE_CHECK=1``
to skip the check.

This module imports neither Taichi nor the kernels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from .errors import InputError

__all__ = [
    "METHODS",
    "MemoryEstimate",
    "RunSize",
    "available_memory_bytes",
    "check_resources",
    "estimate_memory_bytes",
    "format_bytes",
    "free_disk_bytes",
    "output_bytes",
]

METHODS = ("info", "wbp", "sirt", "reconstruct")
#: Python, numpy, scipy, Taichi's runtime and its compiled kernels.
BASE_BYTES = 300 * 2**20
#: Per Gaussian at float32: parameters (11 numbers), two Adam moments, gradients, the
#: rollback snapshot of all three, the projector's per-Gaussian tables and accumulators,
#: densification statistics and temporaries: about 770 bytes, rounded up.
BYTES_PER_GAUSSIAN = 1024
#: The CPU projector's per-(view, Gaussian) table is capped at this (kernels).
PROJECTOR_TABLE_BYTES = 64 * 2**20
#: Preparing one whole view (slabbed runs: phase flip, exposure filter): float64 copies,
#: the padded view and its spectrum, the filter.
BYTES_PER_VIEW_PIXEL = 64
#: Bytes per Gaussian in a state file: parameters and two Adam moments, float32.
STATE_BYTES_PER_GAUSSIAN = 3 * 11 * 4
MRC_HEADER_BYTES = 1024
#: Environment variable that turns the check off (the estimate can be wrong).
SKIP_ENV = "TAICHI_ETGS_NO_RESOURCE_CHECK"
_F32 = 4
# cgroup limits at or above this mean "no limit" (v1 reports 2^63 rounded to pages).
_NO_LIMIT = 2**60
# Binning factors tried, in order, when suggesting how to make a run fit.
_SUGGESTED_FACTORS = (2, 3, 4, 6, 8)


@dataclass(frozen=True)
class RunSize:
    """The sizes a run's memory and disk use depend on (binned pixels and voxels).

    method: "info" (reading the stack only), "wbp", "sirt" or "reconstruct".
    n_tilts: views reconstructed from.
    ny, nx: binned image size (rows along the tilt axis, detector width).
    thickness, width: tomogram NZ and NX in voxels (NY = ny).
    max_tilt_deg: largest |tilt|; sets the widened grid of SIRT and the Gaussian model.
    max_gaussians: the model's size bound (reconstruct).
    views_per_step: views rendered per step (reconstruct).
    init: what seeds a reconstruct run: "sirt", "wbp", "volume" (a tomogram file) or
        "model" (a state: a resume or a refinement, no classical reconstruction).
    output_shape_zyx: the written tomogram, when it differs from (thickness, ny, width)
        (``--voxel-size``).
    binning: the ``--binning`` that gave ny, nx (for the suggestions).
    iterations: optimisation steps (reconstruct: the saved loss history).
    slab_rows: in slabs of this many rows along Y (0: the whole at once;
        :mod:`taichi_etgs.pipeline.slabs`; reconstruct fits each slab with its overlap).
    in_memory: the tomogram stays in memory (no output file: returned whole).
    """

    method: str
    n_tilts: int
    ny: int
    nx: int
    thickness: int
    width: int
    max_tilt_deg: float = 60.0
    max_gaussians: int = 0
    views_per_step: int = 8
    init: str = "sirt"
    output_shape_zyx: tuple[int, int, int] | None = None
    binning: int = 1
    iterations: int = 0
    slab_rows: int = 0
    in_memory: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.slab_rows and self.method == "info":
            raise ValueError("slabs are for reconstructions, not info")

    @property
    def volume_shape_zyx(self) -> tuple[int, int, int]:
        return (int(self.thickness), int(self.ny), int(self.width))

    @property
    def written_shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.output_shape_zyx or self.volume_shape_zyx)

    @property
    def fov_pad(self) -> int:
        """Voxels added on each side of X by the widened grid (geometry.fov_padding)."""
        tilt = min(abs(float(self.max_tilt_deg)), 80.0)
        return int(math.ceil(0.5 * self.thickness * math.tan(math.radians(tilt))))

    def rebinned(self, factor: int) -> RunSize:
        """The same slab of specimen at ``factor`` times coarser pixels and voxels."""
        f = int(factor)

        def shrink(n: int) -> int:
            return max(1, int(n) // f)

        out = None
        if self.output_shape_zyx is not None:
            out = tuple(shrink(n) for n in self.output_shape_zyx)
        return dataclasses.replace(self, ny=shrink(self.ny), nx=shrink(self.nx),
                                   thickness=shrink(self.thickness), width=shrink(self.width),
                                   output_shape_zyx=out, binning=self.binning * f)


@dataclass
class MemoryEstimate:
    """Peak memory of a run: the total and the parts it is made of (bytes)."""

    total_bytes: int
    parts: dict[str, int]

    def describe(self) -> str:
        """``"about 3.2 GiB (tilt series 1.1 GiB, volumes 2 GiB, ...)"``."""
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items() if v)
        return f"about {format_bytes(self.total_bytes)} ({parts})"


def format_bytes(n: float) -> str:
    """A size for people: ``"38 GiB"``, ``"5.2 GiB"``, ``"640 MiB"``, ``"12 KiB"``."""
    n = float(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def estimate_memory_bytes(size: RunSize) -> MemoryEstimate:
    """Peak host memory of a run, in bytes, from the sizes alone.

    With ``S`` the binned stack (``n_tilts * ny * nx`` float32), ``V`` the tomogram,
    ``Vp`` the tomogram widened in X by :attr:`RunSize.fov_pad` on each side and ``Vo``
    the written tomogram:

    - info: S (the loaded stack; the file itself is memory-mapped and read one section
      at a time, so a stack larger than memory can be read binned).
    - wbp: 4 S (the stack, its density views, the filtered views, the projector's copy)
      and 3 V (the projector's volume, its transposed copy, the output polarity).
    - sirt: 6 S (stack, views, and the projector's measured, ray-length, work and ones
      sinograms) and 4 Vp + 2 V (volume, correction, voxel weights, ones; the result and
      its polarity).
    - reconstruct: 5 S (stack, views, normalised views, and float64 temporaries) plus the
      largest of three phases: the initialisation (a SIRT on the widened grid, 4 S + 5 Vp,
      then the octree's float64 copies, 9 Vp), the fit (1 KiB per Gaussian, the
      projector's table of at most 64 MiB, and 14 float32 images per view of a step for
      rendering and the SSIM loss) and the output (Gaussians and 3 Vo).
    - in slabs of R rows (``slab_rows``): the same for a stack and tomogram R rows high
      (reconstruct: R plus the overlap on both sides, the Gaussian budget in proportion),
      plus one whole view at a time while the views are prepared on disk
      (:data:`BYTES_PER_VIEW_PIXEL`), plus V when the tomogram is returned in memory.
    - every run: :data:`BASE_BYTES` for Python and the runtime.
    """
    rows = size.ny
    if size.slab_rows:
        from .pipeline.slabs import GAUSSIAN_OVERLAP_ROWS

        overlap = 2 * GAUSSIAN_OVERLAP_ROWS if size.method == "reconstruct" else 0
        rows = min(size.slab_rows + overlap, size.ny)
    s = size.n_tilts * rows * size.nx * _F32
    nz, ny, nx = size.volume_shape_zyx
    v = nz * rows * nx * _F32
    vp = nz * rows * (nx + 2 * size.fov_pad) * _F32
    vo = math.prod(size.written_shape_zyx) * rows // size.ny * _F32
    parts: dict[str, int] = {}
    if size.slab_rows:
        parts["one view"] = BYTES_PER_VIEW_PIXEL * size.ny * size.nx
        if size.in_memory:
            parts["tomogram"] = nz * ny * nx * _F32
    if size.method == "info":
        parts = {"tilt series": s}
    elif size.method == "wbp":
        parts.update({"tilt series": 4 * s, "volumes": 3 * v})
    elif size.method == "sirt":
        parts.update({"tilt series": 6 * s, "volumes": 4 * vp + 2 * v})
    else:
        step_views = max(1, min(size.views_per_step, size.n_tilts))
        n_max = math.ceil(size.max_gaussians * rows / size.ny)  # a slab's share
        table = min(PROJECTOR_TABLE_BYTES, n_max * step_views * 64)
        gaussians = n_max * BYTES_PER_GAUSSIAN + table
        step_images = 14 * step_views * rows * size.nx * _F32
        if size.init == "sirt":
            init = max(4 * s + 5 * vp, 9 * vp)
        elif size.init in ("wbp", "volume"):
            init = max(2 * s + 3 * vp, 9 * vp)
        else:
            init = 0
        fit = gaussians + step_images
        output = gaussians + 3 * vo
        parts = {**parts, "tilt series": 5 * s}
        phase = max(init, fit, output)
        if phase == init:
            parts["initialisation"] = init
        elif phase == fit:
            parts["Gaussians"] = gaussians
            parts["work buffers"] = step_images
        else:
            parts["Gaussians"] = gaussians
            parts["volumes"] = 3 * vo
    parts["runtime"] = BASE_BYTES
    return MemoryEstimate(total_bytes=int(sum(parts.values())), parts=parts)


def output_bytes(size: RunSize) -> int:
    """Disk a run writes at its peak: the tomogram, and for reconstruct its state file
    twice (the atomic replace holds the old and the new copy for a moment); a slabbed run
    also keeps its prepared views beside the tomogram until it ends, and a slabbed
    reconstruct its stitched tomogram until its mean is known (instead of a state)."""
    tomogram = math.prod(size.written_shape_zyx) * _F32
    total = tomogram + MRC_HEADER_BYTES
    if size.slab_rows:
        total += size.n_tilts * size.ny * size.nx * _F32
    if size.slab_rows and size.method == "reconstruct":
        return int(total + tomogram)
    if size.method == "reconstruct":
        state = (size.max_gaussians * STATE_BYTES_PER_GAUSSIAN + 8 * size.iterations
                 + size.n_tilts * 64 + 256 * 2**10)
        total += 2 * state
    return int(total)


# ----------------------------------------------------------------------------------------
# What the machine has
# ----------------------------------------------------------------------------------------

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    try:
        return int(text)
    except ValueError:
        return None  # "max": no limit


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_remaining_bytes() -> int | None:
    """Memory left under this process's cgroup limit (a batch job's allocation), if any."""
    root = Path("/sys/fs/cgroup")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    v2_paths, v1_paths = [], []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].lstrip("/")
        if parts[0] == "0" and parts[1] == "":
            v2_paths.append(root / rel)
        elif "memory" in parts[1].split(","):
            v1_paths.append(root / "memory" / rel)
    v2_paths.append(root)
    v1_paths.append(root / "memory")
    remaining: list[int] = []
    # (folders, limit file, usage file, page-cache key) for cgroup v2, then v1.
    versions = ((v2_paths, "memory.max", "memory.current", "inactive_file"),
                (v1_paths, "memory.limit_in_bytes", "memory.usage_in_bytes",
                 "total_inactive_file"))
    for folders, limit_name, usage_name, cache_key in versions:
        for folder in folders:
            limit = _read_int(folder / limit_name)
            used = _read_int(folder / usage_name)
            if limit is not None and used is not None and limit < _NO_LIMIT:
                # Page cache counts as used but is given back under pressure.
                used -= _stat_value(folder / "memory.stat", cache_key)
                remaining.append(max(0, limit - max(0, used)))
                break
    return min(remaining) if remaining else None


def available_memory_bytes() -> int | None:
    """Memory this process can still take without swapping or being killed; None: unknown.

    The smaller of the system's ``MemAvailable`` (``/proc/meminfo``; elsewhere the free
    physical pages from ``os.sysconf``) and what is left under a cgroup memory limit
    (a container's, or a batch job's allocation on a cluster).
    """
    system = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    system = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        system = None
    if system is None:
        try:
            system = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            system = None
    cgroup = _cgroup_remaining_bytes()
    known = [m for m in (system, cgroup) if m is not None and m > 0]
    return min(known) if known else None


def free_disk_bytes(folder: str | PathLike) -> int | None:
    """Free bytes on the file system holding ``folder`` (for this user); None: unknown."""
    try:
        return int(shutil.disk_usage(Path(folder) if str(folder) else Path(".")).free)
    except OSError:
        return None


# ----------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------

def _memory_advice(size: RunSize, estimate: MemoryEstimate, available: int) -> str:
    """The option(s) that bring the run under ``available`` bytes, in words."""
    advice: list[str] = []
    gaussians = estimate.parts.get("Gaussians", 0)
    if size.method == "reconstruct" and gaussians > estimate.total_bytes / 2:
        room = available - (estimate.total_bytes - gaussians) - PROJECTOR_TABLE_BYTES
        fitting = int(room // BYTES_PER_GAUSSIAN) if room > 0 else 0
        if fitting >= 1000:
            rounded = int(float(f"{fitting:.2g}"))
            if rounded > fitting:
                rounded = int(float(f"{fitting:.1g}"))
            smaller = dataclasses.replace(size, max_gaussians=rounded)
            advice.append(f"--max-gaussians {rounded} (about "
                          f"{format_bytes(estimate_memory_bytes(smaller).total_bytes)})")
    for factor in _SUGGESTED_FACTORS:
        smaller = size.rebinned(factor)
        if smaller.ny < 1 or smaller.nx < 1 or min(size.ny, size.nx) < factor:
            break
        needed = estimate_memory_bytes(smaller).total_bytes
        if needed <= available:
            if size.method == "info":
                advice.append(f"--binning {smaller.binning} (about {format_bytes(needed)})")
            else:
                advice.append(f"--binning {smaller.binning} --thickness {smaller.thickness} "
                              f"(the same slab in {factor}x coarser voxels; about "
                              f"{format_bytes(needed)})")
            break
    if size.method == "info":
        return advice[0] if advice else "a larger --binning"
    advice.append("a smaller --thickness or --width")
    if len(advice) == 1:
        return advice[0]
    return ", ".join(advice[:-1]) + " or " + advice[-1]


def check_resources(size: RunSize, output_folders: list[str | PathLike] | tuple = (), *,
                    available_memory: int | None = None, free_disk: dict | None = None,
                    advice: str | None = None) -> MemoryEstimate:
    """Refuse a run that will not fit in memory or on disk, before any heavy work.

    Parameters
    ----------
    size: what the run computes.
    output_folders: where the tomogram (first) and any other output (the state) go; the
        disk of each is checked for what goes there (:func:`output_bytes`).
    available_memory: bytes free for the run (default: :func:`available_memory_bytes`).
    free_disk: ``{folder: bytes}`` to use instead of asking the file system (tests).
    advice: what reduces the run, in words, for commands whose options differ from the
        reconstructions' (default: the ``--binning``/``--thickness``/``--max-gaussians``
        that would fit, worked out from ``size``).

    Returns
    -------
    The memory estimate (for the log).

    Raises
    ------
    InputError: the estimate exceeds the memory available (the message names the option
        that reduces it, and by how much), or an output folder's file system has less
        free space than the run writes there. Nothing is raised when
        ``TAICHI_ETGS_NO_RESOURCE_CHECK=1`` is set or the figures are unknown.
    """
    estimate = estimate_memory_bytes(size)
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return estimate
    available = available_memory_bytes() if available_memory is None else available_memory
    if available is not None and estimate.total_bytes > available:
        raise InputError(f"this run needs {estimate.describe()} of memory but "
                         f"{format_bytes(available)} are available; reduce it with "
                         f"{advice or _memory_advice(size, estimate, available)} "
                         f"(or set {SKIP_ENV}=1 to try anyway)")
    folders = [Path(f) if str(f) else Path(".") for f in output_folders]
    tomogram = math.prod(size.written_shape_zyx) * _F32 + MRC_HEADER_BYTES
    if size.method != "reconstruct":
        tomogram = output_bytes(size)
    # What goes to each file system: the tomogram to the first folder, the state (twice,
    # during its atomic replace) to the second, or to the first when it is alone.
    needs: dict[object, list] = {}
    for k, folder in enumerate(folders):
        share = tomogram if k == 0 else 0
        if size.method == "reconstruct" and (k == 1 or len(folders) == 1):
            share += output_bytes(size) - tomogram
        try:
            device: object = os.stat(folder).st_dev
        except OSError:
            device = folder
        entry = needs.setdefault(device, [folder, 0])
        entry[1] += share
    for folder, need in needs.values():
        free = None
        if free_disk is not None:
            free = free_disk.get(folder, free_disk.get(str(folder)))
        if free is None:
            free = free_disk_bytes(folder)
        if free is not None and need > free:
            raise InputError(f"the output needs about {format_bytes(need)} of disk in "
                             f"{folder} but only {format_bytes(free)} are free there; free "
                             f"some space, write elsewhere, or bin more (--binning)")
    return estimate
