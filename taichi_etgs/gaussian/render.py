"""Rendering the Gaussian model, over the Taichi kernels: projections into tilt views
(:func:`project_gaussians`) and voxelisation on any grid (:func:`voxelize_gaussians`), each
with its backward pass (gradients of a loss with respect to the raw parameters).

The formulas, the footprint cuts and how the work is split between threads are in the
kernels' modules (:mod:`taichi_etgs.kernels.gaussian_projector`,
:mod:`taichi_etgs.kernels.voxelizer`); this module turns a
:class:`~taichi_etgs.gaussian.params.GaussianParams` into the kernels' plain arrays, picks
the kernels for the running arch, and cuts big problems into chunks that bound memory.
Taichi's autodiff is not used (docs/architecture.md, "Kernels"): each function has its
explicit backward.

Functions take numpy arrays of any float type and return numpy arrays in the working
precision (float32, or float64 when the runtime was started with ``precision="f64"``).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .. import runtime
from .._ti import ti
from ..kernels.gaussian_projector import (
    CUTOFF_SIGMA,
    N_ACC,
    N_G,
    N_P,
    PIXEL_VARIANCE,
    forward_rows_kernel,
    forward_scatter_kernel,
    order_kernel,
    pair_table_kernel,
    prepare_kernel,
    project_backward_kernel,
    raw_grads_kernel,
)
from ..kernels.voxelizer import voxelize_backward_kernel, voxelize_forward_kernel
from .params import GaussianParams, normalize_quats

__all__ = [
    "CUTOFF_SIGMA",
    "MAX_PAIRS_PER_CHUNK",
    "PIXEL_VARIANCE",
    "VOXEL_CUTOFF_SIGMA",
    "ProjectionGrads",
    "project_gaussians",
    "project_gaussians_backward",
    "voxelize_gaussians",
    "voxelize_gaussians_backward",
]

#: The voxeliser's footprints are cut at this Mahalanobis distance (the projector's is
#: :data:`CUTOFF_SIGMA`; :mod:`taichi_etgs.kernels.voxelizer` says why they differ).
VOXEL_CUTOFF_SIGMA = 4.0
#: (Gaussian, z slice) pairs per voxeliser launch; bounds the host and device memory used.
MAX_PAIRS_PER_CHUNK = 1 << 22
#: Float64 bytes the CPU forward pass's per-(view, Gaussian) table may take; views are
#: processed in chunks that keep it below this.
_PAIR_TABLE_BYTES = 64 << 20
#: Parallel iterations the CPU forward pass aims at: 512 per thread for 16 threads.
_ROWS_FOR_THREADS = 512 * 16


# ----------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------

def _work_dtype() -> type:
    """numpy dtype of Taichi's default float in the running configuration."""
    cfg = runtime.ensure_initialized()
    return np.float64 if cfg.precision == "f64" else np.float32


def _param_arrays(params: GaussianParams, dtype: type) -> tuple[np.ndarray, ...]:
    """The four raw arrays, C-contiguous in ``dtype`` (for kernel arguments)."""
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in
                 (params.means_xyz, params.log_scales, params.quats_wxyz, params.density_raw))


#: Which kernels run: None picks by the running arch ("cpu": per-row gather and float64
#: recurrences; "gpu": per-(view, Gaussian) scatter). Tests set it to check both on a CPU.
_FORCE_PATH: str | None = None


def _cpu_path() -> bool:
    if _FORCE_PATH is not None:
        return _FORCE_PATH == "cpu"
    return runtime.ensure_initialized().arch == "cpu"


