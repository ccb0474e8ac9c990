"""A refined alignment of the views, as the commands report and write it.

``--refine-alignment`` (``reconstruct``, ``wbp``, ``sirt``) writes the correction it
found next to the tomogram: ``<output stem>.xf`` (IMOD's convention, one line per section
of the stack) and ``<output stem>.tlt``, never over the input's own files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import inputs
from .outputs import check_writable
from .session import Session

__all__ = ["alignment_paths", "check_alignment_outputs", "write_alignment"]


def alignment_paths(output: Path) -> tuple[Path, Path]:
    """Where a refined alignment goes: ``<output stem>.xf`` and ``<output stem>.tlt``."""
    return output.with_suffix(".xf"), output.with_suffix(".tlt")


def check_alignment_outputs(source, output: Path | None, force: bool) -> None:
    """Before any work: the refined alignment's files can be written, and are not the
    input's angle file."""
    if output is None:
        return
    for path in alignment_paths(output):
        if source.angles is not None and inputs.same_file(path, source.angles):
            raise InputError(f"--refine-alignment would write the refined angles over "
                             f"the input's {path}: choose another output name")
        check_writable(path, force)


def write_alignment(session: Session, alignment, tilts_deg, output: Path | None,
                    binning: int, force: bool, series, n_raw: int) -> dict:
    """Report the refined alignment and write it next to the output: one ``.xf`` line and
    one angle per section of the raw stack, as IMOD's tiltalign writes them (a view left
    out of the fit keeps the identity, its correction unknown)."""
    from ..io.angles import write_tilt_angles
    from ..io.transforms import write_xf

    kept = np.asarray(series.kept_views)
    xf = np.zeros((n_raw, 2, 3))
    xf[:, 0, 0] = xf[:, 1, 1] = 1.0
    xf[kept] = alignment.xf()
    xf[:, :, 2] *= binning  # the input stack's pixels, not the binned views'
    shifts = alignment.shifts_px * binning
    record = {"views": kept.tolist(), "shifts_px": shifts.round(4).tolist(),
              "rms_shift_px": float(np.sqrt(np.mean(shifts ** 2)))}
    session.tell(f"alignment refined: residual shifts {record['rms_shift_px']:.2f} px rms "
                 f"(largest {np.abs(shifts).max():.2f} px)")
    if output is not None:
        xf_path, tlt_path = alignment_paths(output)
        angles = inputs.raw_angles(series, n_raw)
        if angles is None:
            angles = np.asarray(tilts_deg, dtype=np.float64)
            session.warn(f"{tlt_path}: lists the {len(kept)} views fitted only (the angles "
                         f"of the {n_raw - len(kept)} left out are not known here), while "
                         f"{xf_path.name} has a line for each of the {n_raw} sections")
        else:
            angles = np.array(angles, dtype=np.float64)
            angles[kept] = tilts_deg
        write_xf(xf_path, xf, force=force)
        write_tilt_angles(tlt_path, angles, force=force)
        record.update(xf=str(xf_path), tlt=str(tlt_path))
        session.tell(f"wrote {xf_path} and {tlt_path} (the correction of the views as given; "
                     f"xfproduct your .xf with it to use it elsewhere)")
    return record
