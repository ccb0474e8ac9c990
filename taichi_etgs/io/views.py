"""View (tilt) index lists such as ``--exclude-views "0, 1, 38-40"``."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import InputError

__all__ = ["check_view_indices", "parse_view_list"]

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def check_view_indices(indices: Iterable[int], n_views: int, *,
                       what: str = "view list") -> list[int]:
    """Validate 0-based view indices; return them sorted and without repeats.

    Raises InputError for a non-integer or out-of-range index, or when the list
    names every view.
    """
    out: set[int] = set()
    for value in indices:
        try:
            whole = not isinstance(value, bool) and float(value).is_integer()
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise InputError(f"{what}: {value!r} is not a view index (a whole number)")
        index = int(value)
        if not 0 <= index < n_views:
            raise InputError(f"{what}: view {index} is out of range; the stack has "
                             f"{n_views} views, numbered 0 to {n_views - 1}")
        out.add(index)
    if n_views > 0 and len(out) == n_views:
        raise InputError(f"{what}: it excludes all {n_views} views; nothing would be left")
    return sorted(out)


def parse_view_list(text: str, n_views: int) -> list[int]:
    """Parse a list of views to exclude, e.g. ``"0,1,40"`` or ``"0-2, 39 40"``.

    Parameters
    ----------
    text
        Indices and inclusive ranges ``a-b``, separated by commas and/or spaces.
        Indices are **0-based** (the first image of the stack is view 0), like
        Python, AreTomo's SEC column and newstack's ``-secs``; note that IMOD's
        ``EXCLUDELIST`` in ``tilt.com`` is 1-based (subtract 1).
    n_views
        Number of views in the stack.

    Returns
    -------
    list[int]
        Sorted indices without repeats (empty for an empty or blank ``text``).

    Raises
    ------
    InputError
        Garbage (anything but numbers, ranges, commas and spaces), a reversed range,
        an index outside ``0 .. n_views-1``, or a list that excludes every view.
    """
    # "3 - 5" means the range 3-5: glue the dash to its numbers before splitting.
    normalised = re.sub(r"\s*-\s*", "-", text.strip())
    indices: list[int] = []
    for token in filter(None, re.split(r"[,\s]+", normalised)):
        match = _RANGE.fullmatch(token)
        if match is None:
            raise InputError(f"view list {text!r}: '{token}' is not a view index or a range "
                             f"like 3-5 (0-based indices, separated by commas)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise InputError(f"view list {text!r}: the range {token} runs backwards")
        if last >= n_views:
            raise InputError(f"view list {text!r}: view {last} is out of range; the stack "
                             f"has {n_views} views, numbered 0 to {n_views - 1}")
        indices.extend(range(first, last + 1))
    return check_view_indices(indices, n_views, what=f"view list {text!r}")
