"""OME-Zarr tomograms: multiscale OME-NGFF images, as the CZ cryoET data portal publishes.

A tomogram written to ``NAME.zarr`` is an OME-NGFF 0.4 image (zarr format 2, which napari's
reader, ``ome_zarr.reader`` and the portal's tools read) with axes ``z, y, x`` in
Angstrom and :data:`LEVELS` resolution levels: ``0`` the tomogram itself, then each level
binned by 2 in Z, Y and X from the one before (the mean of 2 x 2 x 2 voxels; an odd last
voxel is dropped, as ``--binning`` drops remainders). Each level's coordinate
transformations are its voxel size (``scale``, A) and, where it is not zero, the position
of its first voxel's centre (``translation``, A): half a level-0 voxel per binning step
(the mean of voxels 0 and 1 sits between them) plus the tomogram's offset in the frame of
the full tomogram (the MRC origin's, with the opposite sign: IMOD's origin is where the
frame's corner lies in the file's index space).

The metadata are written by the ``ome-zarr`` library (a published, maintained writer of
the format); the arrays by ``zarr``, a band of Y rows at a time (:class:`OmeZarrWriter`),
so that a slabbed reconstruction never holds the whole tomogram. The store is built in a
temporary folder beside the output and renamed at the end: nothing partial lies under the
final name.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from .._atomic import atomic_folder
from ..errors import InputError
from ..pipeline.outputs import check_writable
from ._files import AtomicWriter

__all__ = ["CHUNK", "LEVELS", "OmeZarrWriter", "check_available", "level_shapes"]

#: Resolution levels written (binned 1, 2 and 4, as the portal's tomograms).
LEVELS = 3
#: Chunk edge, voxels (clipped to the level's shape).
CHUNK = 128


def check_available(path: str | PathLike | None = None) -> None:
    """Refuse an OME-Zarr output, before any work, where ``zarr`` (>= 3) or ``ome-zarr``
    is missing (they need Python >= 3.11; the install leaves them out on 3.10)."""
    from importlib import metadata

    try:
        ok = int(metadata.version("zarr").split(".")[0]) >= 3
        metadata.version("ome-zarr")
    except (metadata.PackageNotFoundError, ValueError):
        ok = False
    if not ok:
        raise InputError("writing OME-Zarr needs the packages zarr >= 3 and ome-zarr "
                         "(Python >= 3.11): pip install 'zarr>=3' 'ome-zarr>=0.18', or "
                         "write an .mrc", path)


def level_shapes(shape_zyx: Sequence[int], levels: int = LEVELS) -> list[tuple[int, int, int]]:
    """The shapes of the levels: each the previous halved (rounded down); fewer levels
    when an axis would drop below one voxel."""
    shapes = [tuple(int(n) for n in shape_zyx)]
    while len(shapes) < levels and min(shapes[-1]) >= 2:
        shapes.append(tuple(n // 2 for n in shapes[-1]))
    return shapes


def _transforms(level: int, voxel_A: float, offset_zyx_A) -> list[dict]:
    factor = 2 ** level
    scale = [voxel_A * factor] * 3
    shift = [o + 0.5 * (factor - 1) * voxel_A for o in offset_zyx_A]
    out: list[dict] = [{"type": "scale", "scale": scale}]
    if any(shift):
        out.append({"type": "translation", "translation": shift})
    return out


class OmeZarrWriter(AtomicWriter):
    """An OME-Zarr tomogram written a band of Y rows at a time, atomically.

    path: the ``.zarr`` folder to make. shape_zyx: level 0's shape. voxel_size_A: its
    voxel size. force: replace an existing store. origin_A: the MRC origin (x, y, z) of
    the same tomogram (:func:`~taichi_etgs.pipeline.tomograms.mrc_origin`); its
    opposite is level 0's translation. name: the image's name in the metadata.

    :meth:`write_rows` fills level 0; :meth:`close` bins the other levels from it (a band
    of rows at a time, read back from the store), writes the metadata and renames the
    store to ``path``. Used as a context manager, an exception removes the temporary store.
    """

    def __init__(self, path: str | PathLike, shape_zyx: tuple[int, int, int],
                 voxel_size_A: float, *, force: bool = False,
                 origin_A: Sequence[float] | None = None, name: str = "") -> None:
        import zarr

        self.path = Path(path)
        if self.path.suffix.lower() != ".zarr":
            raise InputError("an OME-Zarr output's name ends in .zarr", self.path)
        if not (np.isfinite(voxel_size_A) and voxel_size_A > 0):
            raise ValueError(f"voxel size must be a positive number of Angstrom, got "
                             f"{voxel_size_A}")
        check_available(self.path)
        check_writable(self.path, force)
        self.voxel_A = float(voxel_size_A)
        x, y, z = origin_A if origin_A is not None else (0.0, 0.0, 0.0)
        self._offset = [-float(z) + 0.0, -float(y) + 0.0, -float(x) + 0.0]
        self.name = name or self.path.stem
        self.shapes = level_shapes(shape_zyx)
        self._band_rows = 1
        self._files = contextlib.ExitStack()
        tmp = self._files.enter_context(atomic_folder(self.path))
        try:
            self._group = zarr.open_group(tmp, mode="w", zarr_format=2)
            self._arrays = [
                self._group.create_array(str(k), shape=shape, dtype="float32",
                                         chunks=tuple(min(CHUNK, n) for n in shape),
                                         fill_value=0.0)
                for k, shape in enumerate(self.shapes)]
        except BaseException as exc:
            self._files.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def write_rows(self, first: int, block: np.ndarray) -> None:
        """Rows ``first:first + rows`` of level 0. block: [nz, rows, nx]"""
        block = np.asarray(block, dtype=np.float32)
        nz, ny, nx = self.shapes[0]
        if block.ndim != 3 or block.shape[0] != nz or block.shape[2] != nx \
                or not 0 <= first <= ny - block.shape[1]:
            raise ValueError(f"rows {first}+{block.shape[1:2]} of shape {block.shape} do "
                             f"not fit a volume of shape {self.shapes[0]}")
        self._arrays[0][:, first:first + block.shape[1], :] = block
        self._band_rows = max(self._band_rows, block.shape[1])

    def _bin_level(self, level: int) -> None:
        """Level ``level`` from the one before, in bands about as large as those written."""
        source, target = self._arrays[level - 1], self._arrays[level]
        nz, ny, nx = self.shapes[level]
        rows = max(1, self._band_rows // 2)
        for first in range(0, ny, rows):
            end = min(ny, first + rows)
            block = np.asarray(source[:2 * nz, 2 * first:2 * end, :2 * nx])
            block = block.reshape(nz, 2, end - first, 2, nx, 2)
            target[:, first:end, :] = block.mean(axis=(1, 3, 5), dtype=np.float64)

    def close(self) -> Path:
        """Bin the levels, write the metadata, move the store to ``path``."""
        with warnings.catch_warnings():
            # ome-zarr >= 0.14 warns on import about its own deprecated Scaler (the default
            # of a function this writer does not call).
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr.format import FormatV04
            from ome_zarr.writer import write_multiscales_metadata

        for level in range(1, len(self.shapes)):
            self._bin_level(level)
        datasets = [{"path": str(k),
                     "coordinateTransformations": _transforms(k, self.voxel_A, self._offset)}
                    for k in range(len(self.shapes))]
        axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
        write_multiscales_metadata(self._group, datasets, fmt=FormatV04(), axes=axes,
                                   name=self.name)
        self._files.close()
        return self.path

