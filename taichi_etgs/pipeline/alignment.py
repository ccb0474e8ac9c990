"""A refined alignment of the views, as the commands report and write it.

``--refine-alignment`` (``reconstruct``, ``wbp``, ``sirt``) writes the correction it
found next to the tomogram: ``<output stem>.xf`` (IMOD's convention, one line per section
of the stack) and ``<output stem>.tlt``, never over the input's own files. ``reconstruct``
refines by default ("auto"): there the files are written only when a view moved and
where they replace nothing (:func:`write_alignment`); the sidecar records the refinement
in every mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import inputs
from .outputs import check_writable
from .session import Session

__all__ = ["alignment_mode", "alignment_paths", "check_alignment_outputs", "not_refined",
           "write_alignment"]


def alignment_mode(refine_alignment: bool | None) -> str:
    """How the refinement was asked for: "on" (True), "auto" (None) or "off" (False)."""
    return {True: "on", None: "auto", False: "off"}[refine_alignment]


def not_refined(mode: str, why: str | None = None) -> dict:
    """The sidecar's record of a run whose views' alignment was not refined."""
    return {"mode": mode, "refined": False, **({"why": why} if why else {})}


def alignment_paths(output: Path) -> tuple[Path, Path]:
    """Where a refined alignment goes: ``<output stem>.xf`` and ``<output stem>.tlt``."""
    return output.with_suffix(".xf"), output.with_suffix(".tlt")


def _input_files(source, series=None) -> list[tuple[Path, str]]:
    """The input's own files a refined alignment must never replace: its angle file (as
    given, or as found next to the stack once ``series`` is read) and its ``.xf``."""
    own = [(Path(p), "angle file") for p in (source.angles, series and series.angles_source)
           if p]
    return own + ([(Path(source.xf), ".xf")] if source.xf else [])


def check_alignment_outputs(source, output: Path | None, force: bool) -> None:
    """Before any work: the refined alignment's files can be written, and are not the
    input's angle file or ``.xf``."""
    if output is None:
        return
    for path in alignment_paths(output):
        for file, what in _input_files(source):
            if inputs.same_file(path, file):
                raise InputError(f"--refine-alignment would write over the input's {what} "
                                 f"{path}: choose another output name")
        check_writable(path, force)


def _refusal(source, series, output: Path, force: bool,
             existing: bool) -> tuple[Path, str] | None:
    """The first of the refined alignment's files that is left unwritten, with why: the
    input's own files (whatever ``force`` says: nobody asked for them to be replaced)
    and, with ``existing`` (the auto mode, whose files were not checked before the run)
    and without ``force``, any existing file."""
    for path in alignment_paths(output):
        for file, what in _input_files(source, series):
            if inputs.same_file(path, file):
                return path, f"is the input's {what}"
        if existing and path.exists() and not force:
            return path, "exists (--force replaces it)"
    return None


def write_alignment(session: Session, alignment, tilts_deg, output: Path | None,
                    source, force: bool, series, n_raw: int, *, mode: str = "on") -> dict:
    """Report the refined alignment and write it next to the output: one ``.xf`` line and
    one angle per section of the raw stack, as IMOD's tiltalign writes them (a view left
    out of the fit keeps the identity, its correction unknown).

    source: the :class:`~taichi_etgs.pipeline.inputs.StackSource` (its binning; its own
    files, never written over in any mode).
    mode: "on": the files are written unless they are the input's own (checked before
        the run: :func:`check_alignment_outputs`, except an angle file found next to the
        stack); "auto" (or "off" for a resumed run that refines anyway): only when a view
        moved and the files replace neither an input's file nor, without ``force``, an
        existing one. Else a warning: the sidecar holds the shifts.

    Returns the sidecar's record: the mode, the shifts, whether any view moved, and the
    files written or why none were.
    """
    from ..io.angles import write_tilt_angles
    from ..io.transforms import write_xf
    from ..provenance import sidecar_path

    kept = np.asarray(series.kept_views)
    xf = np.zeros((n_raw, 2, 3))
    xf[:, 0, 0] = xf[:, 1, 1] = 1.0
    xf[kept] = alignment.xf()
    xf[:, :, 2] *= source.binning  # the input stack's pixels, not the binned views'
    shifts = alignment.shifts_px * source.binning
    moved = bool(np.any(shifts) or alignment.axis_deg)
    record = {"mode": mode, "refined": True, "moved": moved, "views": kept.tolist(),
              "shifts_px": shifts.round(4).tolist(), "axis_deg": float(alignment.axis_deg),
              "rms_shift_px": float(np.sqrt(np.mean(shifts ** 2)))}
    if alignment.axis_left:
        record["axis_left"] = alignment.axis_left
    always = mode == "on"
    if moved or always:
        turned = (f"; tilt axis turned by {alignment.axis_deg:+.2f} deg"
                  if alignment.axis_deg else "")
        session.tell(f"alignment refined: residual shifts {record['rms_shift_px']:.2f} px "
                     f"rms (largest {np.abs(shifts).max():.2f} px){turned}")
        if alignment.axis_left:
            # Most tilt series run past the field of view: say that their axis is the
            # user's, so that an error in it is looked for where it can be found.
            session.tell(f"tilt-axis angle left as given: {alignment.axis_left}; give the "
                         f"one your alignment program found")
    else:
        session.tell("alignment checked: the views are aligned within the noise and are "
                     "used as given")
    refusal = None
    if output is None:
        refusal = "no output file"
    elif not (moved or always):
        refusal = "no view moved"
    else:
        # An angle file found next to the stack is known only now: never written over,
        # in any mode.
        clash = _refusal(source, series, output, force, existing=not always)
        if clash is not None:
            path, why = clash
            refusal = f"{path} {why}"
            names = " and ".join(p.name for p in alignment_paths(output))
            session.warn(f"{path} {why}: the refined alignment ({names}) is not written; "
                         f"its shifts are in {sidecar_path(output)}")
    if refusal is not None:
        record["not_written"] = refusal
    else:
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