def _row_list_parts(n_rows: int) -> int:
    """Pieces to cut each row's Gaussian list into, so that the CPU forward pass has work
    for many threads: Taichi's CPU backend splits a parallel loop into one chunk per
    thread of at least 512 iterations, so ``n_rows`` (views x detector rows) alone can
    leave threads idle (a single 512-row view would run on one thread). The count depends
    on the problem size only, never on the thread count, so neither does the result."""
    return int(min(16, max(1, -(-_ROWS_FOR_THREADS // max(n_rows, 1)))))


def _tilt_trig(tilts_deg: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    theta = np.deg2rad(np.asarray(tilts_deg, dtype=np.float64).reshape(-1))
    return (np.ascontiguousarray(np.cos(theta), dtype=dtype),
            np.ascontiguousarray(np.sin(theta), dtype=dtype))


@dataclass
class ProjectionGrads:
    """What :func:`project_gaussians_backward` returns.

    grads: dL/d(raw parameters), same fields and shapes as the parameters (means_xyz
        [N, 3], log_scales [N, 3], quats_wxyz [N, 4], density_raw [N]).
    uv_grad_norm_sum: sum over the views where a Gaussian is visible of the norm of
        ``dL/d(u, v)`` of its projected centre, in detector pixel units (the densification
        statistic; no W/2, H/2 scaling). [N]
    visible_views: number of views in which at least one pixel of the Gaussian's footprint
        lies on the detector. [N]
    """

    grads: GaussianParams
    uv_grad_norm_sum: np.ndarray
    visible_views: np.ndarray


def _check_tilts(tilts_deg: np.ndarray) -> np.ndarray:
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if tilts.ndim != 1:
        raise ValueError(f"tilts_deg must be 1-D [n_tilts]; got shape {tilts.shape}")
    return tilts


def _kernel_shifts(shifts_uv: np.ndarray | None, n_tilts: int, dtype: type
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(du, dv) per view as the kernels take them, zeros when None. ([n], [n])"""
    if shifts_uv is None:
        zeros = np.zeros(n_tilts, dtype=dtype)
        return zeros, zeros
    shifts = np.asarray(shifts_uv, dtype=np.float64)
    if shifts.shape != (n_tilts, 2) or not np.all(np.isfinite(shifts)):
        raise ValueError(f"shifts_uv must be finite [n_tilts={n_tilts}, 2]; "
                         f"got shape {shifts.shape}")
    return (np.ascontiguousarray(shifts[:, 0], dtype=dtype),
            np.ascontiguousarray(shifts[:, 1], dtype=dtype))


def project_gaussians(params: GaussianParams, tilts_deg: np.ndarray, ny: int,
                      nu: int, shifts_uv: np.ndarray | None = None) -> np.ndarray:
    """Render N Gaussians into tilt views (line integrals along the beam, pixel-averaged).

    Parameters
    ----------
    params: raw Gaussian parameters (N Gaussians).
    tilts_deg: tilt angles in degrees. [n_tilts]
    ny: detector rows (along the tilt axis Y).
    nu: detector columns.
    shifts_uv: each view's projection moved by ``(du, dv)`` pixels towards +u / +v
        (higher column / row), rendered exactly: a view's residual misalignment carried
        by the model instead of resampling the view. [n_tilts, 2]

    Returns
    -------
    views: projections in the working precision (float32, or float64 under an f64
        runtime). [n_tilts, ny, nu]
    """
    tilts = _check_tilts(tilts_deg)
    dtype = _work_dtype()
    shift_u, shift_v = _kernel_shifts(shifts_uv, tilts.size, dtype)
    ny, nu = int(ny), int(nu)
    views = np.zeros((tilts.size, ny, nu), dtype=dtype)
    if params.n == 0 or views.size == 0:
        return views
    cos_t, sin_t = _tilt_trig(tilts, dtype)
    raw = _param_arrays(params, dtype)
    gauss = np.empty((params.n, N_G), dtype=dtype)
    rows = np.empty((params.n, 2), dtype=np.int32)
    if not _cpu_path():
        unused = np.zeros(1, dtype=np.int32)
        prepare_kernel(*raw, CUTOFF_SIGMA, ny, 0, ny, 0.0, 0.0, gauss, rows, unused, unused,
                       0)
        forward_scatter_kernel(gauss, cos_t, sin_t, shift_u, shift_v, views, CUTOFF_SIGMA)
        return views

    # CPU: per-row lists of the Gaussians (sorted by first row), then one thread per
    # (view, row) renders the row from a table of the Gaussians' projections. Each view's
    # move along v is split into whole rows, which choose the list a row reads, and a
    # fraction, which the lists cover: each Gaussian is listed in every row it covers at
    # some fraction, rows off the detector included where whole-row moves bring them on.
    moves = shift_v.astype(np.float64)
    whole = np.rint(moves).astype(np.int64)
    fraction = moves - whole
    row0 = -int(whole.max())
    n_rows = ny + int(whole.max() - whole.min())
    list_row = np.ascontiguousarray(-whole - row0, dtype=np.int32)
    first_row_count = np.zeros(n_rows + 1, dtype=np.int32)
    row_count_diff = np.zeros(n_rows + 1, dtype=np.int32)
    prepare_kernel(*raw, CUTOFF_SIGMA, ny, row0, n_rows, min(float(fraction.min()), 0.0),
                   max(float(fraction.max()), 0.0), gauss, rows, first_row_count,
                   row_count_diff, 1)
    first_start = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(first_row_count[:n_rows], out=first_start[1:])
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.cumsum(row_count_diff[:n_rows]), out=offsets[1:])
    n_on = int(first_start[-1])  # Gaussians that some view shows on its detector
    if n_on == 0:
        return views
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{params.n} Gaussians cover {offsets[-1]} detector rows in all, "
                         f"more than this projector indexes; project fewer at a time")
    order = np.empty(n_on, dtype=np.int32)
    entries = np.empty(int(offsets[-1]), dtype=np.int32)
    offsets = offsets.astype(np.int32)
    order_kernel(rows, first_start[:-1].astype(np.int32), offsets[:-1].copy(), order,
                  entries)
    gauss = gauss[order]  # in sorted order: the pair tables read it sequentially
    n_views = tilts.size
    chunk = int(min(n_views, max(1, _PAIR_TABLE_BYTES // (n_on * N_P * 8))))
    chunk = -(-n_views // -(-n_views // chunk))  # equal chunks
    pairs = np.empty(chunk * n_on * N_P, dtype=np.float64)
    row_info = np.empty(2 * n_on, dtype=np.float64)
    flat_views = views.reshape(-1)
    for t0 in range(0, n_views, chunk):
        m = min(chunk, n_views - t0)
        pair_table_kernel(gauss, cos_t, sin_t, shift_u, t0, m, pairs, row_info)
        chunk_v = np.ascontiguousarray(shift_v[t0:t0 + m])
        chunk_rows = np.ascontiguousarray(list_row[t0:t0 + m])
        n_parts = _row_list_parts(m * ny)
        if n_parts == 1:
            forward_rows_kernel(pairs, row_info, chunk_v, chunk_rows, offsets, entries, m, 1,
                                 flat_views, n_views, t0, ny, nu, CUTOFF_SIGMA)
        else:
            parts = np.zeros((n_parts, m, ny, nu), dtype=dtype)
            forward_rows_kernel(pairs, row_info, chunk_v, chunk_rows, offsets, entries, m,
                                 n_parts, parts.reshape(-1), m, 0, ny, nu, CUTOFF_SIGMA)
            np.sum(parts, axis=0, out=views[t0:t0 + m])
    return views


def project_gaussians_backward(params: GaussianParams, tilts_deg: np.ndarray,
                               grad_views: np.ndarray, shifts_uv: np.ndarray | None = None
                               ) -> ProjectionGrads:
    """Gradients of a loss through :func:`project_gaussians`.

    Parameters
    ----------
    params: raw Gaussian parameters (N Gaussians), as given to the forward call.
    tilts_deg: tilt angles in degrees. [n_tilts]
    grad_views: dL/dviews. [n_tilts, ny, nu]
    shifts_uv: the views' shifts, as given to the forward call. [n_tilts, 2]

    Returns
    -------
    ProjectionGrads with dL/d(raw parameters) and the per-Gaussian image-space position
    gradient statistics, in the working precision.
    """
    tilts = _check_tilts(tilts_deg)
    grad_views = np.asarray(grad_views)
    if grad_views.ndim != 3 or grad_views.shape[0] != tilts.size:
        raise ValueError(f"grad_views must be [n_tilts={tilts.size}, ny, nu]; "
                         f"got shape {grad_views.shape}")
    dtype = _work_dtype()
    n = params.n
    if n == 0:
        return ProjectionGrads(params.zeros_like().astype(dtype), np.zeros(0, dtype),
                               np.zeros(0, np.int32))
    acc = np.zeros((n, N_ACC), dtype=dtype)
    uv_norm = np.zeros(n, dtype=dtype)
    visible = np.zeros(n, dtype=np.int32)
    raw = _param_arrays(params, dtype)
    if grad_views.size:
        cos_t, sin_t = _tilt_trig(tilts, dtype)
        cpu = _cpu_path()
        wide = cpu or dtype == np.float64
        project_backward_kernel(*raw, cos_t, sin_t, *_kernel_shifts(shifts_uv, tilts.size, dtype),
                                 np.ascontiguousarray(grad_views, dtype=dtype),
                                 CUTOFF_SIGMA, acc, uv_norm, visible,
                                 ti.f64 if wide else ti.f32, cpu)
    grads = GaussianParams(np.empty((n, 3), dtype), np.empty((n, 3), dtype),
                           np.empty((n, 4), dtype), np.empty(n, dtype))
    raw_grads_kernel(raw[1], raw[2], raw[3], acc, grads.means_xyz, grads.log_scales,
                     grads.quats_wxyz, grads.density_raw)
    return ProjectionGrads(grads, uv_norm, visible)


# ----------------------------------------------------------------------------------------
# Voxelisation
# ----------------------------------------------------------------------------------------

def _grid_start(shape_zyx: Sequence[int], voxel_size: float,
                origin_xyz: Sequence[float] | None) -> tuple[float, float, float]:
    """Centre (x, y, z) of voxel (0, 0, 0)."""
    nz, ny, nx = shape_zyx
    ox, oy, oz = (0.0, 0.0, 0.0) if origin_xyz is None else (float(v) for v in origin_xyz)
    return (ox + (0.5 - nx / 2.0) * voxel_size, oy + (0.5 - ny / 2.0) * voxel_size,
            oz + (0.5 - nz / 2.0) * voxel_size)


def _slice_pairs(params: GaussianParams, nz: int, z0: float, h: float, blur: float,
                 cutoff: float, max_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(Gaussian index, z slice) pairs, in chunks of at most ``max_pairs`` (int32 arrays).

    A Gaussian covers slices whose centre is within ``cutoff`` standard deviations of its
    blurred marginal along z; one Gaussian never spans chunks unless it alone exceeds
    ``max_pairs`` (impossible when ``nz <= max_pairs``).
    """
    # Variance along z: sum_k R[2, k]^2 s_k^2 (third row of gaussians.quats_to_rotmats).
    q = normalize_quats(np.asarray(params.quats_wxyz, np.float64))
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rz = np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    var_z = np.sum(rz * rz * np.exp(2.0 * np.asarray(params.log_scales, np.float64)), -1)
    half = cutoff * np.sqrt(var_z + blur)
    mu_z = np.asarray(params.means_xyz[:, 2], np.float64)
    lo = np.clip((mu_z - half - z0) / h, -1.0, nz + 1.0)
    hi = np.clip((mu_z + half - z0) / h, -2.0, nz + 1.0)
    k0 = np.maximum(np.ceil(lo), 0).astype(np.int64)
    k1 = np.minimum(np.floor(hi), nz - 1).astype(np.int64)
    counts = np.maximum(k1 - k0 + 1, 0)
    idx = np.flatnonzero(counts)
    if idx.size == 0:
        return
    counts, k0 = counts[idx], k0[idx]
    ends = np.cumsum(counts)
    start = 0
    while start < idx.size:
        before = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, before + max_pairs, side="right")), start + 1)
        c = counts[start:stop]
        pair_g = np.repeat(idx[start:stop], c).astype(np.int32)
        offsets = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        pair_z = (np.repeat(k0[start:stop], c) + offsets).astype(np.int32)
        yield pair_g, pair_z
        start = stop


def _check_grid(shape_zyx: Sequence[int], voxel_size: float) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape_zyx)
    if len(shape) != 3 or min(shape) < 0:
        raise ValueError(f"shape_zyx must be three non-negative sizes; got {shape_zyx}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0; got {voxel_size}")
    return shape  # type: ignore[return-value]


def voxelize_gaussians(params: GaussianParams, shape_zyx: Sequence[int],
                       voxel_size: float = 1.0,
                       origin_xyz: Sequence[float] | None = None) -> np.ndarray:
    """Sample the Gaussian field (box-averaged over each voxel) on a regular grid.

    Parameters
    ----------
    params: raw Gaussian parameters (N Gaussians), centres in model voxel units.
    shape_zyx: grid size (nz, ny, nx).
    voxel_size: grid spacing in model voxel units (< 1 samples finer, > 1 coarser).
    origin_xyz: model coordinates (x, y, z) of the grid's centre; None for (0, 0, 0),
        the centred grid of the tomogram.

    Returns
    -------
    volume: mean density per voxel, in the working precision. [nz, ny, nx]
    """
    nz, ny, nx = _check_grid(shape_zyx, voxel_size)
    dtype = _work_dtype()
    volume = np.zeros((nz, ny, nx), dtype=dtype)
    if params.n == 0 or volume.size == 0:
        return volume
    x0, y0, z0 = _grid_start((nz, ny, nx), voxel_size, origin_xyz)
    blur = voxel_size * voxel_size / 12.0
    raw = _param_arrays(params, dtype)
    for pair_g, pair_z in _slice_pairs(params, nz, z0, voxel_size, blur, VOXEL_CUTOFF_SIGMA,
                                       MAX_PAIRS_PER_CHUNK):
        voxelize_forward_kernel(*raw, pair_g, pair_z, volume, x0, y0, z0, voxel_size, blur,
                                 VOXEL_CUTOFF_SIGMA)
    return volume


def voxelize_gaussians_backward(params: GaussianParams, grad_volume: np.ndarray,
                                voxel_size: float = 1.0,
                                origin_xyz: Sequence[float] | None = None) -> GaussianParams:
    """Gradients of a loss through :func:`voxelize_gaussians`.

    Parameters
    ----------
    params: raw Gaussian parameters (N Gaussians), as given to the forward call.
    grad_volume: dL/dvolume, on the forward call's grid. [nz, ny, nx]
    voxel_size, origin_xyz: as given to the forward call.

    Returns
    -------
    dL/d(raw parameters), same fields and shapes as ``params``, in the working precision.
    """
    grad_volume = np.asarray(grad_volume)
    if grad_volume.ndim != 3:
        raise ValueError(f"grad_volume must be [nz, ny, nx]; got shape {grad_volume.shape}")
    nz, ny, nx = _check_grid(grad_volume.shape, voxel_size)
    dtype = _work_dtype()
    n = params.n
    grads = GaussianParams(np.zeros((n, 3), dtype), np.zeros((n, 3), dtype),
                           np.zeros((n, 4), dtype), np.zeros(n, dtype))
    if n == 0:
        return grads
    acc = np.zeros((n, N_ACC), dtype=dtype)
    raw = _param_arrays(params, dtype)
    if grad_volume.size:
        x0, y0, z0 = _grid_start((nz, ny, nx), voxel_size, origin_xyz)
        blur = voxel_size * voxel_size / 12.0
        gvol = np.ascontiguousarray(grad_volume, dtype=dtype)
        for pair_g, pair_z in _slice_pairs(params, nz, z0, voxel_size, blur,
                                           VOXEL_CUTOFF_SIGMA, MAX_PAIRS_PER_CHUNK):
            voxelize_backward_kernel(*raw, pair_g, pair_z, gvol, x0, y0, z0, voxel_size,
                                      blur, VOXEL_CUTOFF_SIGMA, acc)
    raw_grads_kernel(raw[1], raw[2], raw[3], acc, grads.means_xyz, grads.log_scales,
                      grads.quats_wxyz, grads.density_raw)
    return grads
