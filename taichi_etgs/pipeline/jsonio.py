"""The package's one JSON encoder: numpy values, paths and non-finite numbers.

Two uses, one set of rules:

- **Strict JSON** for what people and other programs read (provenance sidecars, metrics,
  simulation records): numpy scalars and arrays become numbers and lists, paths text,
  tuples and sets lists, NaN ``null``, and infinities the strings ``"inf"`` and ``"-inf"``
  (an FSC that never crosses its threshold has an infinite resolution: ``null`` would
  lose that). :func:`to_jsonable`, :func:`dumps`.
- **Exact JSON** for what the package reads back (the state files'
  configuration and geometry): numpy arrays keep their dtype and shape as
  ``{"__ndarray__": [...], "dtype": ..., "shape": [...]}``, floats are written as
  Python's shortest round-tripping repr with NaN and Infinity allowed, and a value that
  cannot be stored raises TypeError. :func:`dumps` with ``exact=True``, :func:`loads`.

This module depends on nothing else in the package.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from os import PathLike
from typing import Any

import numpy as np

__all__ = ["dumps", "loads", "to_jsonable"]

_ND_TAG = "__ndarray__"


def to_jsonable(value: Any, *, exact: bool = False) -> Any:
    """``value`` as plain JSON values (dicts with text keys, lists, numbers, text, None).

    exact: keep arrays' dtypes and shapes and non-finite floats (see the module
        docstring) and refuse values of other types; otherwise strict JSON, and values of
        other types as their text.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, exact=exact) for k, v in value.items()}
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if exact or math.isfinite(v):
            return v
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(value, PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        # tolist() gives Python numbers, which JSON takes as they are: no walk through
        # large arrays unless a non-finite float has to be spelled out.
        if exact:
            return {_ND_TAG: value.tolist(), "dtype": value.dtype.str,
                    "shape": list(value.shape)}
        if value.dtype.kind in "biu" or (value.dtype.kind == "f" and np.isfinite(value).all()):
            return value.tolist()
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, exact=exact) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return to_jsonable(tolist(), exact=exact)
    if exact:
        raise TypeError(f"cannot store a value of type {type(value).__name__} in a state file "
                        f"(JSON numbers, strings, lists, dicts and numpy arrays only)")
    return str(value)


def dumps(value: Any, *, exact: bool = False, indent: int | None = None) -> str:
    """JSON text of ``value`` (:func:`to_jsonable`); strict JSON unless ``exact``."""
    return json.dumps(to_jsonable(value, exact=exact), indent=indent, allow_nan=exact)


def _from_jsonable(obj: dict) -> Any:
    if _ND_TAG in obj and set(obj) == {_ND_TAG, "dtype", "shape"}:
        return np.array(obj[_ND_TAG], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def loads(text: str) -> Any:
    """Read JSON text; tagged arrays (``exact`` dumps) come back as numpy arrays."""
    return json.loads(text, object_hook=_from_jsonable)
