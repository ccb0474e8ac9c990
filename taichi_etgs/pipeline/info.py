"""What ``info`` says about a tilt series: sizes, pixel size and where it came from,
angles and their order, missing wedge, statistics, a binning hint, and what looks wrong."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import inputs, sizes
from .inputs import StackSource
from .session import Session

__all__ = ["StackDescription", "describe_stack"]


@dataclass
class StackDescription:
    """``lines``: (key, value) pairs to show in order; ``warnings``: what looks wrong
    (besides what loading the series already warned about); ``summary``: the numbers
    (:func:`~taichi_etgs.io.stack_summary`)."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def text(self) -> str:
        """The lines, keys aligned."""
        width = max((len(k) for k, _ in self.lines), default=0)
        return "\n".join(f"{key:<{width}}  {value}" for key, value in self.lines)


def _pixel_text(pixel: float, source: str) -> str:
    """``7.5 A (from the header)``: the pixel size and where it came from."""
    if not pixel > 0:
        return "unknown (1.0 A assumed; give it with --pixel-size)"
    if source.startswith("mdoc "):
        source = source[len("mdoc "):]
    return f"{pixel:g} A (from {source or 'the files'})".replace("from header",
                                                                  "from the header")


def describe_stack(source: StackSource, session: Session | None = None) -> StackDescription:
    """Read a tilt series once (nothing is written) and describe it.

    An unaligned stack (its .mdoc's tilt axis away from Y) and angles that look like
    radians are warned about, not refused.
    """
    from ..io import stack_summary
    from ..resources import format_bytes

    session = session or Session()
    header = inputs.peek(source)
    sizes.check_resources(sizes.run_size("info", header.n_raw, header.ny, header.nx,
                                         (1, 1, 1), source.binning), [], final=True)
    series, load_warnings = inputs.load(source, session)
    summary = stack_summary(series)
    pixel = summary.get("pixel_size_A", 0.0)
    binning = source.binning
    file_size = source.path.stat().st_size if source.path is not None else series.data.nbytes
    out = StackDescription(summary=summary)
    out.lines = [
        ("stack", str(series.source)),
        ("file", f"{format_bytes(file_size)}, {header.n_raw} sections of {header.nx_raw} x "
                 f"{header.ny_raw} pixels, {np.dtype(header.dtype).name}"),
        ("angles from", series.angles_source or "-"),
        ("views", f"{summary['n_tilts']} (kept of the raw stack: "
                  f"{inputs.index_ranges(series.kept_views)})"),
        ("image size", f"{summary['nx']} x {summary['ny']} pixels (X x Y)"
                       + (f", binned {binning}" if binning > 1 else "")),
        ("pixel size", _pixel_text(pixel, series.pixel_size_source)),
        ("tilt range", f"{summary['tilt_min_deg']:.2f} to {summary['tilt_max_deg']:.2f} deg, "
                       f"mean step {summary['mean_step_deg']:.2f} deg"),
        ("tilt order", summary["tilt_order"]),
        ("missing wedge", f"{summary['missing_wedge_deg']:.1f} deg"),
        ("min / max", f"{summary['min']:.4g} / {summary['max']:.4g}"),
        ("mean / std", f"{summary['mean']:.4g} / {summary['std']:.4g}"),
    ]
    if 0 < pixel < 10:
        b = next((b for b in (2, 3, 4, 6, 8, 12, 16) if pixel * b >= 10), 16)
        out.lines.append(("binning hint", f"--binning {b} gives {pixel * b:.3g} A voxels and "
                                          f"{summary['nx'] // b} x {summary['ny'] // b} "
                                          "pixels (reconstructions are done at 10-20 A)"))
    # The loader already warned about duplicated angles and radians: say it once.
    said = " ".join(load_warnings)
    for message in summary.get("warnings", []):
        if ("duplicated" in message and "more than once" in said) or (
                "radians" in message and "radians" in said):
            continue
        out.warnings.append(message)
    return out
