"""From raw tilt images to the positive-density views the reconstructions consume."""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["CONTRASTS", "density_views", "erase_outliers", "to_output_polarity"]

CONTRASTS = ("dark", "bright")
#: An X-ray hit or hot pixel lies at least this many noise standard deviations below
#: (in density) the median of its neighbours: Gaussian noise goes that far once in 1e23
#: pixels, and 20 hits per view took a Gaussian reconstruction's band FSC from 0.87 to
#: 0.35 (docs/method.md, "Outlier pixels").
OUTLIER_SD = 10.0
#: ... and covers at most this many pixels; larger patches are specimen (a 10 nm gold bead
#: is 5 pixels across even at 20 A).
OUTLIER_MAX_PIXELS = 4
# Views smaller than this (64 x 64) give too few pixels to measure their noise by.
_OUTLIER_MIN_PIXELS = 4096


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


def erase_outliers(view: np.ndarray, threshold: float = OUTLIER_SD,
                   max_pixels: int = OUTLIER_MAX_PIXELS) -> int:
    """Replace the X-ray hits and hot pixels of one density view by the median of their
    eight neighbours, in place; returns how many pixels were replaced.

    Both are bright in the images, so in density (:func:`density_views`) they are pixels
    far below their neighbours: at least ``threshold`` times the noise's standard
    deviation below the neighbours' median, in patches of at most ``max_pixels``
    (8-connected). Larger patches are specimen, and so is anything denser than its
    surroundings (gold beads; dead pixels, dark in the images, are left too). The noise
    is measured on differences of neighbouring pixels (1.4826 x their median absolute
    deviation / sqrt(2)), and taken as at least a quarter of the view's standard
    deviation: noise-free views, whose differences are mostly zero, keep their detail
    (a tenth let 4-192 pixels of the benchmark's noise-free views through, a fifth
    none). A cheap screen (the mean of the eight neighbours) picks the candidates, the
    median decides. [ny, nx]
    """
    from scipy import ndimage

    v = view
    if v.ndim != 2 or min(v.shape) < 3 or v.size < _OUTLIER_MIN_PIXELS:
        return 0
    step = max(1, v.shape[0] // 256)  # rows enough for the noise, fast on 4k views
    spread = float(np.std(v[::step]))
    noise = _robust_sd(np.diff(v[::step], axis=1).ravel()) / np.sqrt(2.0)
    sd = max(noise, 0.25 * spread)
    if not (np.isfinite(sd) and sd > 0):
        return 0
    # The screen: a pixel less its eight neighbours' mean, 9/8 of it less the 3 x 3 mean,
    # below half the threshold. A patch of up to 2 x 2 pixels raises its pixels' neighbour
    # mean by at most 3/8 of its depth, so every pixel the median test can flag is in it.
    local = ndimage.uniform_filter(np.asarray(v, dtype=np.float32), 3, mode="nearest")
    screen = v - local < (-4.0 / 9.0) * threshold * sd
    ys, xs = np.nonzero(screen)
    if ys.size == 0:
        return 0
    ny, nx = v.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    neighbours = np.stack([v[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
                           for dy, dx in offsets])
    median = np.median(neighbours, axis=0)
    hit = v[ys, xs] - median < -threshold * sd
    if not hit.any():
        return 0
    # A patch's size is that of its part of the screen: the median test passes only the
    # corners of a 3 x 3 patch, each alone.
    labels, _ = ndimage.label(screen, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    small = sizes[labels[ys[hit], xs[hit]]] <= max_pixels
    v[ys[hit][small], xs[hit][small]] = median[hit][small]
    return int(small.sum())


def _robust_sd(values: np.ndarray) -> float:
    """The standard deviation of Gaussian values, from their median absolute deviation."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def to_output_polarity(volume: np.ndarray, input_contrast: str, output_contrast: str) -> np.ndarray:
    """Turn a positive-density tomogram into the requested polarity.

    ``output_contrast`` is ``"input"`` (the same polarity as the images: dark density for
    dark input, as IMOD and AreTomo write), ``"bright"`` or ``"dark"``.
    """
    target = input_contrast if output_contrast == "input" else output_contrast
    if target not in CONTRASTS:
        raise InputError(f"unknown output contrast {output_contrast!r}")
    return volume if target == "bright" else -volume
