"""From raw tilt images to the positive-density views the reconstructions consume."""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["CONTRASTS", "density_views", "to_output_polarity"]

CONTRASTS = ("dark", "bright")


def density_views(images: np.ndarray, contrast: str = "dark", out=None) -> np.ndarray:
    """Views in positive-density contrast with each view's mean removed. [n_tilts, ny, nx]

    Raw cryo-ET images show density dark (``contrast="dark"``): they are negated. Each
    view's mean is subtracted because detector offsets are arbitrary and the ice slab's
    mean grows as 1/cos(tilt); a constant slab of density is thereby removed from the
    tomogram, which is then density relative to the mean, in the images' units per voxel.

    out: where the views go (``out[t] = view``; ``images`` itself works: each view is
    read whole before it is written); default a new float32 array.
    """
    if contrast not in CONTRASTS:
        raise InputError(f"unknown contrast {contrast!r}; expected one of {', '.join(CONTRASTS)}")
    sign = -1.0 if contrast == "dark" else 1.0
    if out is None:
        out = np.empty(images.shape, dtype=np.float32)
    for t in range(images.shape[0]):  # one view at a time: the input may be memory-mapped
        view = np.asarray(images[t], dtype=np.float64)
        out[t] = sign * (view - view.mean())
    return out


def to_output_polarity(volume: np.ndarray, input_contrast: str, output_contrast: str) -> np.ndarray:
    """Turn a positive-density tomogram into the requested polarity.

    ``output_contrast`` is ``"input"`` (the same polarity as the images: dark density for
    dark input, as IMOD and AreTomo write), ``"bright"`` or ``"dark"``.
    """
    target = input_contrast if output_contrast == "input" else output_contrast
    if target not in CONTRASTS:
        raise InputError(f"unknown output contrast {output_contrast!r}")
    return volume if target == "bright" else -volume
