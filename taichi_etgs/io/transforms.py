"""In-plane alignment transforms: IMOD ``.xf`` files, their application, AreTomo -> xf.

Convention (IMOD, as ``newstack`` applies an ``.xf`` file through ``cubinterp``)
-------------------------------------------------------------------------------
Coordinates are 0-based pixel indices: pixel ``(row y, column x)`` sits at ``(x, y)``.
A transform row ``A11 A12 A21 A22 DX DY`` maps a raw-image point to the aligned image,
about the image centre ``(xc, yc) = (nx / 2, ny / 2)``::

    x_aligned = A11 (x - xc) + A12 (y - yc) + DX + xc
    y_aligned = A21 (x - xc) + A22 (y - yc) + DY + yc

Each aligned pixel is filled by mapping it back into the raw image (inverse transform)
and interpolating bilinearly; pixels that land outside take the image's mean, as
newstack does. So ``DX = +2`` moves image content 2 pixels towards +x (higher column).
This matches newstack's ``xcenIn = nx / 2`` (with an output of the input's size);
for even sizes the centre is the pixel just past the geometric middle, which only
matters (by half a pixel) for rotations. An output of another size (a view turned by
about 90 degrees, :func:`aligned_shape`) has its own centre ``(nx_out / 2, ny_out / 2)``
in place of the second ``(xc, yc)``, as newstack's ``-size``.

Rotations: ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` turns content by ``a`` from +x
towards +y (the row index), counter-clockwise as IMOD draws images (row 0 at the
bottom). A tilt axis at angle ``a`` from Y (SerialEM's and IMOD's tilt axis angle,
AreTomo's ROT) runs along ``R(a) (0, 1)``; the transform that aligns it is ``R(-a)``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ._files import parse_float, read_text_lines
from .aln import AlnAlignment

__all__ = ["aligned_shape", "aln_to_xf", "apply_xf", "apply_xf_image", "compose_xf",
           "invert_xf", "read_xf", "rigid_xf", "rotation_xf", "write_xf", "xf_rotation_deg"]


def read_xf(path: str | PathLike, n_expected: int | None = None) -> np.ndarray:
    """Read an IMOD ``.xf`` file (``A11 A12 A21 A22 DX DY`` per line, one line per view).

    Parameters
    ----------
    path
        The ``.xf`` (or ``.prexf``/``.prexg``) file. Blank lines at the end are ignored.
    n_expected
        The number of stack sections; when given, the count must match.

    Returns
    -------
    np.ndarray
        ``[[A11, A12, DX], [A21, A22, DY]]`` per view, float64. [n, 2, 3]

    Raises
    ------
    InputError
        A line without exactly 6 numbers, a non-finite value, a singular matrix,
        an empty file or a count other than ``n_expected`` (file and line named).
    """
    p, lines = read_text_lines(path, "an IMOD .xf file")
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    if last < 0:
        raise InputError("is empty; expected lines of A11 A12 A21 A22 DX DY", p)
    out = np.empty((last + 1, 2, 3), dtype=np.float64)
    for number, raw in enumerate(lines[: last + 1], start=1):
        tokens = raw.split()
        if len(tokens) != 6:
            raise InputError(f"has {len(tokens)} values; expected 6 (A11 A12 A21 A22 DX DY)",
                             p, number)
        values = [parse_float(t) for t in tokens]
        for tok, v in zip(tokens, values):
            if v is None or not np.isfinite(v):
                raise InputError(f"'{tok}' is not a finite number (expected A11 A12 A21 A22 "
                                 f"DX DY)", p, number)
        a11, a12, a21, a22, dx, dy = values
        if abs(a11 * a22 - a12 * a21) < 1e-8:
            raise InputError("the 2x2 matrix A11 A12 A21 A22 is singular", p, number)
        out[number - 1] = [[a11, a12, dx], [a21, a22, dy]]
    if n_expected is not None and len(out) != n_expected:
        raise InputError(f"has {len(out)} transforms but the stack has {n_expected} sections",
                         p)
    return out


def write_xf(path: str | PathLike, xf: np.ndarray, *, force: bool = False) -> Path:
    """Write IMOD ``.xf`` transforms, one line ``A11 A12 A21 A22 DX DY`` per view.

    Parameters
    ----------
    path
        The file to write (atomically); an existing one only with ``force``.
    xf
        ``[[A11, A12, DX], [A21, A22, DY]]`` per view, raw -> aligned (the module's
        convention). [n, 2, 3]

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    IMOD's precision: 7 decimals for the matrix, 3 (a thousandth of a pixel) for the
    shifts; the columns are separated by spaces whatever the values' widths, so that
    IMOD's free-format reading and :func:`read_xf` both read it.
    """
    from .._atomic import write_text_atomic
    from ..pipeline.outputs import check_writable

    a = np.asarray(xf, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (2, 3) or len(a) == 0:
        raise ValueError(f"expected transforms of shape (n, 2, 3), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("transforms must be finite")
    p = check_writable(path, force)
    lines = [f"{m[0, 0]:11.7f} {m[0, 1]:11.7f} {m[1, 0]:11.7f} {m[1, 1]:11.7f} "
             f"{m[0, 2]:11.3f} {m[1, 2]:11.3f}\n" for m in a]
    write_text_atomic(p, "".join(lines))
    return p


def rotation_xf(angle_deg: float) -> np.ndarray:
    """The transform ``R(angle)`` about the centre, no shift: ``[[cos, -sin, 0], [sin, cos,
    0]]``. [2, 3]"""
    a = np.deg2rad(float(angle_deg))
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0]])


def rigid_xf(angle_deg: float, shifts_xy_px) -> np.ndarray:
    """Per image: turn by ``angle_deg`` about the centre (:func:`rotation_xf`), then move
    by that image's ``(DX, DY)``. shifts_xy_px: [n, 2] -> [n, 2, 3]"""
    shifts = np.asarray(shifts_xy_px, dtype=np.float64).reshape(-1, 2)
    xf = np.repeat(rotation_xf(angle_deg)[None], len(shifts), axis=0)
    xf[:, :, 2] = shifts
    return xf


