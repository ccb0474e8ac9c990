"""Writing a tomogram (polarity, level, MRC origin, sidecar) and what a run returns.

Polarity and level
------------------
Every command that writes a tomogram (``wbp``, ``sirt``, ``reconstruct`` and its halves,
``voxelize``) writes it the same way: in the polarity of the input images by default
(``--output-contrast input``: dark density for raw cryo-EM images, as IMOD and AreTomo
write; ``voxelize`` takes the polarity of the stack its model was fitted to), and as
density relative to the tomogram's mean (:func:`relative_to_mean`). Runs compute in
bright polarity (density positive); :func:`write_tomogram` turns it.

MRC origin
----------
Every tomogram is centred on the tilt axis (voxel ``i`` of ``n`` at ``i + 0.5 - n/2``
voxels from it). The header's origin places it in one frame shared by every tomogram of
the same tilt series, so that a ``--width`` crop, a binned tomogram or one at another
``--voxel-size`` overlays the full tomogram in IMOD: the frame's corner is the corner of
the full tomogram (the whole image width and height, the reconstruction's thickness), and
the origin follows IMOD's convention, a point at index ``u`` (continuous, voxel 0's
corner at 0) lying at ``u * voxel_size - origin`` in that frame (:func:`mrc_origin`; as
IMOD's model transforms read it). The full tomogram itself has origin (0, 0, 0); a crop
starting ``k`` voxels in has ``-k * voxel_size``. ChimeraX reads the origin as the
position of voxel 0, the opposite sign: there a crop lands mirrored about the corner.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["TomogramResult", "TomogramWriter", "VolumeTarget", "check_finite", "mrc_origin",
           "relative_to_mean", "write_tomogram"]

log = logging.getLogger("taichi_etgs.pipeline")


@dataclass
class VolumeTarget:
    """The tomogram to make: its size, and where and how to write it.

    thickness: NZ in (binned) voxels.
    output: the MRC file to write (with its sidecar), or an OME-Zarr folder (a name
        ending in ``.zarr``: :mod:`taichi_etgs.io.omezarr`); None: only returned.
    width: NX in voxels (None: the image width); a centred crop.
    output_contrast: "input" (the images' polarity), "bright" or "dark".
    force: overwrite existing outputs; also accept angles that look like radians and a
        state made from other data or settings.
    """

    thickness: int
    output: str | PathLike | None = None
    width: int | None = None
    output_contrast: str = "input"
    force: bool = False

    def __post_init__(self) -> None:
        if int(self.thickness) < 1:
            raise InputError(f"--thickness must be at least 1 voxel, got {self.thickness}")
        if self.width is not None and int(self.width) < 1:
            raise InputError(f"--width must be at least 1 voxel, got {self.width}")
        if self.output_contrast not in ("input", "bright", "dark"):
            raise InputError(f"unknown output contrast {self.output_contrast!r}; expected "
                             "input, bright or dark")
        if self.output is not None and _is_zarr(self.output):
            from ..io.omezarr import check_available

            check_available(self.output)

    @property
    def path(self) -> Path | None:
        return None if self.output is None else Path(self.output)

    def to_dict(self) -> dict:
        """Plain values, the output as an absolute path (what a state records)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "force"}
        if out["output"] is not None:
            out["output"] = str(Path(out["output"]).absolute())
        return out

    @classmethod
    def from_dict(cls, values: dict) -> VolumeTarget:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TomogramResult:
    """A reconstruction as a run returns it.

    volume: density in bright polarity (what the file holds before ``--output-contrast``
        turns it), relative to its mean, in the images' units per voxel. [nz, ny, nx]
        None for a run in slabs written to a file (it was never whole in memory: read
        the output).
    voxel_size_A: its voxel size.
    origin_A: the MRC origin (x, y, z) it was or would be written with (:func:`mrc_origin`).
    output: the MRC written, or None.
    seconds: wall time of the computation.
    info: what the output's sidecar records under ``result``.
    """

    volume: np.ndarray | None
    voxel_size_A: float
    origin_A: tuple[float, float, float] = (0.0, 0.0, 0.0)
    output: Path | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def mrc_origin(shape_zyx, voxel_A: float, frame_zyx_A) -> tuple[float, float, float]:
    """The MRC origin (x, y, z), A, of a centred grid in the shared frame.

    shape_zyx: the written grid. voxel_A: its voxel size.
    frame_zyx_A: the extent of the full tomogram (thickness, image height and width) in A.
    """
    origin = [n * voxel_A / 2.0 - extent / 2.0 for n, extent in zip(shape_zyx, frame_zyx_A)]
    z, y, x = (round(float(v), 4) + 0.0 for v in origin)  # + 0.0: no "-0.0" in headers
    return (x, y, z)


def relative_to_mean(volume: np.ndarray) -> np.ndarray:
    """``volume`` minus its mean, in place (float32): the level every tomogram is written
    on. WBP and SIRT are there by construction (each view's mean is removed); a model's
    voxelisation (Gaussians and ice slab over an empty background) is moved there, so that
    every command writes density relative to the mean (docs/conventions.md, "Contrast,
    polarity and level")."""
    volume = np.asarray(volume, dtype=np.float32)
    volume -= np.float32(np.mean(volume, dtype=np.float64))
    return volume


