"""Per-view exposure: SerialEM ``.mdoc`` (``ExposureDose``, ``PriorRecordDose``) and the
two-column ``.dose`` file the simulator writes.

Every reader returns a :class:`DoseSeries`: for each view of the raw stack the exposure
of that view and the exposure the area had received before it, both in electrons per
A^2. The exposure a view's image carries on average is ``prior + dose / 2``
(:attr:`DoseSeries.exposure_e_per_A2`, the value the exposure filter takes, as the
simulator applies it).

**SerialEM** ``.mdoc``: each ``[ZValue = n]`` section's ``ExposureDose`` (the dose of
that image; 0 in every section when SerialEM had no dose calibration) and
``PriorRecordDose`` (the dose of the Record images taken before it on the area). The
prior dose comes from ``PriorRecordDose`` where every section has it, else from the
sections' ``DateTime`` (``30-Nov-26  15:30:19``: the doses summed in the order they
were taken), else from an acquisition order given by the caller (``--tilt-order``).

**Two-column** ``.dose`` (written by ``taichi-etgs simulate`` as ``tilts.dose``): one line
per section of the stack, ``DOSE PRIOR_DOSE`` in e/A^2; ``#`` comments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._files import parse_float, read_text_lines

__all__ = ["DoseSeries", "match_views", "read_dose", "write_dose"]

# Largest plausible exposure of one view, e/A^2: beyond it the units are wrong.
_MAX_VIEW_DOSE = 1000.0
_DATE_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class DoseSeries:
    """Exposure per view, e/A^2.

    dose_e_per_A2: the exposure of each view. [n]
    prior_dose_e_per_A2: the exposure received before each view. [n]
    path: the file ("" for values computed from ``--dose-per-tilt``); format: "mdoc",
        "columns" or "order" (``--dose-per-tilt`` with an acquisition order).
    lines: the file's line giving each view (0 where none). [n]
    """

    dose_e_per_A2: np.ndarray
    prior_dose_e_per_A2: np.ndarray
    path: str = ""
    format: str = "order"
    lines: np.ndarray | None = None

    @property
    def n_views(self) -> int:
        return int(self.dose_e_per_A2.size)

    @property
    def exposure_e_per_A2(self) -> np.ndarray:
        """The exposure an image carries on average: ``prior + dose / 2``. [n]"""
        return self.prior_dose_e_per_A2 + 0.5 * self.dose_e_per_A2

    def select(self, index) -> DoseSeries:
        """The views ``index`` (e.g. the views a stack keeps), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return replace(self, dose_e_per_A2=self.dose_e_per_A2[index],
                       prior_dose_e_per_A2=self.prior_dose_e_per_A2[index],
                       lines=None if self.lines is None else self.lines[index])

    @classmethod
    def from_order(cls, dose_per_view, sequence) -> DoseSeries:
        """Doses (one value, or one per view in stack order) taken in the order
        ``sequence`` (stack indices in acquisition order: the prior dose of a view is the
        sum of the doses before it)."""
        sequence = np.asarray(sequence, dtype=np.int64)
        n = sequence.size
        dose = np.broadcast_to(np.asarray(dose_per_view, dtype=np.float64), (n,)).copy()
        prior = np.empty(n)
        prior[sequence] = np.concatenate([[0.0], np.cumsum(dose[sequence])[:-1]])
        return cls(dose, prior)


def _check(value: float, p: Path, line: int, what: str) -> None:
    if not (np.isfinite(value) and 0 <= value):
        raise InputError(f"{what} {value:g} is not a number >= 0 (e/A^2)", p, line)
    if what != "PriorRecordDose" and value > _MAX_VIEW_DOSE:
        raise InputError(f"{what} {value:g} e/A^2 for one view is implausible (expected "
                         f"electrons per A^2, at most {_MAX_VIEW_DOSE:g})", p, line)


