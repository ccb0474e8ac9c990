"""Procedural phantom: an ice slab with vesicles, filaments and blobby particles.

No input files needed (``taichi-etgs demo`` uses it). The phantom is the same kind of
specimen the simulator builds (:mod:`taichi_etgs.simulation.specimen`), rasterised directly on
the requested grid and cut to it: positive density (volts), ice included.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .specimen import Grid, build_specimen, default_counts, render_potential

__all__ = ["make_phantom"]


def make_phantom(shape_zyx: tuple[int, int, int], seed: int = 0, *,
                 voxel_size_A: float = 10.0, n_particles: int | None = None,
                 n_vesicles: int | None = None, n_filaments: int | None = None,
                 ice_thickness_A: float | None = None) -> np.ndarray:
    """A procedural cryo-ET specimen on a grid.

    Parameters
    ----------
    shape_zyx: volume shape (nz, ny, nx); Z is the ice thickness direction.
    seed: random seed; the same seed gives the same phantom.
    voxel_size_A: voxel size, A; sets the physical scale of the objects (particles
        80-220 A across, vesicles 240-600 A, actin filaments 7 nm thick).
    n_particles, n_vesicles, n_filaments: object counts; None: about as many as
        :func:`taichi_etgs.simulation.specimen.default_counts` gives for the box area, as many of
        them as fit (whole, without overlaps).
    ice_thickness_A: ice slab thickness (centred); None: the whole box thickness.

    Returns
    -------
    Mean potential per voxel, volts, float32 (ice 4.5 V, protein up to ~7 V,
    vacuum 0). [nz, ny, nx]

    Raises
    ------
    InputError: a non-positive size or voxel size.

    Warns
    -----
    PlacementWarning: explicit counts that do not fit (objects are left out).
    """
    shape = tuple(int(n) for n in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"phantom shape must be three positive sizes (z, y, x), got "
                         f"{shape_zyx}")
    if not voxel_size_A > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size_A}")
    nz, ny, nx = shape
    box_A = (nz * voxel_size_A, ny * voxel_size_A, nx * voxel_size_A)
    ice_A = box_A[0] if ice_thickness_A is None else float(ice_thickness_A)
    auto = default_counts(box_A[1:], min(ice_A, box_A[0]))
    specimen, _ = build_specimen(
        np.random.default_rng(seed), box_A, ice_A,
        n_particles=auto[0] if n_particles is None else int(n_particles),
        n_vesicles=auto[1] if n_vesicles is None else int(n_vesicles),
        n_filaments=auto[2] if n_filaments is None else int(n_filaments),
        best_effort=tuple(kind for kind, n in (("particles", n_particles),
                                                ("vesicles", n_vesicles),
                                                ("filaments", n_filaments)) if n is None))
    return render_potential(specimen, Grid(shape, float(voxel_size_A)))
