"""Figures (matplotlib, imported only when a figure is drawn; Agg canvas, no display).

- :func:`evaluation_figure`: XY and XZ slices of a reconstruction and its reference side
  by side, and the FSC curves, for ``taichi-etgs evaluate --figure``.
- :func:`comparison_figure`: the same slices for several methods and the reference, and
  every method's FSC and missing-wedge FSC, for the benchmark.

Reconstructions are shown after the affine normalisation of the metrics, every panel
with the reference's 0.5-99.5 percentile grey range.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from .._atomic import atomic_output
from ..errors import InputError
from ..pipeline.outputs import check_writable

__all__ = ["comparison_figure", "evaluation_figure"]


def _fmt(value, unit: str = "", digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if np.isnan(v):
        return "n/a"
    if np.isinf(v):
        return "inf"
    return f"{v:.{digits}g}{unit}"


def _busiest(variance: np.ndarray) -> int:
    """Index of the largest value within the central half of an axis."""
    n = variance.size
    lo, hi = n // 4, max(n // 4 + 1, n - n // 4)
    return int(lo + np.argmax(variance[lo:hi]))


def evaluation_figure(recon: np.ndarray, reference: np.ndarray, metrics: dict,
                      path: str | PathLike, *, force: bool = False,
                      title: str | None = None) -> Path:
    """Draw slices and FSC curves of an evaluation and save them (PNG, PDF, SVG...).

    The reconstruction is shown after the same affine normalisation as the metrics
    (``metrics["fit_gain"]``, ``metrics["fit_offset"]``), both volumes with the
    reference's 0.5-99.5 percentile grey range. Rows: an XY slice and an XZ slice, each
    where the reference varies most within the central half of Z (resp. Y); columns:
    reconstruction, reference; right: FSC and missing-wedge
    FSC with the 0.5 and 0.143 thresholds.

    Parameters
    ----------
    recon: reconstruction. [nz, ny, nx]
    reference: reference. [nz, ny, nx]
    metrics: the dict of :func:`taichi_etgs.evaluation.metrics.evaluate`.
    path: output image; the format follows the suffix.
    force: overwrite an existing file.
    title: figure title (default: the headline metrics).

    Returns
    -------
    The path written (atomically).

    Raises
    ------
    InputError: the file exists without ``force``, or its folder does not exist.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = _check_target(path, force)
    recon = np.asarray(recon, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if recon.shape != reference.shape or recon.ndim != 3:
        raise InputError(f"reconstruction {recon.shape} and reference {reference.shape} "
                         f"must be 3D volumes of one shape")
    gain = float(metrics.get("fit_gain", 1.0))
    offset = float(metrics.get("fit_offset", 0.0))
    shown = gain * recon + offset
    lo, hi = _grey_range(reference)
    nz, ny, _ = reference.shape

    fig = Figure(figsize=(13, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=[ny, max(nz, ny // 3)],
                            width_ratios=[1, 1, 1.1])
    # The slices through the most structure of the reference (not an empty one), picked
    # from the central half so that they stay representative.
    z0 = _busiest(reference.var(axis=(1, 2)))
    y0 = _busiest(reference.var(axis=(0, 2)))
    panels = [
        (shown[z0], f"reconstruction, XY (z = {z0})"),
        (reference[z0], f"reference, XY (z = {z0})"),
        (shown[:, y0], f"reconstruction, XZ (y = {y0})"),
        (reference[:, y0], f"reference, XZ (y = {y0})"),
    ]
    for k, (image, label) in enumerate(panels):
        ax = fig.add_subplot(grid[k // 2, k % 2])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                  interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x")
        ax.set_ylabel("y" if k < 2 else "z")
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[:, 2])
    styles = {"fsc": ("FSC", "C0", "-"), "wedge_fsc": ("missing-wedge FSC", "C1", "--")}
    for key, (label, colour, line) in styles.items():
        curve = _curve(metrics, key)
        if curve is not None:
            ax.plot(*curve, line, color=colour, label=label)
    for threshold in (0.5, 0.143):
        ax.text(0.0, threshold, f" {threshold}", va="bottom", fontsize=7, color="0.4")
    _fsc_axes(ax, f"FSC 0.5: {_fmt(metrics.get('fsc05_resolution_A'), ' A')}, "
                  f"0.143: {_fmt(metrics.get('fsc0143_resolution_A'), ' A')}")
    ax.legend(loc="upper right", fontsize=8)
    if title is None:
        title = (f"PSNR {_fmt(metrics.get('psnr'), ' dB', 4)}   "
                 f"SSIM {_fmt(metrics.get('ssim'))}   "
                 f"correlation {_fmt(metrics.get('correlation'))}   "
                 f"wedge FSC {_fmt(metrics.get('wedge_fsc'))}")
        if metrics.get("contrast_inverted"):
            title += "   (contrast inverted)"
    fig.suptitle(title, fontsize=11)

    return _save(fig, p)


def _check_target(path: str | PathLike, force: bool) -> Path:
    return check_writable(path, force)


def _save(fig, p: Path) -> Path:
    """Write a figure atomically; the format follows the suffix (PNG by default)."""
    with atomic_output(p) as tmp:
        fig.savefig(tmp, dpi=110, format=(p.suffix[1:] or "png").lower())
    return p


def _grey_range(reference: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(reference, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(reference.min()), float(reference.max()) + 1e-12
    return float(lo), float(hi)


def _curve(metrics: dict, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    curve = metrics.get("curves", {}).get(key)
    if not curve:
        return None
    f = np.asarray(curve["freq_per_A"], dtype=np.float64)
    c = np.asarray([np.nan if v is None else v for v in curve["fsc"]], dtype=np.float64)
    return f, c


def _fsc_axes(ax, title: str) -> None:
    for threshold in (0.5, 0.143):
        ax.axhline(threshold, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("spatial frequency (1/A)")
    ax.set_ylabel("correlation")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)


def comparison_figure(volumes: dict[str, np.ndarray], reference: np.ndarray,
                      metrics: dict[str, dict], path: str | PathLike, *,
                      force: bool = False, title: str | None = None) -> Path:
    """Slices of several reconstructions next to the reference, and all FSC curves.

    Parameters
    ----------
    volumes: reconstruction of each method, by name. {name: [nz, ny, nx]}
    reference: ground truth. [nz, ny, nx]
    metrics: :func:`taichi_etgs.evaluation.metrics.evaluate` of each method, by the same names.
    path: output image; the format follows the suffix.
    force: overwrite an existing file.
    title: figure title.

    Returns
    -------
    The path written (atomically).

    Raises
    ------
    InputError: the file exists without ``force``, its folder does not exist, or a
        volume's shape differs from the reference's.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = _check_target(path, force)
    reference = np.asarray(reference, dtype=np.float64)
    for name, vol in volumes.items():
        if np.shape(vol) != reference.shape:
            raise InputError(f"{name}: volume {np.shape(vol)} does not match the reference "
                             f"{reference.shape}")
    nz, ny, _ = reference.shape
    lo, hi = _grey_range(reference)
    z0 = _busiest(reference.var(axis=(1, 2)))
    y0 = _busiest(reference.var(axis=(0, 2)))
    columns = [("reference", reference, {})] + [
        (name, vol, metrics.get(name, {})) for name, vol in volumes.items()]
    n = len(columns)
    fig = Figure(figsize=(2.6 * n, 2.6 + 2.6 * max(nz, ny // 3) / ny + 3.2),
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, n, height_ratios=[ny, max(nz, ny // 3), 1.2 * ny])
    for k, (name, vol, m) in enumerate(columns):
        shown = np.asarray(vol, dtype=np.float64)
        if m:
            shown = float(m.get("fit_gain", 1.0)) * shown + float(m.get("fit_offset", 0.0))
        for row, (image, label) in enumerate(((shown[z0], f"XY z={z0}"),
                                              (shown[:, y0], f"XZ y={y0}"))):
            ax = fig.add_subplot(grid[row, k])
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                subtitle = name
                if m:
                    subtitle += (f"\nPSNR {_fmt(m.get('psnr'), '', 4)}  "
                                 f"SSIM {_fmt(m.get('ssim'))}")
                ax.set_title(subtitle, fontsize=8)
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
    half = max(1, n // 2)
    for key, span, label in (("fsc", slice(0, half), "FSC"),
                             ("wedge_fsc", slice(half, n), "missing-wedge FSC")):
        ax = fig.add_subplot(grid[2, span])
        for i, (name, m) in enumerate(metrics.items()):
            curve = _curve(m, key)
            if curve is not None:
                ax.plot(*curve, color=f"C{i % 10}", label=name)
        _fsc_axes(ax, label)
        ax.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, p)
