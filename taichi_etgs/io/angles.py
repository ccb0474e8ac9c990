"""Tilt-angle files: IMOD ``.tlt``/``.rawtlt``, SerialEM ``.mdoc``, AreTomo ``.aln``."""

from __future__ import annotations

import re
import warnings
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._files import parse_float, read_text_lines
from .aln import read_aln

__all__ = ["AngleWarning", "check_tilt_angles", "looks_like_radians", "read_mdoc",
           "read_tilt_angles", "write_tilt_angles"]

# Below this largest |angle| (degrees) a tilt series is almost surely given in radians.
_RADIANS_SUSPICION_DEG = 2.0
_ZVALUE = re.compile(r"\[\s*ZValue\s*=\s*([^\]]*?)\s*\]")
# SerialEM's title line: [T = ... Tilt axis angle = 85.3, binning = 1 ...]
_TITLE_AXIS = re.compile(r"Tilt\s+axis\s+angle\s*=\s*([-+0-9.eE]+)", re.IGNORECASE)


class AngleWarning(UserWarning):
    """Tilt angles that are readable but suspicious (radians? duplicates?)."""


def _read_one_per_line(path: str | PathLike) -> tuple[Path, np.ndarray, np.ndarray]:
    p, lines = read_text_lines(path, "a tilt-angle file (one angle per line)")
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    if last < 0:
        raise InputError("is empty; expected one tilt angle in degrees per line", p)
    values, numbers = [], []
    for number, raw in enumerate(lines[: last + 1], start=1):
        tokens = raw.split()
        if not tokens:
            raise InputError("is a blank line; expected one tilt angle in degrees per line "
                             "(blank lines are allowed only at the end)", p, number)
        if len(tokens) != 1:
            raise InputError(f"has {len(tokens)} values; expected one tilt angle in degrees "
                             f"per line", p, number)
        v = parse_float(tokens[0])
        if v is None:
            raise InputError(f"'{tokens[0]}' is not a number; expected one tilt angle in "
                             f"degrees per line", p, number)
        values.append(v)
        numbers.append(number)
    return p, np.array(values, dtype=np.float64), np.array(numbers, dtype=np.int64)


