"""A temporary stack of views on disk, read back a band of rows at a time.

Slabbed WBP and SIRT (:mod:`taichi_etgs.pipeline.slabs`) prepare the views once, one view
at a time (alignment, binning, density, phase flip, exposure filter: steps that need a
whole view), into a :class:`ScratchStack`, then read only the rows of each slab. Views
are written and read with plain file calls and the rows through a memory map opened for
one slab and closed after it, so that the process never holds more than one view or one
slab of views: pages of a map stay in the resident set while it is open, and a map of
the whole stack would count all of it.
"""

from __future__ import annotations

import os
import uuid
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["ScratchStack"]

_F32 = np.dtype(np.float32)


class ScratchStack:
    """A float32 stack ``(n, ny, nx)`` in a temporary file of ``folder`` (removed by
    :meth:`close`, or at the end of a ``with`` block).

    Behaves as the views array where the readers and filters take one: ``stack[t]`` reads
    view ``t``, ``stack[t] = image`` writes it, ``len``, iteration, ``shape``, ``ndim``
    and ``dtype``; :meth:`rows` reads a band of rows of every view, :meth:`write_rows`
    writes one (a slabbed Gaussian run keeps its stitched tomogram here until its mean
    is known).
    """

    ndim = 3
    dtype = _F32

    def __init__(self, shape: tuple[int, int, int], folder: str | PathLike) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.path = Path(folder) / f".taichi-etgs-views.{uuid.uuid4().hex[:12]}.tmp"
        self._view_bytes = self.shape[1] * self.shape[2] * _F32.itemsize
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self._fd, self.shape[0] * self._view_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        return (self[t] for t in range(len(self)))

    def _index(self, t) -> int:
        t = int(t)
        if not -len(self) <= t < len(self):
            raise IndexError(f"view {t} of {len(self)}")
        return t % len(self)

    def __getitem__(self, t) -> np.ndarray:
        t = self._index(t)
        raw = os.pread(self._fd, self._view_bytes, t * self._view_bytes)
        if len(raw) != self._view_bytes:
            raise OSError(f"{self.path}: short read of view {t}")
        return np.frombuffer(raw, dtype=_F32).reshape(self.shape[1:]).copy()

    def __setitem__(self, t, image) -> None:
        t = self._index(t)
        data = np.ascontiguousarray(image, dtype=_F32)
        if data.shape != self.shape[1:]:
            raise ValueError(f"view of shape {data.shape}, expected {self.shape[1:]}")
        view = memoryview(data).cast("B")
        offset, done = t * self._view_bytes, 0
        while done < len(view):  # pwrite may write less than asked (signals, big writes)
            done += os.pwrite(self._fd, view[done:], offset + done)

    def rows(self, first: int, end: int) -> np.ndarray:
        """Rows ``first:end`` of every view, in memory. [n, end - first, nx]"""
        mapped = np.memmap(self.path, dtype=_F32, mode="r", shape=self.shape)
        band = np.array(mapped[:, first:end, :])
        del mapped  # unmapped now: its pages leave the resident set
        return band

    def write_rows(self, first: int, block: np.ndarray) -> None:
        """Put rows ``first:first + rows`` of every view (or section). block: [n, rows, nx]"""
        block = np.asarray(block, dtype=_F32)
        if block.shape[0] != self.shape[0] or block.shape[2] != self.shape[2]:
            raise ValueError(f"rows of shape {block.shape} do not fit a stack of {self.shape}")
        mapped = np.memmap(self.path, dtype=_F32, mode="r+", shape=self.shape)
        mapped[:, first:first + block.shape[1], :] = block
        mapped.flush()
        del mapped  # unmapped now, as in rows()

    def close(self) -> None:
        """Remove the file (again: nothing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ScratchStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
