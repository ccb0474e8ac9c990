"""Per-view defocus files: IMOD ctfplotter ``.defocus``, CTFFIND4 output, AreTomo3 ``_CTF.txt``.

Every reader returns a :class:`DefocusSeries`: one defocus per view of the raw stack, in
micrometres, positive = underfocus, with the astigmatism where the file gives it. The
format is told from the content (the ``# Columns:`` comment of CTFFIND4 and AreTomo3, whose
eighth column ``dfHand`` marks AreTomo3; else IMOD's layout), the extension breaking ties.

**IMOD** (``.defocus``, written by ``ctfplotter``, read by ``ctfphaseflip``): one line per
view or range of views, ``START END ANGLE1 ANGLE2 DEFOCUS ...``, views numbered from 1,
defocus in nanometres (positive: underfocus), angles in degrees.

- Version 2: the first line ends with an extra ``2``; otherwise as the rest.
- Version 3: a header line ``FLAGS 0 0. 0. 0 3`` (six numbers, the last the version 3).
  FLAGS adds up: 1 astigmatism (``DEFOCUS1 DEFOCUS2 ASTIG_ANGLE`` instead of ``DEFOCUS``),
  2 the astigmatism angle in radians (else degrees), 4 a phase shift column after the
  defocus, 8 that phase shift in radians (else degrees), 16 a cut-on frequency column
  last. Phase shift and cut-on are read and ignored (phase plates: not modelled).
- A line covering several views (``START < END``: ctfplotter fitted them together) gives
  the defocus at the middle of that range; views in between two such centres are
  interpolated linearly, views before the first or after the last take the nearest
  value, as ctfphaseflip does.

**CTFFIND4** (``diagnostic_output.txt``; one row per image of a stack, in stack order):
comment lines starting with ``#`` (``# Columns: #1 - micrograph number; #2 - defocus 1
[Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; #5 - additional phase shift
[radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were
fit successfully``), then rows of 7 numbers; defocus in Angstrom.

**AreTomo3** (``TS_CTF.txt``): as CTFFIND4 with an eighth column ``dfHand``, one row per
image of the tilt series it processed, numbered from 1 (0 accepted: the numbers are taken
relative to the first, as AreTomo3's own loader does). What AreTomo3's source writes
(``CSaveCtfResults``: ``%4d %8.2f %8.2f %8.2f %9.4f %8.4f %8.4f %3d``: number, defocus
max and min in A, azimuth in degrees, phase shift in radians, score, resolution, hand).
Assumed, not checked against AreTomo3's behaviour: the rows follow the sections of the
stack the user gives (dark frames included); a file with one row per kept view is also
accepted (:func:`match_views`).

Astigmatism: defocus 1 lies along the azimuth, defocus 2 across it; the azimuth is the
angle of the defocus-1 axis from the image X axis (columns) towards +Y (rows), in
degrees: ``df(phi) = (df1 + df2)/2 + (df1 - df2)/2 cos 2(phi - azimuth)`` for a spatial
frequency at angle ``phi``. :attr:`DefocusSeries.defocus_um` is the mean ``(df1 + df2)/2``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError
from ._files import parse_float, read_text_lines

__all__ = ["DefocusSeries", "match_views", "read_defocus", "write_imod_defocus"]

_FORMATS = ("imod", "ctffind4", "aretomo3")
# Largest plausible |defocus|, micrometres: beyond it the file's units are wrong.
_MAX_DEFOCUS_UM = 100.0
_IMOD_FLAGS = 1 | 2 | 4 | 8 | 16


@dataclass(frozen=True)
class DefocusSeries:
    """Defocus per view, micrometres, positive = underfocus.

    defocus_um: the mean defocus of each view, ``(df1 + df2) / 2``. [n]
    defocus1_um, defocus2_um, astigmatism_deg: the astigmatism (defocus along and across
        the azimuth, the azimuth from image X towards +Y), or None when the file has none.
    path: the file; format: "imod", "ctffind4", "aretomo3" or "value" (one number).
    lines: the file's line giving each view (0 where interpolated or none). [n]
    """

    defocus_um: np.ndarray
    defocus1_um: np.ndarray | None = None
    defocus2_um: np.ndarray | None = None
    astigmatism_deg: np.ndarray | None = None
    path: str = ""
    format: str = "value"
    lines: np.ndarray | None = None

    @property
    def n_views(self) -> int:
        return int(self.defocus_um.size)

    @property
    def astigmatic(self) -> bool:
        return self.defocus1_um is not None and bool(
            np.any(self.defocus1_um != self.defocus2_um))

    def select(self, index) -> DefocusSeries:
        """The views ``index`` (e.g. the views a stack keeps), in that order."""
        index = np.asarray(index, dtype=np.int64)

        def pick(a):
            return None if a is None else np.asarray(a)[index]

        return replace(self, defocus_um=self.defocus_um[index], defocus1_um=pick(self.defocus1_um),
                       defocus2_um=pick(self.defocus2_um),
                       astigmatism_deg=pick(self.astigmatism_deg), lines=pick(self.lines))

    @classmethod
    def uniform(cls, defocus_um: float, n_views: int) -> DefocusSeries:
        """One value for every view."""
        return cls(np.full(int(n_views), float(defocus_um)))


def _number(token: str, p: Path, line: int, what: str) -> float:
    value = parse_float(token)
    if value is None or not np.isfinite(value):
        raise InputError(f"'{token}' is not a number; expected {what}", p, line)
    return value


def _data_lines(lines: list[str]) -> list[tuple[int, list[str]]]:
    """``(line number, tokens)`` of the non-blank lines that are not ``#`` comments."""
    out = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip().lstrip("\ufeff")
        if text and not text.startswith("#"):
            out.append((number, text.split()))
    return out