def _parse_mdoc(path: str | PathLike) -> tuple[Path, dict, np.ndarray]:
    p, lines = read_text_lines(path, "a SerialEM .mdoc file")
    global_spacing: float | None = None
    global_axis: float | None = None
    title_axis: float | None = None
    section_axes: list[float] = []
    sections: dict[int, dict] = {}
    current: dict | None = None
    for number, raw in enumerate(lines, start=1):
        text = raw.strip().lstrip("\ufeff")
        if not text:
            continue
        if text.startswith("["):
            match = _ZVALUE.fullmatch(text)
            if match is None:
                current = None  # [T = ...] titles or other section types: not tilts
                axis = _TITLE_AXIS.search(text)
                if axis is not None and title_axis is None:
                    title_axis = parse_float(axis.group(1))
                continue
            z = parse_float(match.group(1))
            if z is None or not float(z).is_integer() or z < 0:
                raise InputError(f"'{match.group(1)}' is not a valid ZValue (a whole number "
                                 f">= 0)", p, number)
            z = int(z)
            if z in sections:
                raise InputError(f"[ZValue = {z}] appears twice (first on line "
                                 f"{sections[z]['line']})", p, number)
            current = {"line": number, "tilt": None, "tilt_line": None, "spacing": None,
                       "ExposureDose": None, "PriorRecordDose": None, "DateTime": None}
            sections[z] = current
            continue
        key, sep, value = text.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "PixelSpacing":
            spacing = parse_float(value.split()[0]) if value.split() else None
            if spacing is None:
                raise InputError(f"PixelSpacing '{value}' is not a number", p, number)
            if current is None:
                global_spacing = spacing if global_spacing is None else global_spacing
            else:
                current["spacing"] = spacing
        elif key in ("RotationAngle", "TiltAxisAngle"):
            axis = parse_float(value.split()[0]) if value.split() else None
            if axis is None:
                raise InputError(f"{key} '{value}' is not a number", p, number)
            if current is not None:
                section_axes.append(axis)
            elif global_axis is None:
                global_axis = axis
        elif key == "TiltAngle" and current is not None:
            tilt = parse_float(value.split()[0]) if value.split() else None
            if tilt is None:
                raise InputError(f"TiltAngle '{value}' is not a number", p, number)
            current["tilt"], current["tilt_line"] = tilt, number
        elif key in ("ExposureDose", "PriorRecordDose") and current is not None:
            dose = parse_float(value.split()[0]) if value.split() else None
            if dose is None or not np.isfinite(dose) or dose < 0:
                raise InputError(f"{key} '{value}' is not a number >= 0; expected the "
                                 f"exposure in electrons per A^2", p, number)
            current[key] = (dose, number)
        elif key == "DateTime" and current is not None:
            current["DateTime"] = (value, number)
    if not sections:
        raise InputError("has no [ZValue = n] sections; expected a SerialEM tilt-series .mdoc",
                         p)
    z_values = sorted(sections)
    for z in z_values:
        if sections[z]["tilt"] is None:
            raise InputError(f"section [ZValue = {z}] has no TiltAngle", p,
                             sections[z]["line"])
    missing = sorted(set(range(len(z_values))) - set(z_values))
    if missing:
        raise InputError(f"ZValues should run 0 to {len(z_values) - 1} (one per stack "
                         f"section) but {missing[0]} is missing", p)
    if global_spacing is None:
        global_spacing = next((sections[z]["spacing"] for z in z_values
                               if sections[z]["spacing"] is not None), None)
    if section_axes:
        tilt_axis = float(np.median(section_axes))
    else:
        tilt_axis = global_axis if global_axis is not None else title_axis
    result = {
        "tilt_angles_deg": np.array([sections[z]["tilt"] for z in z_values], np.float64),
        "pixel_spacing_A": global_spacing,
        "z_values": np.array(z_values, dtype=np.int64),
        "tilt_axis_deg": tilt_axis,
        "path": p,
    }
    for key, name in (("ExposureDose", "exposure_dose"), ("PriorRecordDose", "prior_dose"),
                      ("DateTime", "date_time")):
        entries = [sections[z][key] for z in z_values]
        result[name] = None if all(e is None for e in entries) else entries
    lines_of_tilts = np.array([sections[z]["tilt_line"] for z in z_values], dtype=np.int64)
    return p, result, lines_of_tilts


def read_mdoc(path: str | PathLike) -> dict:
    """Read a SerialEM tilt-series ``.mdoc``.

    Parameters
    ----------
    path
        The ``.mdoc`` file: ``[ZValue = n]`` sections, each with ``TiltAngle = x``.

    Returns
    -------
    dict
        ``tilt_angles_deg``: float64 angles ordered by ZValue (= stack order). [n]
        ``pixel_spacing_A``: ``PixelSpacing`` (Angstrom) from the file header, else from
        the first section that has one, else None.
        ``z_values``: the ZValues, ``0 .. n-1``. [n]
        ``tilt_axis_deg``: the tilt-axis angle in the images (degrees from the Y axis,
        IMOD's convention): the median of the sections' ``RotationAngle`` (or
        ``TiltAxisAngle``), else the file header's ``TiltAxisAngle``, else the ``Tilt
        axis angle`` of the ``[T = ...]`` title; None when the file gives none.
        ``exposure_dose``, ``prior_dose``, ``date_time``: the sections' ``ExposureDose``,
        ``PriorRecordDose`` (e/A^2) and ``DateTime`` as ``(value, line)`` pairs (None for
        a section without one), or None when no section has one; read by
        :func:`taichi_etgs.io.dose.read_dose`.
        ``path``: the file.

    Raises
    ------
    InputError
        No ZValue sections, a section without TiltAngle, a non-numeric value (a
        negative dose), a repeated ZValue, or ZValues that do not run 0 to n-1 (line numbers given).
    """
    _, result, _ = _parse_mdoc(path)
    return result


