"""The Gaussian model's parameters and their activations (docs/method.md, "Forward model").

A model is N anisotropic 3D Gaussians stored as *raw, unconstrained* parameters, the
quantities an optimiser updates. Every consumer (initialisation, projector, voxeliser,
densification, optimiser, state files) turns them into physical quantities through the
functions of this module, and only through them, so that one activation is applied the
same way everywhere:

- centre ``mu = means_xyz`` (no activation), centred voxel coordinates, columns (x, y, z);
- scales ``s = exp(log_scales)`` (standard deviations along the Gaussian's own axes, voxels);
- rotation ``R = R(q / |q|)`` from the quaternion ``quats_wxyz`` (w first), normalised on use;
- density ``rho = softplus(density_raw) = log(1 + exp(density_raw))``.

Covariance ``Sigma = R diag(s^2) R^T``; the field is
``f(x) = sum_i rho_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))``.

Why softplus for the density: it is positive, smooth, and close to the identity for
large values (``softplus(r) ~ r``), so a density several times the typical value neither
explodes under a step of the optimiser (as ``exp`` does) nor has a vanishing gradient (as a
sigmoid does); towards zero it behaves like ``exp`` (``softplus(r) ~ e^r``), so pruning of
faint Gaussians works on a log-like scale. Its inverse, :func:`softplus_inverse`, is what
initialisation must use to turn a wanted density into ``density_raw``. Why ``exp`` for the
scales: scales span orders of magnitude (sub-voxel to tens of voxels) and an additive step
in ``log_scales`` is a relative change of size, the usual choice (3DGS, R2-Gaussian).

Gradients with respect to these raw parameters are computed by the kernels themselves
(:mod:`taichi_etgs.kernels.gaussian_projector`, :mod:`taichi_etgs.kernels.voxelizer`),
which apply the chain rule through these same activations.

This module needs only numpy; it imports no Taichi.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "GaussianParams",
    "covariances_from_raw",
    "densities_from_raw",
    "density_raw_from_densities",
    "normalize_quats",
    "quats_to_rotmats",
    "scales_from_log",
    "sigmoid",
    "softplus",
    "softplus_inverse",
]


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow. Same shape as ``x``."""
    x = np.asarray(x)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def softplus_inverse(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`softplus` for ``y > 0``: ``log(exp(y) - 1)``, stable for any y > 0.

    Raises
    ------
    ValueError: some ``y <= 0`` (softplus never reaches zero; clip densities first).
    """
    y = np.asarray(y)
    if np.any(~(y > 0)):
        raise ValueError("softplus_inverse needs strictly positive values")
    # log(exp(y) - 1) = y + log(1 - exp(-y)) = y + log(-expm1(-y))
    return y + np.log(-np.expm1(-y))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, the derivative of :func:`softplus`. Same shape as ``x``."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def densities_from_raw(density_raw: np.ndarray) -> np.ndarray:
    """Density ``rho = softplus(density_raw)``. [N]"""
    return softplus(density_raw)


def density_raw_from_densities(densities: np.ndarray) -> np.ndarray:
    """Raw density for wanted densities ``rho > 0`` (inverse of :func:`densities_from_raw`). [N]"""
    return softplus_inverse(densities)


def scales_from_log(log_scales: np.ndarray) -> np.ndarray:
    """Scales (standard deviations, voxels) ``s = exp(log_scales)``. [N, 3]"""
    return np.exp(log_scales)


def normalize_quats(quats_wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternions, w first. [N, 4]

    The norm is floored at 1e-12, so an all-zero quaternion stays zero (and
    :func:`quats_to_rotmats` turns it into the identity) instead of becoming NaN; its
    gradient is meaningless, so keep quaternions away from zero.
    """
    q = np.asarray(quats_wxyz)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    return q / np.maximum(norm, 1e-12)


def quats_to_rotmats(quats_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices of (not necessarily unit) quaternions ``(w, x, y, z)``. [N, 3, 3]

    ``R @ v`` rotates vector ``v`` (columns x, y, z) by the quaternion: the Gaussian's
    k-th axis in the volume is column k of R. The Taichi kernels use this same matrix.
    """
    w, x, y, z = np.moveaxis(normalize_quats(quats_wxyz), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def covariances_from_raw(log_scales: np.ndarray, quats_wxyz: np.ndarray) -> np.ndarray:
    """Covariances ``Sigma = R diag(s^2) R^T`` in voxel^2, axes (x, y, z). [N, 3, 3]

    log_scales: log standard deviations along the Gaussians' axes. [N, 3]
    quats_wxyz: rotations, w first, normalised here. [N, 4]
    """
    rot = quats_to_rotmats(quats_wxyz)
    s2 = np.exp(2.0 * np.asarray(log_scales))
    return np.einsum("nij,nj,nkj->nik", rot, s2, rot)


@dataclass
class GaussianParams:
    """Raw (unconstrained) parameters of N Gaussians; also used to hold their gradients.

    means_xyz: centres in centred voxel coordinates, columns (x, y, z). [N, 3]
    log_scales: ``log`` of the standard deviations along each Gaussian's axes. [N, 3]
    quats_wxyz: rotation quaternions (w, x, y, z), any non-zero norm. [N, 4]
    density_raw: ``softplus_inverse`` of the density. [N]

    Arrays are kept as given when they are floating point (float32 or float64), converted
    to float64 otherwise. Shapes are checked on construction (ValueError).
    """

    means_xyz: np.ndarray
    log_scales: np.ndarray
    quats_wxyz: np.ndarray
    density_raw: np.ndarray

    def __post_init__(self) -> None:
        for f in fields(self):
            a = np.asarray(getattr(self, f.name))
            if not np.issubdtype(a.dtype, np.floating):
                a = a.astype(np.float64)
            setattr(self, f.name, a)
        n = self.density_raw.shape[0] if self.density_raw.ndim == 1 else -1
        expected = {"means_xyz": (n, 3), "log_scales": (n, 3), "quats_wxyz": (n, 4),
                    "density_raw": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape or n < 0:
                raise ValueError(
                    f"GaussianParams.{name} has shape {getattr(self, name).shape}; expected "
                    f"{tuple('N' if k == -1 else k for k in shape)} with one N for all fields "
                    f"(N from density_raw {self.density_raw.shape})")

    @property
    def n(self) -> int:
        """Number of Gaussians N."""
        return int(self.density_raw.shape[0])

    def __len__(self) -> int:
        return self.n

    @classmethod
    def from_activated(cls, means_xyz: np.ndarray, scales: np.ndarray,
                       densities: np.ndarray,
                       quats_wxyz: np.ndarray | None = None) -> GaussianParams:
        """Raw parameters from physical ones (the inverse activations).

        means_xyz: centres, centred voxel coordinates (x, y, z). [N, 3]
        scales: standard deviations along the Gaussians' axes, voxels, > 0. [N, 3]
        densities: peak densities ``rho > 0``. [N]
        quats_wxyz: rotations (w, x, y, z); identity when None. [N, 4]
        """
        means_xyz = np.asarray(means_xyz, dtype=np.float64)
        n = means_xyz.shape[0]
        if quats_wxyz is None:
            quats_wxyz = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (n, 1))
        return cls(means_xyz=means_xyz.copy(),
                   log_scales=np.log(np.asarray(scales, dtype=np.float64)),
                   quats_wxyz=np.array(quats_wxyz, dtype=np.float64),
                   density_raw=density_raw_from_densities(
                       np.asarray(densities, dtype=np.float64)))

    def scales(self) -> np.ndarray:
        """Standard deviations along the Gaussians' axes, voxels. [N, 3]"""
        return scales_from_log(self.log_scales)

    def densities(self) -> np.ndarray:
        """Peak densities ``rho``. [N]"""
        return densities_from_raw(self.density_raw)

    def rotations(self) -> np.ndarray:
        """Rotation matrices (column k = axis k of each Gaussian). [N, 3, 3]"""
        return quats_to_rotmats(self.quats_wxyz)

    def covariances(self) -> np.ndarray:
        """Covariances ``R diag(s^2) R^T``, voxel^2, axes (x, y, z). [N, 3, 3]"""
        return covariances_from_raw(self.log_scales, self.quats_wxyz)

    def masses(self) -> np.ndarray:
        """Integral of each Gaussian over space, ``rho (2 pi)^(3/2) s_x s_y s_z``. [N]"""
        return self.densities() * (2 * np.pi) ** 1.5 * np.exp(self.log_scales.sum(axis=1))

    def copy(self) -> GaussianParams:
        """Deep copy."""
        return GaussianParams(*(getattr(self, f.name).copy() for f in fields(self)))

    def zeros_like(self) -> GaussianParams:
        """Same shapes and dtypes, all zeros (e.g. a gradient accumulator)."""
        return GaussianParams(*(np.zeros_like(getattr(self, f.name)) for f in fields(self)))

    def astype(self, dtype: np.dtype | type) -> GaussianParams:
        """Copy with every array converted to ``dtype``."""
        return GaussianParams(*(np.array(getattr(self, f.name), dtype=dtype)
                                for f in fields(self)))

    def subset(self, index: np.ndarray | slice) -> GaussianParams:
        """The Gaussians selected by ``index`` (a boolean mask, integer indices or slice)."""
        return GaussianParams(*(np.array(getattr(self, f.name)[index]) for f in fields(self)))