def detect_format(path: str | PathLike, lines: list[str]) -> str:
    """"imod", "ctffind4" or "aretomo3", from the content (then the name)."""
    columns = next((s for s in lines if "columns:" in s.lower()), None)
    if columns is not None:
        return "aretomo3" if "dfhand" in columns.lower() else "ctffind4"
    rows = _data_lines(lines)
    name = Path(path).name.lower()
    if rows and len(rows[0][1]) == 8 and name.endswith("_ctf.txt"):
        return "aretomo3"
    if any(s.lstrip().startswith("#") for s in lines):
        return "ctffind4"
    if rows and len(rows[0][1]) in (7, 8) and name.endswith(".txt"):
        return "aretomo3" if len(rows[0][1]) == 8 else "ctffind4"
    return "imod"


def _check_defocus(values_um, p: Path, line: int) -> None:
    for v in values_um:
        if not abs(v) <= _MAX_DEFOCUS_UM:
            raise InputError(f"defocus {v:g} um is beyond {_MAX_DEFOCUS_UM:g} um; check the "
                             f"file's units", p, line)


def _read_imod(p: Path, lines: list[str]) -> DefocusSeries:
    rows = _data_lines(lines)
    expected = "START END ANGLE1 ANGLE2 DEFOCUS(nm) per line (IMOD ctfplotter .defocus)"
    if not rows:
        raise InputError(f"holds no defocus lines; expected {expected}", p)
    flags, first = 0, 0
    head_line, head = rows[0]
    if len(head) == 6 and parse_float(head[5]) == 3.0:
        first = 1  # version 3: the header line
        f = parse_float(head[0])
        if f is None or not float(f).is_integer() or not 0 <= f <= 255:
            raise InputError(f"'{head[0]}' is not a flag value; expected the version 3 header "
                             f"FLAGS 0 0. 0. 0 3 (FLAGS a whole number)", p, head_line)
        flags = int(f)
        if flags & ~_IMOD_FLAGS:
            raise InputError(f"flags {flags} hold bits this reader does not know (1 "
                             f"astigmatism, 2 its angle in radians, 4 phase shift, 8 in "
                             f"radians, 16 cut-on frequency)", p, head_line)
    astig = bool(flags & 1)
    n_cols = 5 + (2 if astig else 0) + (1 if flags & 4 else 0) + (1 if flags & 16 else 0)
    what = ("START END ANGLE1 ANGLE2 DEFOCUS1 DEFOCUS2 ASTIG_ANGLE" if astig
            else "START END ANGLE1 ANGLE2 DEFOCUS") + (" PHASE" if flags & 4 else "") + (
        " CUTON" if flags & 16 else "")
    centres, d1, d2, az, numbers = [], [], [], [], []
    for k, (number, tokens) in enumerate(rows[first:]):
        count = len(tokens)
        if not first and k == 0 and count == 6 and parse_float(tokens[5]) == 2.0:
            tokens = tokens[:5]  # version 2: the first line ends with its version
            count = 5
        if count != n_cols:
            raise InputError(f"has {count} values; expected {n_cols}: {what} (views from 1, "
                             f"defocus in nm)", p, number)
        values = [_number(t, p, number, what) for t in tokens]
        start, end = values[0], values[1]
        if not (start.is_integer() and end.is_integer() and 1 <= start <= end):
            raise InputError(f"views {tokens[0]} to {tokens[1]}: expected view numbers from 1, "
                             f"START <= END", p, number)
        centres.append(0.5 * (start + end) - 1.0)  # 0-based
        if astig:
            a, b, angle = values[4], values[5], values[6]
            if flags & 2:
                angle = float(np.degrees(angle))
        else:
            a = b = values[4]
            angle = 0.0
        _check_defocus((a / 1e3, b / 1e3), p, number)
        d1.append(a / 1e3)
        d2.append(b / 1e3)
        az.append(angle)
        numbers.append(number)
    if not centres:
        raise InputError(f"has a header but no defocus lines; expected {what}", p)
    order = np.argsort(centres, kind="stable")
    centres_arr = np.asarray(centres)[order]
    if np.any(np.diff(centres_arr) == 0):
        k = int(np.flatnonzero(np.diff(centres_arr) == 0)[0])
        raise InputError(f"gives views centred on {centres_arr[k] + 1:g} twice (also line "
                         f"{numbers[order[k]]})", p, numbers[order[k + 1]])
    n = int(max(np.floor(centres_arr[-1]) + 1, max(
        int(_number(t[1], p, ln, what)) for ln, t in rows[first:])))
    views = np.arange(n, dtype=np.float64)

    def per_view(values):
        return np.interp(views, centres_arr, np.asarray(values, dtype=np.float64)[order])

    line_of = np.zeros(n, dtype=np.int64)
    for c, ln in zip(centres, numbers):
        if float(c).is_integer():
            line_of[int(c)] = ln
    df1, df2 = per_view(d1), per_view(d2)
    if astig:
        # Interpolate the astigmatism as a 2-vector (its angle is modulo 180 degrees).
        amp = np.asarray(d1) - np.asarray(d2)
        theta = np.radians(2.0 * np.asarray(az))
        cx, cy = per_view(amp * np.cos(theta)), per_view(amp * np.sin(theta))
        mean = 0.5 * (df1 + df2)
        half = 0.5 * np.hypot(cx, cy)
        return DefocusSeries(mean, mean + half, mean - half,
                             np.degrees(0.5 * np.arctan2(cy, cx)), str(p), "imod", line_of)
    return DefocusSeries(df1, path=str(p), format="imod", lines=line_of)


