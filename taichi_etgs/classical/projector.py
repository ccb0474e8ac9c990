"""Voxel projector and back-projector: numpy in, numpy out, in the geometry of
docs/conventions.md.

The kernels (``kernels/voxel_projector.py``) implement Joseph's ray-driven model and its
exact transpose. :class:`VoxelProjector` keeps the per-view geometry and, on a GPU, the
work buffers on the device, for iterative methods that call it many times.
"""

from __future__ import annotations

import numpy as np

from .. import runtime
from ..errors import InputError

__all__ = ["VoxelProjector", "forward_project", "back_project"]


def _check_tilts(tilts_deg: np.ndarray) -> np.ndarray:
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    if tilts.size == 0:
        raise InputError("no tilt angles given")
    if not np.all(np.isfinite(tilts)):
        raise InputError("tilt angles contain NaN or Inf")
    return tilts


class VoxelProjector:
    """Matched forward/back projection for one tilt geometry and one volume shape.

    Parameters
    ----------
    tilts_deg: tilt of each view, degrees. [n_tilts]
    shape_zyx: volume shape (nz, ny, nx).
    n_u: detector width in pixels (default nx); detector rows = ny.

    Internal arrays use the kernel layouts ``(ny, nz, nx)`` and ``(ny, n_tilts, nu)``;
    :meth:`to_internal_views` and friends convert.
    """

    def __init__(self, tilts_deg: np.ndarray, shape_zyx: tuple[int, int, int],
                 n_u: int | None = None) -> None:
        self.config = runtime.ensure_initialized()
        self.tilts_deg = _check_tilts(tilts_deg)
        nz, ny, nx = (int(n) for n in shape_zyx)
        if min(nz, ny, nx) < 1:
            raise InputError(f"volume shape {shape_zyx} has an empty axis")
        self.shape_zyx = (nz, ny, nx)
        self.n_u = nx if n_u is None else int(n_u)
        theta = np.deg2rad(self.tilts_deg)
        cos_t = np.cos(theta).astype(np.float32)
        sin_t = np.sin(theta).astype(np.float32)
        # Computed once, in float32, from the same values both kernels see.
        self._half_width = np.maximum(np.abs(cos_t), np.abs(sin_t))
        self._cos = self._device(cos_t)
        self._sin = self._device(sin_t)
        self._half_width_dev = self._device(self._half_width)
        self._inv_half_width_dev = self._device(1.0 / self._half_width)
        self._unit_scale = self.view_scale(None)

    @property
    def n_tilts(self) -> int:
        return int(self.tilts_deg.size)

    @property
    def views_shape_internal(self) -> tuple[int, int, int]:
        return (self.shape_zyx[1], self.n_tilts, self.n_u)

    @property
    def volume_shape_internal(self) -> tuple[int, int, int]:
        nz, ny, nx = self.shape_zyx
        return (ny, nz, nx)

    def _device(self, array: np.ndarray):
        """The array itself on the CPU; a Taichi ndarray copy on a GPU."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self.config.arch == "cpu":
            return array
        from .._ti import ti

        out = ti.ndarray(ti.f32, array.shape)
        out.from_numpy(array)
        return out

    def empty_volume(self):
        """A zeroed work volume in the internal layout, on the compute device."""
        return self._device(np.zeros(self.volume_shape_internal, np.float32))

    def empty_views(self):
        """A zeroed work sinogram in the internal layout, on the compute device."""
        return self._device(np.zeros(self.views_shape_internal, np.float32))

    def device(self, array_internal: np.ndarray):
        """Move an internal-layout numpy array to the compute device."""
        return self._device(array_internal)

    @staticmethod
    def host(array) -> np.ndarray:
        """A numpy copy (or the array itself on the CPU) of a device array."""
        return array if isinstance(array, np.ndarray) else array.to_numpy()

    def forward_internal(self, volume_yzx, views_ytu) -> None:
        """views_ytu = A volume_yzx, both device arrays in internal layout."""
        from ..kernels.voxel_projector import forward_project_kernel

        forward_project_kernel(volume_yzx, views_ytu, self._cos, self._sin)

    def view_scale(self, view_weights: np.ndarray | None):
        """Device array of the per-view factors the back-projection kernel takes."""
        weights = np.ones(self.n_tilts) if view_weights is None else np.asarray(view_weights)
        return self._device((weights.reshape(self.n_tilts) / self._half_width)
                            .astype(np.float32))

    def back_internal(self, views_ytu, volume_yzx, view_scale=None) -> None:
        """volume_yzx = A^T diag(view_weights) views_ytu, both device arrays.

        ``view_scale`` comes from :meth:`view_scale` (default: unit weights).
        """
        from ..kernels.voxel_projector import back_project_kernel

        scale = self._unit_scale if view_scale is None else view_scale
        back_project_kernel(views_ytu, volume_yzx, self._cos, self._sin, self._half_width_dev,
                            self._inv_half_width_dev, scale)

    def forward(self, volume_zyx: np.ndarray) -> np.ndarray:
        """Project a volume. [nz, ny, nx] -> [n_tilts, ny, n_u]"""
        volume_zyx = np.asarray(volume_zyx)
        if volume_zyx.shape != self.shape_zyx:
            raise InputError(f"volume shape {volume_zyx.shape} does not match the projector's "
                             f"{self.shape_zyx}")
        volume = self._device(volume_zyx.transpose(1, 0, 2))
        views = self.empty_views()
        self.forward_internal(volume, views)
        return np.ascontiguousarray(self.host(views).transpose(1, 0, 2))

    def back(self, views: np.ndarray, view_weights: np.ndarray | None = None) -> np.ndarray:
        """Back-project views (the adjoint of :meth:`forward`). [n_tilts, ny, n_u] -> [nz, ny, nx]

        ``view_weights`` multiplies each view (e.g. its angular interval for WBP). [n_tilts]
        """
        views = np.asarray(views)
        expected = (self.n_tilts, self.shape_zyx[1], self.n_u)
        if views.shape != expected:
            raise InputError(f"views of shape {views.shape} do not match the projector's "
                             f"{expected} (n_tilts, ny, n_u)")
        sino = self._device(views.transpose(1, 0, 2))
        volume = self.empty_volume()
        self.back_internal(sino, volume, None if view_weights is None
                           else self.view_scale(view_weights))
        return np.ascontiguousarray(self.host(volume).transpose(1, 0, 2))


def forward_project(volume_zyx: np.ndarray, tilts_deg: np.ndarray,
                    n_u: int | None = None) -> np.ndarray:
    """Line integrals of a volume at each tilt, in voxel-length units.

    Parameters
    ----------
    volume_zyx: the volume. [nz, ny, nx]
    tilts_deg: tilt angles in degrees. [n_tilts]
    n_u: detector width in pixels (default nx).

    Returns
    -------
    Projections, float32. [n_tilts, ny, n_u]
    """
    volume_zyx = np.asarray(volume_zyx, dtype=np.float32)
    if volume_zyx.ndim != 3:
        raise InputError(f"expected a 3D volume (nz, ny, nx), got shape {volume_zyx.shape}")
    return VoxelProjector(tilts_deg, volume_zyx.shape, n_u).forward(volume_zyx)


def back_project(views: np.ndarray, tilts_deg: np.ndarray, nz: int, nx: int | None = None,
                 view_weights: np.ndarray | None = None) -> np.ndarray:
    """Adjoint of :func:`forward_project`: smear each view back along its rays.

    Parameters
    ----------
    views: projections. [n_tilts, ny, n_u]
    tilts_deg: tilt angles in degrees. [n_tilts]
    nz: thickness of the volume in voxels.
    nx: width of the volume (default n_u).
    view_weights: factor for each view. [n_tilts]

    Returns
    -------
    Volume, float32. [nz, ny, nx]
    """
    views = np.asarray(views, dtype=np.float32)
    if views.ndim != 3:
        raise InputError(f"expected views (n_tilts, ny, n_u), got shape {views.shape}")
    n_tilts, ny, n_u = views.shape
    shape = (int(nz), ny, n_u if nx is None else int(nx))
    return VoxelProjector(tilts_deg, shape, n_u).back(views, view_weights)