def _parse_time(text: str, p: Path, line: int) -> datetime:
    compact = " ".join(text.split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(compact, fmt)
        except ValueError:
            continue
    raise InputError(f"DateTime '{text}' is not a date; expected SerialEM's "
                     f"'DD-Mon-YY  HH:MM:SS'", p, line)


def _read_mdoc(path: str | PathLike, sequence=None) -> DoseSeries:
    from .angles import read_mdoc

    info = read_mdoc(path)
    p = info["path"]
    exposure, prior, times = info["exposure_dose"], info["prior_dose"], info["date_time"]
    if exposure is None:
        raise InputError("has no ExposureDose in its sections; expected SerialEM's dose "
                         "per image (or pass --dose-per-tilt)", p)
    n = len(exposure)
    for z, entry in enumerate(exposure):
        if entry is None:
            raise InputError(f"section [ZValue = {z}] has no ExposureDose; expected one "
                             f"in every section", p)
        _check(entry[0], p, entry[1], "ExposureDose")
    dose = np.array([e[0] for e in exposure], dtype=np.float64)
    lines = np.array([e[1] for e in exposure], dtype=np.int64)
    if not np.any(dose > 0):
        raise InputError("ExposureDose is 0 in every section: SerialEM had no dose "
                         "calibration; pass --dose-per-tilt instead", p)
    if prior is not None and all(e is not None for e in prior):
        for value, line in prior:
            _check(value, p, line, "PriorRecordDose")
        return DoseSeries(dose, np.array([e[0] for e in prior], dtype=np.float64), str(p),
                          "mdoc", lines)
    if times is not None and all(e is not None for e in times):
        stamps = [_parse_time(text, p, line).timestamp() for text, line in times]
        order = np.argsort(np.asarray(stamps), kind="stable")
        return replace(DoseSeries.from_order(dose, order), path=str(p), format="mdoc",
                       lines=lines)
    if sequence is not None:
        sequence = np.asarray(sequence, dtype=np.int64)
        if sequence.size != n:
            raise InputError(f"has {n} sections but the acquisition order covers "
                             f"{sequence.size} views", p)
        return replace(DoseSeries.from_order(dose, sequence), path=str(p), format="mdoc",
                       lines=lines)
    raise InputError("gives no PriorRecordDose or DateTime in every section, so the order "
                     "of exposure is unknown; expected them, or pass --tilt-order", p)


def _read_columns(p: Path, lines: list[str]) -> DoseSeries:
    dose, prior, numbers = [], [], []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        tokens = text.split()
        if len(tokens) != 2:
            raise InputError(f"has {len(tokens)} values; expected two per line, the dose of "
                             f"the view and the dose before it (e/A^2)", p, number)
        values = []
        for token, what in zip(tokens, ("dose", "prior dose")):
            v = parse_float(token)
            if v is None:
                raise InputError(f"'{token}' is not a number; expected the {what} in e/A^2",
                                 p, number)
            _check(v, p, number, what if what == "dose" else "PriorRecordDose")
            values.append(v)
        dose.append(values[0])
        prior.append(values[1])
        numbers.append(number)
    if not dose:
        raise InputError("has no lines; expected one line 'DOSE PRIOR_DOSE' (e/A^2) per view",
                         p)
    return DoseSeries(np.array(dose), np.array(prior), str(p), "columns",
                      np.array(numbers, dtype=np.int64))


def read_dose(path: str | PathLike, sequence=None) -> DoseSeries:
    """The exposure of each section of a stack from a SerialEM ``.mdoc`` or a two-column
    ``.dose`` file (told by the content: ``[ZValue`` sections make an mdoc).

    ``sequence``: the acquisition order (stack indices, first acquired first), used for an
    ``.mdoc`` that gives neither ``PriorRecordDose`` nor ``DateTime``.

    Raises InputError naming the file, the line and what was expected.
    """
    p, lines = read_text_lines(path, "a dose file (SerialEM .mdoc or DOSE PRIOR_DOSE lines)")
    if any(line.lstrip("\ufeff").lstrip().startswith("[ZValue") for line in lines) \
            or p.suffix.lower() == ".mdoc":
        return _read_mdoc(p, sequence)
    return _read_columns(p, lines)


def match_views(dose: DoseSeries, n_raw: int, kept_views) -> DoseSeries:
    """The exposure of the views a tilt series keeps, as its angles are matched: a file
    with one entry per section of the raw stack is indexed with ``kept_views``, one with
    an entry per kept view is taken in order.

    Raises InputError (naming the file) when the counts fit neither.
    """
    kept = np.asarray(kept_views, dtype=np.int64)
    if dose.n_views == n_raw:
        return dose.select(kept)
    if dose.n_views == kept.size:
        return dose
    raise InputError(f"gives the dose of {dose.n_views} views but the stack has {n_raw} "
                     f"sections" + (f" ({kept.size} kept)" if kept.size != n_raw else "")
                     + ": expected one per section of the stack", dose.path or None)


def write_dose(path: str | PathLike, dose_e_per_A2, prior_dose_e_per_A2) -> None:
    """Write a two-column ``.dose`` file (one line per view: dose, prior dose), atomically."""
    from .._atomic import write_text_atomic

    dose = np.asarray(dose_e_per_A2, dtype=np.float64)
    prior = np.asarray(prior_dose_e_per_A2, dtype=np.float64)
    out = ["# dose prior_dose (e/A^2), one line per view in stack order"]
    out += [f"{d:.8g} {q:.8g}" for d, q in zip(dose, prior)]
    write_text_atomic(path, "\n".join(out) + "\n")
