"""Finding the tilt series of a batch: in folders and globs, or in a CSV or STAR table.

In a folder (or a glob, or a stack named directly) a tilt series is a stack (``.mrc``,
``.st``, ``.ali``) with its files found by stem, as IMOD and AreTomo lay them out:

- angles: ``<stem>.tlt``, else ``<stem>.rawtlt``, else the SerialEM ``<stem>.mdoc`` or
  ``<stem>.mrc.mdoc``; with an AreTomo ``<stem>.aln`` the ``.aln`` gives them;
- ``<stem>.xf``: IMOD's transforms, applied on load to a raw ``.st``/``.mrc``;
- where both ``<stem>.st`` and ``<stem>.ali`` are there, the aligned ``.ali`` is used
  (its ``.xf`` is already applied).

A stack with no angles file beside it is not taken from a folder or glob (tomograms and
other MRC files live there too); named directly it is an error.

A table names one series per row. CSV: a header row, then one row per series; columns
(case-insensitive) ``stack`` (required), ``name``, ``angles``, ``xf``, ``aln``,
``thickness``, ``defocus`` (a defocus file) and ``dose`` (an .mdoc or DOSE PRIOR_DOSE
file); empty cells are not given, relative paths are relative to the table's folder.
STAR: a ``loop_`` of the first data block (``data_global`` when there is one) with the
same columns as ``_stack``, ``_thickness``, ... or RELION's names: ``_rlnTomoName``,
``_rlnTomoTiltSeriesName`` (the stack), ``_rlnTomoSizeZ`` (the thickness in unbinned
pixels, divided by ``--binning``), ``_rlnTomoImportImodDir`` (a folder holding
``<name>.xf`` and ``<name>.tlt``), ``_rlnTomoImportCtfFindFile`` or
``_rlnTomoImportCtfPlotterFile`` (the defocus), as RELION 4's import table names them; a
file's ``:mrc`` type tag (``TS_01.st:mrc``) is dropped, and RELION's other columns
(voltage, optics group, hand, ...) are ignored. RELION 5's tomograms.star names per-tilt
STAR files of single tilt images instead of stacks: refused with a message.
"""

from __future__ import annotations

import csv
import glob
import shlex
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from ..errors import InputError

__all__ = ["STACK_SUFFIXES", "TABLE_SUFFIXES", "Series", "find_series", "read_table"]

STACK_SUFFIXES = (".mrc", ".st", ".ali")
TABLE_SUFFIXES = (".csv", ".star")
_COLUMNS = ("name", "stack", "angles", "xf", "aln", "thickness", "defocus", "dose")
_RELION = {"rlntomoname": "name", "rlntomotiltseriesname": "stack",
           "rlntomosizez": "rln_size_z", "rlntomoimportimoddir": "rln_imod_dir",
           "rlntomoimportctffindfile": "defocus", "rlntomoimportctfplotterfile": "defocus"}
# Stack suffixes in order of preference for one stem: the aligned stack first.
_PREFERENCE = (".ali", ".st", ".mrc")


