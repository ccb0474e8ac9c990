"""Gaussian models for viewers: CSV tables and binary PLY files in the 3D
Gaussian-splatting layout (``taichi-etgs export``).

Export coordinates
------------------
The model holds centred voxel coordinates (docs/conventions.md, "Geometry": voxel ``i`` of
an axis of length ``n`` is at ``i + 0.5 - n/2``). :func:`export_gaussians` converts them to
Angstrom with ``voxel_size_A`` and one of three origins (``origin``):

- ``"centre"`` (default): ``x_A = x * voxel_size_A``; (0, 0, 0) is the tomogram's centre.
- ``"corner"``: ``x_A = (x + nx/2) * voxel_size_A``; the tomogram's box fills
  ``[0, nx * voxel_size_A)`` and voxel ``i``'s centre is at ``(i + 0.5) * voxel_size_A``.
- ``"index"``: ``x_A = (x + nx/2 - 0.5) * voxel_size_A``; voxel ``i``'s centre is at
  ``i * voxel_size_A``, which is where ChimeraX and napari draw voxel ``i`` of the MRC file
  (with the header origin at 0), so the Gaussians overlay the written tomogram.

``"corner"`` and ``"index"`` need the volume's ``shape_zyx``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from .._atomic import atomic_output
from ..errors import InputError
from ..gaussian.params import GaussianParams, normalize_quats
from ..pipeline.outputs import check_writable

__all__ = ["CSV_COLUMNS", "EXPORT_FORMATS", "EXPORT_ORIGINS", "export_gaussians",
           "ply_properties"]

#: Column names of the CSV export, in order.
CSV_COLUMNS: tuple[str, ...] = ("x_A", "y_A", "z_A", "scale1_A", "scale2_A", "scale3_A",
                                "qw", "qx", "qy", "qz", "density")
#: Formats :func:`export_gaussians` writes.
EXPORT_FORMATS: tuple[str, ...] = ("csv", "ply")
#: Coordinate origins :func:`export_gaussians` accepts (module docstring).
EXPORT_ORIGINS: tuple[str, ...] = ("centre", "corner", "index")

#: Zeroth-order real spherical harmonic, ``1 / (2 sqrt(pi))``: 3DGS viewers show colour
#: ``0.5 + SH_C0 * f_dc``.
SH_C0 = 0.28209479177387814
#: Higher-order SH coefficients of a degree-3 3DGS model (``3 * 16 - 3``).
N_SH_REST = 45
#: Quantile of the densities that maps to full opacity / white in the PLY's 3DGS fields.
PLY_DENSITY_QUANTILE = 0.99
#: Normalised densities are clipped to ``[eps, 1 - eps]`` before the logit.
PLY_OPACITY_EPS = 1e-4


def _all_finite(p: GaussianParams) -> bool:
    return all(np.isfinite(a).all() for a in
               (p.means_xyz, p.log_scales, p.quats_wxyz, p.density_raw))


def ply_properties(sh_rest: bool = False) -> tuple[str, ...]:
    """Vertex property names of the PLY export, in file order (all ``float``).

    The 3DGS layout first (``x y z nx ny nz f_dc_0..2 [f_rest_0..44] opacity scale_0..2
    rot_0..3``, as the reference implementation's ``save_ply`` writes it), then this
    project's physical fields ``sx sy sz density``. See :func:`export_gaussians`.
    """
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    if sh_rest:
        names += [f"f_rest_{i}" for i in range(N_SH_REST)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
              "sx", "sy", "sz", "density"]
    return tuple(names)


def _export_format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in EXPORT_FORMATS:
            ext = f"the extension {path.suffix!r}" if path.suffix else "a name without extension"
            raise InputError(f"cannot tell the export format from {ext}: name the file .ply "
                             f"(3D Gaussian splatting viewers) or .csv (a table)", path)
        return fmt
    f = str(fmt).lower().lstrip(".")
    if f not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; expected one of "
                         f"{', '.join(EXPORT_FORMATS)}", path)
    return f


def _positions_A(means_xyz: np.ndarray, voxel_size_A: float, origin: str,
                 shape_zyx: Sequence[int] | None) -> np.ndarray:
    """Centres in Angstrom for ``origin`` (module docstring). [N, 3]"""
    origin = {"center": "centre"}.get(origin, origin)
    if origin not in EXPORT_ORIGINS:
        raise InputError(f"unknown origin {origin!r}; expected one of "
                         f"{', '.join(EXPORT_ORIGINS)}")
    means = np.asarray(means_xyz, dtype=np.float64)
    if origin == "centre":
        return means * voxel_size_A
    if shape_zyx is None:
        raise InputError(f"origin={origin!r} needs the volume's shape_zyx")
    shape = [int(n) for n in shape_zyx]
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape_zyx must be three positive sizes; got {shape_zyx}")
    half_xyz = np.array(shape[::-1], dtype=np.float64) / 2.0
    shift = half_xyz if origin == "corner" else half_xyz - 0.5
    return (means + shift) * voxel_size_A


def _write_atomically(path: Path, write: Callable[[object], None], binary: bool) -> None:
    """Write through ``write(fh)`` into a temporary file next to ``path``, then rename."""
    text_mode = {} if binary else {"encoding": "utf-8", "newline": "\n"}
    with atomic_output(path) as tmp, open(tmp, "wb" if binary else "w", **text_mode) as fh:
        write(fh)


def _ply_bytes(pos_A: np.ndarray, scales_A: np.ndarray, quats: np.ndarray, rho: np.ndarray,
               sh_rest: bool, voxel_size_A: float, origin: str) -> tuple[bytes, np.ndarray]:
    """Header and vertex records of the PLY export."""
    names = ply_properties(sh_rest)
    records = np.zeros(rho.shape[0], dtype=[(name, "<f4") for name in names])
    for k, axis in enumerate("xyz"):
        records[axis] = pos_A[:, k]
        records[f"s{axis}"] = scales_A[:, k]
        records[f"scale_{k}"] = np.log(scales_A[:, k])
    for k in range(4):
        records[f"rot_{k}"] = quats[:, k]
    records["density"] = rho
    # 3DGS fields: opacity = logit(a), colour grey level a, where a is the density over a high
    # quantile of the densities (not the max: one outlier would make all else transparent).
    ref = float(np.quantile(rho, PLY_DENSITY_QUANTILE)) if rho.size else 1.0
    a = np.clip(rho / ref if ref > 0 else np.ones_like(rho), PLY_OPACITY_EPS,
                1.0 - PLY_OPACITY_EPS)
    records["opacity"] = np.log(a / (1.0 - a))
    for c in range(3):
        records[f"f_dc_{c}"] = (a - 0.5) / SH_C0
    header = ["ply", "format binary_little_endian 1.0",
              "comment taichi-etgs Gaussians: x y z sx sy sz in Angstrom "
              f"(origin {origin}, voxel size {voxel_size_A:g} A)",
              "comment sx sy sz: standard deviations along the Gaussian's axes "
              "(columns of R(rot)); density: peak value, volume units",
              "comment 3DGS fields: scale_k = ln(s_k / A), rot = (w, x, y, z), "
              "opacity = logit(a), f_dc = (a - 0.5) / 0.2820948, "
              f"a = clip(density / q{PLY_DENSITY_QUANTILE:g}(density), "
              f"{PLY_OPACITY_EPS:g}, {1 - PLY_OPACITY_EPS:g})",
              f"element vertex {rho.shape[0]}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii"), records


def export_gaussians(params: GaussianParams, path: str | PathLike, *,
                     voxel_size_A: float = 1.0, fmt: str | None = None,
                     origin: str = "centre", shape_zyx: Sequence[int] | None = None,
                     sh_rest: bool = False, force: bool = False) -> Path:
    """Write a Gaussian model as CSV or binary PLY, positions and scales in Angstrom.

    Centres are converted from centred voxel coordinates to Angstrom as ``origin`` says
    (module docstring, "Export coordinates"): by default (0, 0, 0) is the tomogram's centre.
    Quaternions are normalised and given the sign with ``w >= 0`` (q and -q are the same
    rotation). Scales are the standard deviations along each Gaussian's own axes (column k of
    the rotation matrix of ``(qw, qx, qy, qz)`` is axis k), not sorted. ``density`` is the
    peak density ``rho`` in the model's units (a :func:`gaussianize` model: the volume's
    units above its ``background``).

    **CSV**: a header line ``x_A,y_A,z_A,scale1_A,scale2_A,scale3_A,qw,qx,qy,qz,density``
    (:data:`CSV_COLUMNS`) then one row per Gaussian, 9 significant digits;
    ``np.loadtxt(path, delimiter=",", skiprows=1)`` reads it back.

    **PLY**: ``binary_little_endian 1.0``, one ``vertex`` element with N records of float32
    properties (:func:`ply_properties`), the de-facto 3D Gaussian-splatting layout first so
    that splatting viewers (SuperSplat, gsplat, nerfstudio, ...) open it:

    - ``x y z``: centres, Angstrom; ``nx ny nz``: zeros (unused normals);
    - ``f_dc_0..2``: a grey level ``a`` as the degree-0 SH colour, ``(a - 0.5) / SH_C0``;
      ``f_rest_0..44`` (zeros) only with ``sh_rest=True``, for tools that insist on degree-3
      SH (the reference 3DGS ``load_ply``);
    - ``opacity``: ``logit(a)`` (3DGS applies a sigmoid), where
      ``a = clip(rho / q99(rho), 1e-4, 1 - 1e-4)`` is the density normalised by its 99th
      percentile: the densest Gaussians are opaque and white, faint ones transparent and
      dark;
    - ``scale_0..2``: ``ln(s / 1 A)`` (3DGS applies ``exp``), the same axes as ``sx sy sz``;
    - ``rot_0..3``: the quaternion ``(w, x, y, z)``;

    then this project's fields: ``sx sy sz`` (standard deviations, Angstrom) and ``density``
    (``rho``). Viewers are alpha compositors, so what they show is an impression of the
    model, not its projections.

    Parameters
    ----------
    params: the model (N Gaussians), centred voxel coordinates.
    path: output file; the folder must exist.
    voxel_size_A: voxel size, Angstrom per voxel (> 0).
    fmt: "csv" or "ply"; None: from the file extension.
    origin: "centre" (default), "corner" or "index" (module docstring).
    shape_zyx: the volume's shape (nz, ny, nx); needed for origin "corner" and "index".
    sh_rest: add the 45 zero ``f_rest_*`` properties to the PLY.
    force: overwrite an existing file.

    Returns
    -------
    The path written.

    Raises
    ------
    InputError: the file exists and ``force`` is False; unknown format or origin; missing
        ``shape_zyx``; bad voxel size; non-finite parameters; the folder does not exist.
    """
    p = Path(path)
    kind = _export_format(p, fmt)
    if not (math.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise InputError(f"voxel size must be a positive number of Angstrom; got "
                         f"{voxel_size_A}", p)
    if not _all_finite(params):
        raise InputError("the model has non-finite parameters; nothing written", p)
    pos_A = _positions_A(params.means_xyz, float(voxel_size_A), origin, shape_zyx)
    check_writable(p, force)

    scales_A = params.scales().astype(np.float64) * voxel_size_A
    quats = normalize_quats(np.asarray(params.quats_wxyz, dtype=np.float64))
    quats = np.where(quats[:, :1] < 0, -quats, quats)
    rho = params.densities().astype(np.float64)

    if kind == "csv":
        table = np.column_stack([pos_A, scales_A, quats, rho])

        def write(fh) -> None:
            fh.write(",".join(CSV_COLUMNS) + "\n")
            np.savetxt(fh, table, fmt="%.9g", delimiter=",")

        _write_atomically(p, write, binary=False)
    else:
        origin_name = {"center": "centre"}.get(origin, origin)
        header, records = _ply_bytes(pos_A, scales_A, quats, rho, sh_rest,
                                     float(voxel_size_A), origin_name)

        def write(fh) -> None:
            fh.write(header)
            fh.write(records.tobytes())

        _write_atomically(p, write, binary=True)
    return p
