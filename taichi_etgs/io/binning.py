"""Average binning of tilt stacks, streamed one image at a time."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["bin_stack", "check_binning"]


def check_binning(binning: int, ny: int, nx: int) -> int:
    """Return ``binning`` as an int, or raise InputError if it is unusable for ny x nx."""
    try:
        ok = not isinstance(binning, bool) and float(binning).is_integer() and binning >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"binning must be a whole number >= 1, got {binning!r}")
    b = int(binning)
    if ny // b < 1 or nx // b < 1:
        raise InputError(f"binning {b} is larger than the {nx} x {ny} images")
    return b


def bin_image(image: np.ndarray, binning: int) -> np.ndarray:
    """Average-bin one 2D image by ``binning`` in Y and X (remainder cropped); float32."""
    ny, nx = image.shape[0] // binning, image.shape[1] // binning
    if binning == 1:
        return np.asarray(image, dtype=np.float32)
    # Sums in float64: a mean of b*b float32 values can lose the last bits otherwise.
    block = np.asarray(image[: ny * binning, : nx * binning], dtype=np.float64)
    return block.reshape(ny, binning, nx, binning).mean(axis=(1, 3)).astype(np.float32)


def bin_stack(data: np.ndarray, binning: int) -> np.ndarray:
    """Average-bin every image of a stack in Y and X.

    Parameters
    ----------
    data
        The stack, any real dtype, possibly a memory map. [n, ny, nx]
    binning
        Bin factor (whole number >= 1). Rows/columns beyond ``(ny // b) * b`` and
        ``(nx // b) * b`` are cropped, as IMOD's ``newstack -bin`` does for remainders.

    Returns
    -------
    np.ndarray
        float32, C-contiguous. [n, ny // b, nx // b]

    Raises
    ------
    InputError
        ``binning`` is not a whole number >= 1, or larger than the images.

    Notes
    -----
    Works one image at a time, so a memory-mapped stack is streamed: at most one
    image is held in float64 at once.
    """
    if np.ndim(data) != 3:
        raise ValueError(f"expected a stack (n, ny, nx), got shape {np.shape(data)}")
    n, ny, nx = data.shape
    b = check_binning(binning, ny, nx)
    out = np.empty((n, ny // b, nx // b), dtype=np.float32)
    for k in range(n):
        out[k] = bin_image(data[k], b)
    return out