def _read_columns(p: Path, lines: list[str], kind: str) -> DefocusSeries:
    rows = _data_lines(lines)
    label = "CTFFIND4" if kind == "ctffind4" else "AreTomo3 _CTF.txt"
    wanted = (7,) if kind == "ctffind4" else (7, 8)
    what = ("NUMBER DEFOCUS1(A) DEFOCUS2(A) AZIMUTH PHASE_SHIFT CC RESOLUTION"
            + (" DFHAND" if kind == "aretomo3" else "") + f" per row ({label})")
    if not rows:
        raise InputError(f"holds no rows; expected {what}", p)
    numbers, d1, d2, az, line_of = [], [], [], [], []
    for number, tokens in rows:
        if len(tokens) not in wanted:
            raise InputError(f"has {len(tokens)} values; expected {wanted[-1]}: {what}", p,
                             number)
        values = [_number(t, p, number, what) for t in tokens]
        if not values[0].is_integer():
            raise InputError(f"'{tokens[0]}' is not an image number; expected {what}", p,
                             number)
        _check_defocus((values[1] / 1e4, values[2] / 1e4), p, number)
        numbers.append(int(values[0]))
        d1.append(values[1] / 1e4)
        d2.append(values[2] / 1e4)
        az.append(values[3])
        line_of.append(number)
    base = min(numbers)
    expected_number = base
    for n_, ln in zip(numbers, line_of):
        if n_ != expected_number:
            raise InputError(f"image number {n_}: expected {expected_number} (one row per "
                             f"image of the stack, in stack order, numbered from "
                             f"{base})", p, ln)
        expected_number += 1
    a, b = np.asarray(d1), np.asarray(d2)
    return DefocusSeries(0.5 * (a + b), a, b, np.asarray(az, dtype=np.float64), str(p), kind,
                         np.asarray(line_of, dtype=np.int64))


