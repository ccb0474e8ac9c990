"""Tomogram sizes, and whether a run fits in memory and on disk, checked before any work."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError

__all__ = ["check_resources", "output_shape", "run_size", "volume_shape", "warn_shape"]

log = logging.getLogger("taichi_etgs.pipeline")


def volume_shape(ny: int, nx: int, thickness: int, width: int | None,
                 source=None) -> tuple[int, int, int]:
    """The tomogram's (z, y, x) from the binned image size, the thickness and the width."""
    if width is not None and width > nx:
        raise InputError(f"the stack is {nx} pixels wide (after binning) but --width asks for "
                         f"{width}; reconstruct at most {nx} wide or bin less", source)
    if thickness > 4 * nx:
        raise InputError(f"--thickness {thickness} is over 4x the image width {nx}: check the "
                         "binning (thickness is in binned voxels)")
    return (int(thickness), int(ny), int(nx if width is None else width))


def warn_shape(shape: tuple[int, int, int], session) -> None:
    """Warn about a tomogram thicker than it is wide (a binning mistake, usually)."""
    thickness, _, width = shape
    if thickness > width:
        session.warn(f"--thickness {thickness} is larger than the tomogram width {width}: "
                     "specimens are slabs thinner than they are wide, so check the binning "
                     "(thickness is in binned voxels); reconstructing anyway")


def output_shape(shape, voxel_size: float | None, pixel: float) -> tuple[int, int, int]:
    """The written tomogram's shape at ``voxel_size`` A (None: the reconstruction's)."""
    if voxel_size is None:
        return tuple(shape)
    factor = voxel_size / pixel
    return tuple(max(1, round(n / factor)) for n in shape)


def run_size(method: str, n_tilts: int, ny: int, nx: int, shape, binning: int, **extra):
    """A :class:`~taichi_etgs.resources.RunSize` for a tomogram of ``shape``."""
    from ..resources import RunSize

    return RunSize(method=method, n_tilts=n_tilts, ny=ny, nx=nx, thickness=shape[0],
                   width=shape[2], binning=binning, **extra)


def check_resources(size, folders: list[Path], final: bool, advice: str | None = None) -> None:
    """Refuse a run that will not fit (memory, disk); log the estimate on the final check."""
    from ..resources import available_memory_bytes, format_bytes
    from ..resources import check_resources as check

    estimate = check(size, [f if str(f) else Path(".") for f in folders], advice=advice)
    if final:
        available = available_memory_bytes()
        log.info("memory: this run needs %s; %s available", estimate.describe(),
                 format_bytes(available) if available is not None else "unknown")
