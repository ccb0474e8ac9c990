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
matters (by half a pixel) for rotations.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ._files import parse_float, read_text_lines
from .aln import AlnAlignment

__all__ = ["aln_to_xf", "apply_xf", "apply_xf_image", "read_xf"]


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


def apply_xf_image(image: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """Apply one ``[[A11, A12, DX], [A21, A22, DY]]`` transform to a 2D image (float32)."""
    img = np.asarray(image, dtype=np.float32)
    ny, nx = img.shape
    a = np.asarray(xf, dtype=np.float64)
    inv = np.linalg.inv(a[:, :2])
    # scipy works in (row, col) = (y, x): swap both axes of the inverse matrix.
    matrix_yx = inv[::-1, ::-1]
    centre_yx = np.array([ny / 2.0, nx / 2.0])
    shift_yx = np.array([a[1, 2], a[0, 2]])
    offset_yx = centre_yx - matrix_yx @ (centre_yx + shift_yx)
    fill = float(img.mean(dtype=np.float64))
    return ndimage.affine_transform(img, matrix_yx, offset=offset_yx, output_shape=img.shape,
                                    output=np.float32, order=1, mode="constant", cval=fill)


def apply_xf(stack: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """Transform every image of a stack, IMOD ``newstack -xform`` style.

    Parameters
    ----------
    stack
        The raw images, any real dtype, possibly a memory map. [n, ny, nx]
    xf
        One transform per image, as from :func:`read_xf` or :func:`aln_to_xf`. [n, 2, 3]

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
        out[k] = apply_xf_image(stack[k], xf[k])
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