def compose_xf(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The transform that applies ``first``, then ``second`` (IMOD's ``xfproduct``).

    ``A = A2 A1``, ``D = A2 D1 + D2``: both are about the image centre, so the centres
    cancel. Either may be one transform [2, 3] or one per view [n, 2, 3].
    """
    f, s = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    matrix = np.matmul(s[..., :2], f[..., :2])
    shift = np.einsum("...ij,...j->...i", s[..., :2], f[..., 2]) + s[..., 2]
    return np.concatenate([matrix, shift[..., None]], axis=-1)


def invert_xf(xf: np.ndarray) -> np.ndarray:
    """The inverse transforms (aligned -> raw): ``A^-1``, ``-A^-1 D``. [..., 2, 3]"""
    a = np.asarray(xf, dtype=np.float64)
    inverse = np.linalg.inv(a[..., :2])
    shift = -np.einsum("...ij,...j->...i", inverse, a[..., 2])
    return np.concatenate([inverse, shift[..., None]], axis=-1)


def xf_rotation_deg(xf: np.ndarray) -> np.ndarray:
    """The angle each transform turns the image by, degrees in (-180, 180].

    The rotation nearest the matrix (its polar part), so a small stretch or
    magnification, as tiltalign writes, does not bias it. [...]
    """
    a = np.asarray(xf, dtype=np.float64)
    return np.rad2deg(np.arctan2(a[..., 1, 0] - a[..., 0, 1], a[..., 0, 0] + a[..., 1, 1]))


def aligned_shape(shape_yx: tuple[int, int], rotation_deg: float) -> tuple[int, int]:
    """``(ny, nx)`` of views turned by ``rotation_deg``: swapped when the turn is nearer
    +-90 than 0 or 180 degrees, so that a tilt axis along the long side of the raw images
    stays along the long side of the aligned ones (etomo's aligned stack does the same)."""
    ny, nx = (int(n) for n in shape_yx)
    a = np.deg2rad(float(rotation_deg))
    return (nx, ny) if abs(np.sin(a)) > abs(np.cos(a)) else (ny, nx)


def apply_xf_image(image: np.ndarray, xf: np.ndarray, *,
                   output_shape: tuple[int, int] | None = None, order: int = 1,
                   edge: str = "mean") -> np.ndarray:
    """Apply one ``[[A11, A12, DX], [A21, A22, DY]]`` transform to a 2D image (float32).

    output_shape: ``(ny, nx)`` of the result (default: the image's), about its own centre.
    order: the spline order of the interpolation (1: bilinear, as newstack).
    edge: what pixels from outside the image take: "mean" (the image's mean, as
        newstack) or "nearest" (the nearest edge pixel).
    """
    img = np.asarray(image, dtype=np.float32)
    ny, nx = img.shape
    out_shape = img.shape if output_shape is None else tuple(int(n) for n in output_shape)
    a = np.asarray(xf, dtype=np.float64)
    inv = np.linalg.inv(a[:, :2])
    # scipy works in (row, col) = (y, x): swap both axes of the inverse matrix.
    matrix_yx = inv[::-1, ::-1]
    centre_yx = np.array([ny / 2.0, nx / 2.0])
    out_centre_yx = np.array([out_shape[0] / 2.0, out_shape[1] / 2.0])
    shift_yx = np.array([a[1, 2], a[0, 2]])
    offset_yx = centre_yx - matrix_yx @ (out_centre_yx + shift_yx)
    if edge == "mean":
        mode, fill = "constant", float(img.mean(dtype=np.float64))
    elif edge == "nearest":
        mode, fill = "nearest", 0.0
    else:
        raise ValueError(f"edge must be 'mean' or 'nearest', got {edge!r}")
    return ndimage.affine_transform(img, matrix_yx, offset=offset_yx, output_shape=out_shape,
                                    output=np.float32, order=order, mode=mode, cval=fill)


def apply_xf(stack: np.ndarray, xf: np.ndarray, *, order: int = 1,
             edge: str = "mean") -> np.ndarray:
    """Transform every image of a stack, IMOD ``newstack -xform`` style.

    Parameters
    ----------
    stack
        The raw images, any real dtype, possibly a memory map. [n, ny, nx]
    xf
        One transform per image, as from :func:`read_xf` or :func:`aln_to_xf`. [n, 2, 3]
    order, edge
        As :func:`apply_xf_image` (default: bilinear, the image's mean outside, as newstack).

    Returns
    -------
    np.ndarray
        The aligned images, float32, same size. [n, ny, nx]

    Notes
    -----
    See the module docstring for the convention: output pixel ``(x', y')`` takes the
    bilinearly interpolated raw value at ``A^-1 ((x', y') - c - D) + c`` with
    ``c = (nx/2, ny/2)``; outside the raw image it takes that image's mean.
    """
    stack_shape = np.shape(stack)
    xf = np.asarray(xf, dtype=np.float64)
    if len(stack_shape) != 3:
        raise ValueError(f"expected a stack (n, ny, nx), got shape {stack_shape}")
    if xf.shape != (stack_shape[0], 2, 3):
        raise ValueError(f"expected {stack_shape[0]} transforms of shape (2, 3), got {xf.shape}")
    out = np.empty(stack_shape, dtype=np.float32)
    for k in range(stack_shape[0]):
        out[k] = apply_xf_image(stack[k], xf[k], order=order, edge=edge)
    return out


def aln_to_xf(aln: AlnAlignment, shift_scale: float = 1.0) -> np.ndarray:
    """Turn AreTomo's global alignment into IMOD-style transforms (raw -> aligned).

    Parameters
    ----------
    aln
        From :func:`~taichi_etgs.io.aln.read_aln`; one transform per row.
    shift_scale
        Multiplies TX, TY: ``stack_nx / RawSize_nx`` when the stack is binned relative
        to the one AreTomo aligned.

    Returns
    -------
    np.ndarray
        ``[[A11, A12, DX], [A21, A22, DY]]`` per row, float64. [n, 2, 3]

    Notes
    -----
    AreTomo's model of a view: a point ``p`` of the aligned, axis-vertical image
    appears in the raw image at ``R(ROT) (p - c) + c + (TX, TY)``, where ROT is the
    tilt-axis angle from the Y axis and ``R(a) = [[cos a, -sin a], [sin a, cos a]]``.
    Aligning inverts it: shift by ``-(TX, TY)``, then rotate by ``-ROT`` about the
    centre, giving ``A = R(-ROT)`` and ``(DX, DY) = -A (TX, TY)``. This is the
    conversion used by the CryoET Data Portal tools (``cryoet-alignment``, ``are2imod``),
    and ``alnfile`` uses the same shift term. GMAG is ignored (AreTomo writes 1.0).
    The centre ``c`` is IMOD's ``(nx/2, ny/2)`` (see the module docstring).
    """
    rot = np.deg2rad(np.asarray(aln.rot_deg, dtype=np.float64))
    cos, sin = np.cos(rot), np.sin(rot)
    n = len(rot)
    xf = np.zeros((n, 2, 3), dtype=np.float64)
    # R(-ROT) = [[cos, sin], [-sin, cos]]
    xf[:, 0, 0], xf[:, 0, 1] = cos, sin
    xf[:, 1, 0], xf[:, 1, 1] = -sin, cos
    t = np.stack([aln.tx, aln.ty], axis=1) * float(shift_scale)
    xf[:, :, 2] = -np.einsum("nij,nj->ni", xf[:, :, :2], t)
    return xf