def check_finite(volume: np.ndarray, source) -> None:
    """Refuse a volume holding NaN or Inf (one section at a time: no copy)."""
    for k in range(volume.shape[0]):
        if not np.isfinite(volume[k]).all():
            raise InputError(f"the reconstruction holds NaN or Inf values (first in section "
                             f"{k}), so nothing was written; check the input's values with "
                             f"`taichi-etgs info`", source)


def _is_zarr(path) -> bool:
    return Path(path).suffix.lower() == ".zarr"


def write_tomogram(session, path: str | PathLike, volume: np.ndarray, pixel: float,
                   contrast: str, output_contrast: str, force: bool, what: str,
                   result: dict | None = None,
                   origin_A: tuple[float, float, float] | None = None) -> Path:
    """Write a positive-density tomogram in the asked polarity, with its sidecar: an MRC
    file, or an OME-Zarr image for a name ending in ``.zarr``.

    contrast: the images' polarity ("dark"/"bright"); output_contrast: "input", "bright"
    or "dark". what: the MRC label and the sidecar's ``what``. result: more for the
    sidecar. origin_A: the header's origin (:func:`mrc_origin`).
    """
    from .. import io
    from ..preprocess import to_output_polarity

    if _is_zarr(path):
        with TomogramWriter(session, path, volume.shape, pixel, contrast, output_contrast,
                            force, what, origin_A) as writer:
            writer.write_rows(0, volume)
            return writer.finish(result)
    check_finite(volume, None)
    start = time.perf_counter()
    out = to_output_polarity(volume, contrast, output_contrast)
    io.write_volume(path, out, pixel, force=force, labels=session.labels(what),
                    origin_A=origin_A)
    log.info("wrote %s in %.1f s", path, time.perf_counter() - start)
    return _written(session, Path(path), volume.shape, pixel, contrast, output_contrast,
                    what, result, origin_A)


def _written(session, path: Path, shape, pixel: float, contrast: str, output_contrast: str,
             what: str, result: dict | None, origin_A) -> Path:
    """The sidecar of a tomogram written, and the line that says so."""
    nz, ny, nx = shape
    polarity = contrast if output_contrast == "input" else output_contrast
    record = {"what": what, "shape_zyx": [nz, ny, nx], "voxel_size_A": float(f"{pixel:.6g}"),
              "contrast": polarity}
    if origin_A is not None:
        record["origin_A"] = list(origin_A)
    session.write_sidecar(path, {**record, **(result or {})})
    kind = "OME-Zarr, " if _is_zarr(path) else ""
    session.say(f"wrote {path} ({kind}{nz} x {ny} x {nx} voxels, Z Y X; {pixel:g} A/voxel)")
    return path


class TomogramWriter:
    """A positive-density tomogram written a band of Y rows at a time (slabbed runs), as
    :func:`write_tomogram` writes a whole one: in the asked polarity, to an MRC file
    (:class:`~taichi_etgs.io.mrc.MrcSlabWriter`) or an OME-Zarr image
    (:class:`~taichi_etgs.io.omezarr.OmeZarrWriter`), atomically, with its sidecar;
    into :attr:`volume` in memory when ``path`` is None.

    Use it as a context manager and call :meth:`finish` inside: an exception, or leaving
    without :meth:`finish`, leaves nothing under ``path``.
    """

    def __init__(self, session, path: str | PathLike | None, shape_zyx, pixel: float,
                 contrast: str, output_contrast: str, force: bool, what: str,
                 origin_A: tuple[float, float, float] | None = None) -> None:
        from ..io.mrc import MrcSlabWriter
        from ..io.omezarr import OmeZarrWriter

        self.session, self.shape, self.pixel, self.what = session, tuple(shape_zyx), pixel, what
        self.contrast, self.output_contrast, self.origin = contrast, output_contrast, origin_A
        self.path = None if path is None else Path(path)
        self.volume = np.empty(self.shape, np.float32) if path is None else None
        self._file = None
        if self.path is not None and _is_zarr(self.path):
            self._file = OmeZarrWriter(self.path, self.shape, pixel, force=force,
                                       origin_A=origin_A)
        elif self.path is not None:
            self._file = MrcSlabWriter(self.path, self.shape, pixel, force=force,
                                       labels=session.labels(what), origin_A=origin_A)
        self._finished = False

    def write_rows(self, first: int, block: np.ndarray) -> None:
        """Rows ``first:first + rows`` (positive density, refused when not finite)."""
        from ..preprocess import to_output_polarity

        check_finite(block, None)
        if self._file is None:
            self.volume[:, first:first + block.shape[1]] = block
        else:
            self._file.write_rows(first, to_output_polarity(block, self.contrast,
                                                            self.output_contrast))

    def finish(self, result: dict | None = None) -> Path | None:
        """Complete the file (rename it into place) and write its sidecar."""
        self._finished = True
        if self._file is None:
            return None
        start = time.perf_counter()
        self._file.close()
        log.info("closed %s in %.1f s", self.path, time.perf_counter() - start)
        return _written(self.session, self.path, self.shape, self.pixel, self.contrast,
                        self.output_contrast, self.what, result, self.origin)

    def __enter__(self) -> TomogramWriter:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if self._file is not None and not self._finished:
            if exc is None:
                exc = RuntimeError("the tomogram was left unfinished")
                kind, traceback = RuntimeError, None
            self._file.__exit__(kind, exc, traceback)