@dataclass(frozen=True)
class Series:
    """One tilt series of a batch and its files.

    name: what the series is called (the stack's stem): the output is ``<name>.mrc``.
    stack: the MRC stack. angles, xf, aln: its angles and alignment files (None: none,
        or the angles found next to the stack when it is read).
    thickness: its tomogram's NZ in binned voxels (None: the batch's ``--thickness``).
    thickness_unbinned: its NZ in unbinned pixels instead (RELION's ``rlnTomoSizeZ``).
    defocus, dose: its per-view defocus and exposure files (tables only).
    origin: where it was found, for messages ("folder data/", "series.csv, line 4").
    """

    name: str
    stack: Path
    angles: Path | None = None
    xf: Path | None = None
    aln: Path | None = None
    thickness: int | None = None
    thickness_unbinned: int | None = None
    defocus: Path | None = None
    dose: Path | None = None
    origin: str = ""

    def thickness_at(self, binning: int, default: int | None) -> int | None:
        """Its NZ in voxels at ``binning`` (``default`` when the table gives none)."""
        if self.thickness is not None:
            return self.thickness
        if self.thickness_unbinned is not None:
            return max(1, self.thickness_unbinned // max(1, int(binning)))
        return default


def _sibling(stack: Path, *suffixes: str) -> Path | None:
    for suffix in suffixes:
        candidate = stack.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _from_stack(stack: Path, origin: str, **given) -> Series:
    """A series from its stack, with its angles and alignment files found by stem unless
    ``given``."""
    aln = given.pop("aln", None) or _sibling(stack, ".aln")
    xf = given.pop("xf", None)
    if xf is None and stack.suffix.lower() != ".ali":  # an .ali has its .xf applied
        xf = _sibling(stack, ".xf")
    angles = given.pop("angles", None)
    if angles is None and aln is None:  # an .aln gives the angles itself
        angles = _sibling(stack, ".tlt", ".rawtlt", ".mdoc")
        if angles is None:
            mdoc = stack.with_name(stack.name + ".mdoc")
            angles = mdoc if mdoc.is_file() else None
    return Series(name=given.pop("name", None) or stack.stem, stack=stack, angles=angles,
                  xf=xf, aln=aln, origin=origin, **given)


def _has_angles(series: Series) -> bool:
    return series.angles is not None or series.aln is not None


def _preferred(stacks: list[Path]) -> list[Path]:
    """One stack per stem in each folder: the aligned ``.ali`` over ``.st`` over ``.mrc``."""
    best: dict[Path, Path] = {}
    for stack in stacks:
        key = stack.with_suffix("")
        rank = _PREFERENCE.index(stack.suffix.lower())
        if key not in best or rank < _PREFERENCE.index(best[key].suffix.lower()):
            best[key] = stack
    return sorted(best.values())


def _is_stack(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in STACK_SUFFIXES


def find_series(inputs: list[str | PathLike]) -> list[Series]:
    """The tilt series named by ``inputs``: folders, globs, stacks and tables (CSV, STAR).

    Raises InputError for an input that names nothing, a malformed table, a stack named
    directly without angles, or two series with the same name (their outputs would
    collide).
    """
    found: list[Series] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
            found += read_table(path)
        elif path.is_dir():
            stacks = [p for p in path.iterdir() if _is_stack(p)]
            found += [s for s in (_from_stack(p, f"folder {path}") for p in _preferred(stacks))
                      if _has_angles(s)]
        elif glob.has_magic(text):
            stacks = [Path(p) for p in glob.glob(text) if _is_stack(Path(p))]
            found += [s for s in (_from_stack(p, f"glob {text}") for p in _preferred(stacks))
                      if _has_angles(s)]
        elif _is_stack(path):
            series = _from_stack(path, "command line")
            if not _has_angles(series):
                raise InputError(f"no tilt angles beside it (no {path.stem}.tlt, .rawtlt, "
                                 f".mdoc or .aln); list it in a table with its angles", path)
            found.append(series)
        elif path.exists():
            raise InputError(f"not a folder, a stack ({', '.join(STACK_SUFFIXES)}) or a table "
                             f"({', '.join(TABLE_SUFFIXES)})", path)
        else:
            raise InputError("does not exist (nor matches any file as a glob)", path)
    _check_unique(found)
    return found


def _check_unique(found: list[Series]) -> None:
    seen: dict[str, Series] = {}
    for series in found:
        other = seen.setdefault(series.name, series)
        if other is not series:
            raise InputError(f"two tilt series are named {series.name!r} ({other.stack}, from "
                             f"{other.origin}; {series.stack}, from {series.origin}): their "
                             f"outputs would both be {series.name}.mrc; give them names in a "
                             f"table's name column")


# -- tables --


def _rows_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = [(k, line) for k, line in enumerate(fh, start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError("is empty: expected a header row (stack,angles,thickness,...) and "
                         "one row per tilt series", path)
    parsed = list(csv.reader(line for _, line in lines))
    header = [h.strip().lower() for h in parsed[0]]
    return header, [(k, [c.strip() for c in row]) for (k, _), row in zip(lines[1:], parsed[1:])]


def _rows_star(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], int]:
    """The first loop of ``data_global`` (else of the first block): column names without
    their ``_``, rows, and the line of ``loop_``."""
    lines = list(enumerate(path.read_text(encoding="utf-8").splitlines(), start=1))
    blocks = [k for k, (_, line) in enumerate(lines) if line.strip().startswith("data_")]
    if not blocks:
        raise InputError("no data_ block: not a STAR file", path)
    start = next((k for k in blocks if lines[k][1].strip() == "data_global"), blocks[0])
    end = next((k for k in blocks if k > start), len(lines))
    header: list[str] = []
    rows: list[tuple[int, list[str]]] = []
    loop_line = 0
    for number, line in lines[start + 1:end]:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text == "loop_":
            if loop_line:
                break  # a second loop: not ours
            loop_line = number
        elif loop_line and text.startswith("_") and not rows:
            header.append(text.split()[0][1:].lower())
        elif loop_line and header:
            try:
                rows.append((number, shlex.split(text)))
            except ValueError as exc:
                raise InputError(f"cannot split the row: {exc}", path, number) from None
    if not header:
        raise InputError(f"no loop_ with columns in {lines[start][1].strip()}", path)
    return header, rows, loop_line


def read_table(path: str | PathLike) -> list[Series]:
    """The series of a CSV or STAR table (see the module docstring for the columns).

    Raises InputError naming the file and line: a missing ``stack`` column, an unknown
    column, a row with too many or too few cells, a thickness that is not a positive
    integer, a stack without angles.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".star":
            header, rows, header_line = _rows_star(path)
            names = [_RELION.get(h, h) for h in header]
        else:
            header, rows = _rows_csv(path)
            header_line, names = 1, header
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as a table: {exc}", path) from None
    if "stack" not in names and "rlntomotiltseriesstarfile" in header:
        raise InputError("a RELION 5 tomograms.star: its rlnTomoTiltSeriesStarFile names "
                         "per-tilt STAR files of single tilt images, not stacks; give a "
                         "table (CSV, or STAR with rlnTomoTiltSeriesName) of the stacks, "
                         "or the folder that holds them", path, header_line)
    # RELION's own metadata (voltage, optics group, hand, ...) is not ours to check.
    keep = [n in _COLUMNS or n in _RELION.values() or not n.startswith("rln")
            for n in names]
    unknown = [h for h, n, k in zip(header, names, keep)
               if k and n not in _COLUMNS and n not in _RELION.values()]
    if unknown:
        raise InputError(f"unknown column {unknown[0]!r}; expected {', '.join(_COLUMNS)} (or "
                         f"RELION's rlnTomoName, rlnTomoTiltSeriesName, rlnTomoSizeZ, ...)",
                         path, header_line)
    if "stack" not in names:
        raise InputError("no stack column: each row needs its tilt series' stack file",
                         path, header_line)
    series = []
    for number, cells in rows:
        if len(cells) != len(names):
            raise InputError(f"{len(cells)} cells for {len(names)} columns "
                             f"({', '.join(header)})", path, number)
        series.append(_row(path, number, {n: c for n, c, k in zip(names, cells, keep) if k}))
    if not series:
        raise InputError("lists no tilt series (a header but no rows)", path)
    return series


def _thickness(text: str, path: Path, number: int) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value == int(value)):
        raise InputError(f"thickness {text!r}: expected a positive whole number of voxels",
                         path, number)
    return int(value)


def _row(path: Path, number: int, row: dict[str, str]) -> Series:
    folder = path.parent

    def file(key: str) -> Path | None:
        text = row.get(key, "")
        if text.lower().endswith((":mrc", ":st")):  # RELION's file type tag
            text = text.rsplit(":", 1)[0]
        return (folder / text) if text else None

    stack = file("stack")
    if stack is None:
        raise InputError("the stack cell is empty", path, number)
    given: dict = {k: file(k) for k in ("angles", "xf", "aln", "defocus", "dose") if row.get(k)}
    if row.get("name"):
        given["name"] = row["name"]
    if row.get("thickness"):
        given["thickness"] = _thickness(row["thickness"], path, number)
    imod = file("rln_imod_dir")
    if imod is not None:
        name = row.get("name") or stack.stem
        for key, suffix in (("xf", ".xf"), ("angles", ".tlt")):
            if key not in given and (imod / f"{name}{suffix}").is_file():
                given[key] = imod / f"{name}{suffix}"
    if row.get("rln_size_z"):
        given["thickness_unbinned"] = _thickness(row["rln_size_z"], path, number)
    series = _from_stack(stack, f"{path}, line {number}", **given)
    if stack.is_file() and not _has_angles(series):
        raise InputError(f"{stack.name} has no angles column and no {stack.stem}.tlt, "
                         f".rawtlt, .mdoc or .aln beside it", path, number)
    return series
