"""AreTomo alignment files (``.aln``): per-view tilt angle, tilt-axis angle and shift.

Format (AreTomo 1.x/2, AreTomo3)::

    # AreTomo Alignment / Priims bprmMn
    # RawSize = 4096 4096 41
    # NumPatches = 0
    # DarkFrame =     0    0   -60.00
    # AlphaOffset =     0.00
    # SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
        1    85.1234    1.00000     12.345     -6.789     1.00     1.00     1.00     0.00    -57.00
      ...
    # Local Alignment
       0   0 -1537.16  -1363.14     -6.93    -36.22   1.0

Comment lines start with ``#``. One row of 10 columns per view kept by AreTomo; the
``DarkFrame`` lines list the views it dropped. Everything from the first comment line
after the rows on (the ``# Local Alignment`` patch block) is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike

import numpy as np

from ..errors import InputError
from ._files import parse_float, read_text_lines

__all__ = ["AlnAlignment", "read_aln"]

_COLUMNS = "SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT"
_N_COLUMNS = 10


@dataclass(frozen=True)
class AlnAlignment:
    """The global alignment of an AreTomo ``.aln`` file, one entry per row (kept view).

    Attributes
    ----------
    section
        0-based index of each row's view in the raw (input) stack. [n]
    rot_deg
        ROT: tilt-axis angle from the image Y axis, degrees. [n]
    gmag
        GMAG: magnification factor (AreTomo writes 1.0). [n]
    tx, ty
        TX, TY: shift of the view, pixels of the raw stack. [n]
    tilt_deg
        TILT: tilt angle, degrees. [n]
    dark_sections
        0-based raw-stack indices of the views AreTomo dropped (``DarkFrame``). [m]
    raw_size
        ``(nx, ny, n_sections)`` of the raw stack from ``# RawSize``, or None.
    sec_column
        The SEC column as written (numbering differs between AreTomo versions). [n]
    lines
        1-based line number of each row, for error messages. [n]
    path
        The file read.
    """

    section: np.ndarray
    rot_deg: np.ndarray
    gmag: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    tilt_deg: np.ndarray
    dark_sections: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    raw_size: tuple[int, int, int] | None = None
    sec_column: np.ndarray | None = None
    lines: np.ndarray | None = None
    path: str = ""

    def __len__(self) -> int:
        return int(self.section.shape[0])


def _ints_after_equals(text: str, count: int, path, line: int, key: str) -> list[int]:
    tokens = text.split("=", 1)[1].split() if "=" in text else []
    values = []
    for tok in tokens[:count]:
        v = parse_float(tok)
        if v is None or not float(v).is_integer():
            break
        values.append(int(v))
    if len(values) < count:
        raise InputError(f"malformed '# {key}' line: expected {count} whole numbers after "
                         f"'='", path, line)
    return values


def resolve_aln_sections(sec_column: np.ndarray, dark_sections: np.ndarray, n_raw: int,
                         path, lines: np.ndarray | None = None) -> np.ndarray:
    """Map the SEC column to 0-based indices into a raw stack of ``n_raw`` sections.

    AreTomo 1.x/2 write SEC as the 0-based section of the input stack (the dark
    frames' numbers are simply absent). AreTomo3 renumbers the kept views 0.. (or 1..)
    after removing the dark frames. The first reading is used when it is consistent
    (every SEC a valid section, none of them a dark frame); otherwise the rows are
    taken, in order, as the raw sections that are not dark frames.

    Raises InputError when the rows and dark frames do not account for the stack.
    """
    sec = np.asarray(sec_column, dtype=np.int64)
    dark = np.asarray(dark_sections, dtype=np.int64)
    needed = n_raw - len(set(dark.tolist()))
    if len(sec) < needed:
        raise InputError(f"has {len(sec)} alignment rows but the stack needs {needed} "
                         f"({n_raw} sections, {n_raw - needed} dark frames listed)", path)
    if len(sec) > needed:
        raise InputError(f"has {len(sec)} alignment rows, more than the {needed} the stack "
                         f"can use ({n_raw} sections, {n_raw - needed} dark frames listed); "
                         f"is it the .aln of another stack?", path)
    if dark.size and (dark.min() < 0 or dark.max() >= n_raw):
        raise InputError(f"lists dark frames outside the stack's sections 0-{n_raw - 1}", path)
    in_range = sec.size == 0 or (sec.min() >= 0 and sec.max() < n_raw)
    distinct = len(set(sec.tolist())) == len(sec)
    if in_range and distinct and not (set(sec.tolist()) & set(dark.tolist())):
        return sec
    if np.all(np.diff(sec) > 0):
        dark_set = set(dark.tolist())
        return np.array([i for i in range(n_raw) if i not in dark_set], dtype=np.int64)
    bad_line = None
    if lines is not None and len(lines):
        order_break = np.nonzero(np.diff(sec) <= 0)[0]
        bad_line = int(lines[order_break[0] + 1]) if order_break.size else None
    raise InputError("SEC values are neither distinct sections of the stack nor in "
                     "increasing order; cannot tell which view each row belongs to",
                     path, bad_line)


def read_aln(path: str | PathLike) -> AlnAlignment:
    """Read the global alignment of an AreTomo ``.aln`` file.

    Parameters
    ----------
    path
        The ``.aln`` file.

    Returns
    -------
    AlnAlignment
        One entry per data row. ``section`` is resolved against ``# RawSize`` when
        the file has one (see :func:`resolve_aln_sections`), else it is the SEC column.

    Raises
    ------
    InputError
        Missing file, a row without exactly 10 columns, a non-numeric value, a SEC
        that is not a whole number >= 0, malformed ``RawSize``/``DarkFrame`` lines, no
        rows at all, or rows and dark frames that do not account for ``RawSize``.

    Notes
    -----
    For ``# DarkFrame = a b tilt`` the second number is taken as the raw-stack
    section: AreTomo writes (frame index in tilt order, section index in the input
    file), and RELION reads it the same way. GMAG, SMEAN, SFIT, SCALE and BASE are
    kept or ignored as documented in :class:`AlnAlignment`.
    """
    p, lines = read_text_lines(path, "an AreTomo .aln file")
    rows: list[list[float]] = []
    row_lines: list[int] = []
    dark: list[int] = []
    raw_size: tuple[int, int, int] | None = None
    for number, raw in enumerate(lines, start=1):
        text = raw.strip().lstrip("\ufeff")
        if not text:
            continue
        if text.startswith("#"):
            if rows:
                break  # the local-alignment block (or anything else) follows the rows
            key = text.lstrip("#").strip().split("=", 1)[0].strip()
            if key == "RawSize":
                nx, ny, nz = _ints_after_equals(text, 3, p, number, key)
                raw_size = (nx, ny, nz)
            elif key == "DarkFrame":
                dark.append(_ints_after_equals(text, 2, p, number, key)[1])
            continue
        tokens = text.split()
        if len(tokens) != _N_COLUMNS:
            raise InputError(f"expected {_N_COLUMNS} columns ({_COLUMNS}), found "
                             f"{len(tokens)}", p, number)
        values = []
        for tok in tokens:
            v = parse_float(tok)
            if v is None:
                raise InputError(f"'{tok}' is not a number (expected the columns {_COLUMNS})",
                                 p, number)
            values.append(v)
        if not (float(values[0]).is_integer() and values[0] >= 0):
            raise InputError(f"SEC '{tokens[0]}' is not a section number (a whole number "
                             f">= 0)", p, number)
        rows.append(values)
        row_lines.append(number)
    if not rows:
        raise InputError(f"has no alignment rows (expected lines of {_COLUMNS})", p)
    table = np.array(rows, dtype=np.float64)
    sec_column = table[:, 0].astype(np.int64)
    dark_arr = np.array(sorted(set(dark)), dtype=np.int64)
    line_arr = np.array(row_lines, dtype=np.int64)
    if raw_size is not None:
        section = resolve_aln_sections(sec_column, dark_arr, raw_size[2], p, line_arr)
    else:
        section = sec_column.copy()
    return AlnAlignment(
        section=section, rot_deg=table[:, 1], gmag=table[:, 2], tx=table[:, 3],
        ty=table[:, 4], tilt_deg=table[:, 9], dark_sections=dark_arr, raw_size=raw_size,
        sec_column=sec_column, lines=line_arr, path=str(p),
    )