def looks_like_radians(angles_deg) -> bool:
    """True when tilt angles given as degrees look like radians: at least two angles,
    not all zero, and the largest |angle| below 2 degrees."""
    angles = np.asarray(angles_deg, dtype=np.float64)
    largest = float(np.max(np.abs(angles))) if angles.size else 0.0
    return angles.size >= 2 and 0.0 < largest < _RADIANS_SUSPICION_DEG


def check_tilt_angles(angles_deg: np.ndarray, path: str | PathLike | None = None,
                      lines: np.ndarray | None = None, n_expected: int | None = None,
                      *, stacklevel: int = 2) -> None:
    """Raise InputError for impossible angles and warn for suspicious ones.

    Every angle must be finite and inside (-90, 90) degrees (exclusive); with
    ``n_expected`` the count must match. Warns :class:`AngleWarning` when there are at
    least two angles, not all zero, and the largest |angle| is below 2 degrees
    (radians given instead of degrees?).
    """
    angles = np.asarray(angles_deg, dtype=np.float64)
    for i, a in enumerate(angles):
        if not (np.isfinite(a) and -90.0 < a < 90.0):
            line = None if lines is None else int(lines[i])
            where = "" if line is not None else f" (angle {i})"
            raise InputError(f"tilt angle {a:g}{where} is outside (-90, 90) degrees", path,
                             line)
    if n_expected is not None and len(angles) != n_expected:
        raise InputError(f"has {len(angles)} angles but the stack has {n_expected} sections",
                         path)
    if looks_like_radians(angles):
        largest = float(np.max(np.abs(angles)))
        prefix = f"{path}: " if path is not None else ""
        warnings.warn(f"{prefix}the largest |tilt angle| is {largest:.3g}; these look like "
                      f"radians, but degrees are expected", AngleWarning,
                      stacklevel=stacklevel + 1)


def read_angle_records(path: str | PathLike) -> tuple[Path, np.ndarray, np.ndarray]:
    """``(path, angles_deg, line_numbers)`` from any supported angle file, unchecked."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mdoc":
        p, result, lines = _parse_mdoc(path)
        return p, result["tilt_angles_deg"], lines
    if suffix == ".aln":
        aln = read_aln(path)
        return Path(aln.path), aln.tilt_deg.copy(), aln.lines
    return _read_one_per_line(path)


def read_tilt_angles(path: str | PathLike, n_expected: int | None = None) -> np.ndarray:
    """Read tilt angles in degrees, in stack order.

    Parameters
    ----------
    path
        ``.tlt`` / ``.rawtlt`` (one angle per line), SerialEM ``.mdoc`` (``TiltAngle``
        per ``[ZValue = n]``), or AreTomo ``.aln`` (``TILT`` column of its rows, i.e.
        only the views AreTomo kept). Any other extension is read as one angle per line.
    n_expected
        The number of stack sections; when given, the count must match.

    Returns
    -------
    np.ndarray
        float64 angles in degrees. [n]

    Raises
    ------
    InputError
        Missing file; a blank or non-numeric line before the last angle (blank lines
        at the end are fine); an angle that is not finite or outside (-90, 90); a count
        that differs from ``n_expected``; format errors of ``.mdoc``/``.aln`` files.
        The message names the file and, for a bad line, its number.

    Warns
    -----
    AngleWarning
        When the largest |angle| is below 2 (at least two angles, not all zero): the
        angles look like radians.
    """
    p, angles, lines = read_angle_records(path)
    check_tilt_angles(angles, p, lines, n_expected, stacklevel=2)
    return angles


def write_tilt_angles(path: str | PathLike, angles_deg, *, force: bool = False) -> Path:
    """Write an IMOD ``.tlt``: one angle per line, degrees, in stack order (atomically;
    an existing file only with ``force``). Four decimals: 0.0001 degree, finer than any
    refinement resolves. Returns the file written."""
    from .._atomic import write_text_atomic
    from ..pipeline.outputs import check_writable

    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if angles.size == 0 or not np.isfinite(angles).all():
        raise ValueError("expected at least one finite tilt angle")
    p = check_writable(path, force)
    write_text_atomic(p, "".join(f"{t:.4f}\n" for t in angles))
    return p