def read_defocus(path: str | PathLike, fmt: str | None = None) -> DefocusSeries:
    """Read a per-view defocus file (IMOD, CTFFIND4 or AreTomo3, told from the content).

    Parameters
    ----------
    path: the file.
    fmt: "imod", "ctffind4" or "aretomo3" to skip the detection.

    Returns
    -------
    :class:`DefocusSeries`: one entry per view of the stack the file was made for (IMOD:
    up to the highest view it names).

    Raises
    ------
    InputError: missing, binary or empty file; a line with the wrong number of values, a
        value that is not a number, view numbers out of order or repeated, a defocus
        beyond 100 um (wrong units): the message names the file, the line and what was
        expected.
    """
    p, lines = read_text_lines(path, "a defocus file (IMOD .defocus, CTFFIND4 or AreTomo3 "
                                     "_CTF.txt)")
    kind = fmt or detect_format(p, lines)
    if kind not in _FORMATS:
        raise InputError(f"unknown defocus format {kind!r}; expected one of "
                         f"{', '.join(_FORMATS)}", p)
    if kind == "imod":
        return _read_imod(p, lines)
    return _read_columns(p, lines, kind)


def match_views(defocus: DefocusSeries, n_raw: int, kept_views) -> DefocusSeries:
    """The defocus of the views a tilt series keeps, as its angles are matched.

    A file with one entry per section of the raw stack (``n_raw``) is indexed with
    ``kept_views`` (views excluded with ``--exclude-views`` or dropped by an ``.aln``
    drop out); a file with one entry per kept view is taken in order. An IMOD file may
    stop short of the last views (ctfplotter did not fit them): they take the last value.

    Raises InputError (naming the file) when the counts fit neither.
    """
    kept = np.asarray(kept_views, dtype=np.int64)
    n = defocus.n_views
    if defocus.format == "imod" and n <= n_raw:
        if n < n_raw:
            pad = np.concatenate([np.arange(n), np.full(n_raw - n, n - 1)])
            defocus = defocus.select(pad)
        return defocus.select(kept)
    if n == n_raw:
        return defocus.select(kept)
    if n == kept.size:
        return defocus
    where = "views (up to view " + str(n) + ")" if defocus.format == "imod" else "rows"
    raise InputError(f"gives {n} {where} but the stack has {n_raw} sections"
                     + (f" ({kept.size} kept)" if kept.size != n_raw else "")
                     + ": expected one per section of the stack", defocus.path or None)


def write_imod_defocus(path: str | PathLike, tilts_deg, defocus_um,
                       defocus2_um=None, astigmatism_deg=None) -> None:
    """Write an IMOD ``.defocus`` (version 3 header, one line per view, nm), atomically.

    With ``defocus2_um`` the astigmatism columns are written (flag 1, angle in degrees).
    """
    from .._atomic import write_text_atomic

    tilts = np.asarray(tilts_deg, dtype=np.float64)
    d1 = np.asarray(defocus_um, dtype=np.float64) * 1e3
    astig = defocus2_um is not None
    out = [f"{1 if astig else 0} 0 0. 0. 0 3"]
    for i, (t, a) in enumerate(zip(tilts, d1), start=1):
        if astig:
            b = float(np.asarray(defocus2_um)[i - 1]) * 1e3
            angle = 0.0 if astigmatism_deg is None else float(np.asarray(astigmatism_deg)[i - 1])
            out.append(f"{i} {i} {t:.2f} {t:.2f} {a:.2f} {b:.2f} {angle:.2f}")
        else:
            out.append(f"{i} {i} {t:.2f} {t:.2f} {a:.2f}")
    write_text_atomic(path, "\n".join(out) + "\n")
