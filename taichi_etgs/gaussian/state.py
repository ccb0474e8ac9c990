"""Reconstruction state files (HDF5): save, load, and the input-data checksum.

A state holds what is needed to resume a Gaussian reconstruction bit for bit, or to refine
a finished model further: the raw parameters, Adam's moments and step count, the
iteration, the random generator's state, the configuration, the geometry and a checksum of
the input tilt series (so that a resume on different data can be refused).

File layout (``format = "taichi-etgs-state"``, ``format_version = 1``)::

    /                         attributes: format, format_version, package_version
                              (of the writer), iteration, input_checksum, n_gaussians
    /params/means_xyz         [N, 3]  raw parameters (GaussianParams fields), stored in
    /params/log_scales        [N, 3]  their own dtype (float32 or float64), so they
    /params/quats_wxyz        [N, 4]  come back bit for bit
    /params/density_raw       [N]
    /adam                     attributes: step, beta1, beta2, eps; absent when no
                              optimiser state was saved (an exported model)
    /adam/exp_avg/<field>     first moments, shaped like /params
    /adam/exp_avg_sq/<field>  second moments
    /adam/lr                  JSON {group: learning rate}
    /meta/config              JSON of the configuration dict
    /meta/geometry            JSON of the model's geometry (:class:`ModelGeometry`,
                              :meth:`ModelGeometry.to_dict`)
    /meta/rng_state           JSON of numpy's ``Generator.bit_generator.state``
    /candidates/<field>       optional: the models kept for the run's final average
                              (:meth:`GaussianReconstruction.keep_best
                              <taichi_etgs.gaussian.fit.GaussianReconstruction.keep_best>`),
                              one after the other, shaped like /params; their sizes
                              in the configuration

JSON texts are scalar UTF-8 string *datasets* rather than attributes: HDF5 limits an
attribute to 64 KiB, a dataset has no such limit, and ``h5dump`` shows both. Any nested
dict of str, int (of any size: PCG64's 128-bit state), float (exact: JSON keeps Python's
shortest round-tripping repr, NaN and Inf included), bool, None, lists, numpy scalars and
numpy arrays (kept with their dtype and shape) round-trips; tuples come back as lists.

Writes are atomic: a temporary file in the target's folder is written, flushed to disk
(fsync) and renamed over the target (``os.replace``); on any exception, KeyboardInterrupt
included, the temporary file is removed, so a run killed mid-write leaves the previous
state intact and usable. (A hard kill, SIGKILL or power loss, cannot clean up: it may leave
a hidden ``.<name>.<random>.tmp`` next to the state, harmless and safe to delete.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_output
from ..errors import InputError
from ..pipeline import jsonio
from ..pipeline.outputs import check_writable
from .optim import GROUPS, AdamState
from .params import GaussianParams

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelGeometry",
    "State",
    "input_checksum",
    "load_state",
    "restore_rng",
    "save_state",
]

FORMAT_NAME = "taichi-etgs-state"
FORMAT_VERSION = 1

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Sections hashed at a time by input_checksum: bounded memory for any memmap.
_CHECKSUM_BLOCK_BYTES = 16 * 2**20


# ----------------------------------------------------------------------------------------
# Checksum
# ----------------------------------------------------------------------------------------

def input_checksum(array: np.ndarray) -> str:
    """A checksum of the input data: ``"sha256:<hex>"`` over its shape and float32 values.

    The hash covers the shape and the bytes of a little-endian float32 C-order copy, taken
    a block of sections (first axis) at a time, so a memory-mapped stack is streamed from
    disk without a full copy in memory. The same values give the same checksum whatever
    the array's dtype (float32, or float64 holding float32 values), byte order or layout.

    array: the input data, e.g. the tilt series. [n_tilts, ny, nx] (any shape)
    """
    a = np.asarray(array)
    h = hashlib.sha256()
    h.update(f"float32<{tuple(int(s) for s in a.shape)}".encode())
    if a.ndim == 0:
        h.update(np.asarray(a, dtype="<f4").tobytes())
    elif a.size:
        row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * 4)
        block = max(1, _CHECKSUM_BLOCK_BYTES // row_bytes)
        for start in range(0, a.shape[0], block):
            h.update(np.ascontiguousarray(a[start:start + block], dtype="<f4").tobytes())
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------------------
# JSON with numpy values (the package's one encoder, in its exact mode)
# ----------------------------------------------------------------------------------------

def _dumps(obj: Any) -> str:
    return jsonio.dumps(obj, exact=True)


def _loads(text: str) -> Any:
    return jsonio.loads(text)


# ----------------------------------------------------------------------------------------
# The state
# ----------------------------------------------------------------------------------------

# What a geometry value is, in words (error messages name no JSON key).
_GEOMETRY_WORDS = {"shape_zyx": "tomogram size", "model_shape_zyx": "model grid",
                   "pixel_size_A": "pixel size", "tilts_deg": "tilt angles",
                   "n_views": "number of views", "detector_yx": "detector size",
                   "view_scale": "density units", "contrast": "image contrast",
                   "background": "background level", "source": "source file",
                   "run": "record of its run"}


@dataclass
class ModelGeometry:
    """Where a saved model lives: the tomogram it makes and the data it was fitted to.

    The state file holds it as a JSON object (:meth:`to_dict`, :meth:`from_dict`; the keys
    are the field names). Every field but ``shape_zyx`` may be absent from older files.

    shape_zyx: the tomogram's grid (nz, ny, nx) in voxels, the model's length unit; None
        for a file that records none (not usable as a model).
    pixel_size_A: that voxel's size in A; 0 when the data gave none (1 A is then assumed:
        :attr:`voxel_size_A`).
    model_shape_zyx: the grid the model was fitted on (the tomogram widened in X so that
        the high tilts' rays are whole; docs/method.md), or None (the tomogram's).
    tilts_deg: the tilts the model was fitted to, or None (a model of a volume).
    n_views, detector_yx: how many views, and their size (ny, nx) in pixels, or None.
    view_scale: the densities' unit: a model density times ``view_scale`` is in the
        input's units per voxel (the views' robust scale; 1 for a model of a volume).
    contrast: how density looked in the input ("dark" or "bright"), or None (not recorded:
        older files).
    background: the level a model of a volume sits on (``gaussianize``), input units.
    source: the input file.
    run: the record of the run that saved it (the pipeline's ``RunRecord.to_dict()``),
        or None.
    extra: keys this version does not know, kept and written back as they were.
    """

    shape_zyx: tuple[int, int, int] | None = None
    pixel_size_A: float = 0.0
    model_shape_zyx: tuple[int, int, int] | None = None
    tilts_deg: np.ndarray | None = None
    n_views: int | None = None
    detector_yx: tuple[int, int] | None = None
    view_scale: float = 1.0
    contrast: str | None = None
    background: float = 0.0
    source: str = ""
    run: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def voxel_size_A(self) -> float:
        """The pixel size, or 1 A when none is known."""
        pixel = float(self.pixel_size_A)
        return pixel if np.isfinite(pixel) and pixel > 0 else 1.0

    def frame_A(self) -> tuple[float, float, float]:
        """The extent (z, y, x) in A of the full tomogram the model belongs to: its
        thickness and the detector's height and width (the MRC origin's frame)."""
        nz, ny, nx = self.shape_zyx
        if self.detector_yx is not None:
            ny, nx = self.detector_yx
        pixel = self.voxel_size_A
        return (nz * pixel, ny * pixel, nx * pixel)

    def to_dict(self) -> dict:
        """The JSON object of the state file: the fields that differ from their defaults,
        then ``extra``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None or (
                    isinstance(value, (str, float)) and value == f.default):
                continue
            if f.name in ("shape_zyx", "model_shape_zyx", "detector_yx"):
                value = [int(n) for n in value]
            out[f.name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping, path=None) -> ModelGeometry:
        """Read the state file's geometry object (keys it does not know go to ``extra``).

        Raises
        ------
        InputError: a value of the wrong kind (naming what it is, not the key).
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {"extra": {k: v for k, v in values.items()
                                            if k not in known}}
        for key in known & set(values):
            value = values[key]
            try:
                kwargs[key] = None if value is None else _GEOMETRY_PARSERS[key](value)
            except (TypeError, ValueError):
                raise InputError(f"holds an unreadable {_GEOMETRY_WORDS[key]} "
                                 f"({value!r:.60})", path) from None
        return cls(**kwargs)


def _sizes(count: int):
    def parse(value) -> tuple[int, ...]:
        sizes = tuple(int(n) for n in value)
        if len(sizes) != count or min(sizes) < 1 or any(float(a) != b for a, b in
                                                        zip(value, sizes)):
            raise ValueError(value)
        return sizes
    return parse


def _contrast(value) -> str:
    if value not in ("dark", "bright"):
        raise ValueError(value)
    return str(value)


def _mapping(value) -> dict:
    if not isinstance(value, Mapping):
        raise TypeError(value)
    return dict(value)


_GEOMETRY_PARSERS = {
    "shape_zyx": _sizes(3), "model_shape_zyx": _sizes(3), "detector_yx": _sizes(2),
    "pixel_size_A": float, "view_scale": float, "background": float, "n_views": int,
    "tilts_deg": lambda v: np.asarray(v, dtype=np.float64).reshape(-1),
    "contrast": _contrast, "source": str, "run": _mapping,
}


@dataclass
class State:
    """A reconstruction state as read by :func:`load_state`.

    params: the model's raw parameters, dtypes as saved.
    adam: optimiser state, or None when the file holds a model only.
    iteration: iterations completed.
    rng_state: ``Generator.bit_generator.state`` at save time (:func:`restore_rng`).
    config: the configuration dict.
    geometry: where the model lives (:class:`ModelGeometry`).
    input_checksum: :func:`input_checksum` of the input data.
    format_version: the file's format version.
    package_version: version of taichi-etgs that wrote it.
    candidates: the models kept for the run's final average, one after the other, or None.
    """

    params: GaussianParams
    adam: AdamState | None
    iteration: int
    rng_state: dict
    config: dict = field(default_factory=dict)
    geometry: ModelGeometry = field(default_factory=ModelGeometry)
    input_checksum: str = ""
    format_version: int = FORMAT_VERSION
    package_version: str = ""
    candidates: GaussianParams | None = None

    def rng(self) -> np.random.Generator:
        """A generator in the saved state: it continues the saved run's random stream."""
        return restore_rng(self.rng_state)


def restore_rng(rng_state: dict) -> np.random.Generator:
    """A numpy Generator whose bit generator is set to ``rng_state``.

    rng_state: ``Generator.bit_generator.state`` (names its bit generator, e.g. "PCG64").

    Raises
    ------
    InputError: the state names no known numpy bit generator or does not fit it.
    """
    name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
    cls = getattr(np.random, str(name), None) if name else None
    if cls is None or not (isinstance(cls, type)
                           and issubclass(cls, np.random.BitGenerator)):
        raise InputError(f"the saved random-generator state names an unknown bit "
                         f"generator ({name!r})")
    bit_gen = cls()
    try:
        bit_gen.state = rng_state
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"the saved random-generator state is invalid ({exc})") from exc
    return np.random.Generator(bit_gen)


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------

def _write_params(group: Any, params: GaussianParams) -> None:
    for f in fields(GaussianParams):
        group.create_dataset(f.name, data=np.ascontiguousarray(getattr(params, f.name)))


def save_state(path: str | PathLike, params: GaussianParams, adam_state: AdamState | None,
               iteration: int, rng_state: dict, config: dict,
               geometry: ModelGeometry | Mapping, input_checksum: str, *,
               force: bool = True, candidates: GaussianParams | None = None) -> Path:
    """Write a reconstruction state atomically (see the module docstring for the layout).

    Parameters
    ----------
    path: the HDF5 file to write (e.g. ``run.state.h5``).
    params: the model's raw parameters. [N, ...] per field
    adam_state: :meth:`Adam.state() <taichi_etgs.gaussian.optim.Adam.state>`, or None for a model
        without optimiser state.
    iteration: iterations completed.
    rng_state: ``rng.bit_generator.state`` of the run's numpy Generator.
    config: configuration, any JSON-able nested dict (numpy values allowed).
    geometry: where the model lives (:class:`ModelGeometry`, or its dict:
        :meth:`ModelGeometry.from_dict` checks it).
    input_checksum: :func:`input_checksum` of the input tilt series.
    force: overwrite an existing file (the default: a run replaces its own checkpoint).
    candidates: models kept besides the current one (binary, as ``params``: as JSON they
        would take several times the space), one after the other.

    Returns
    -------
    The path written.

    Raises
    ------
    InputError: the folder does not exist, ``path`` is a folder, or it exists and
        ``force`` is False.
    ValueError: moments that do not match the parameters in N.
    InputError: a geometry value of the wrong kind.
    TypeError: a config/geometry value that cannot be stored as JSON.
    OSError: the disk refused the write (the previous file, if any, is untouched).
    """
    import h5py

    from .. import __version__

    p = check_writable(path, force, what="state")
    if adam_state is not None and not (adam_state.exp_avg.n == adam_state.exp_avg_sq.n
                                       == params.n):
        raise ValueError(f"Adam moments are for {adam_state.exp_avg.n} Gaussians, the "
                         f"parameters for {params.n}")
    if not isinstance(geometry, ModelGeometry):
        geometry = ModelGeometry.from_dict(geometry)
    # Serialise first: a value that is not JSON-able fails before any file is created.
    texts = {"config": _dumps(dict(config)), "geometry": _dumps(geometry.to_dict()),
             "rng_state": _dumps(dict(rng_state))}
    lr_text = None if adam_state is None else _dumps(dict(adam_state.lr))

    with atomic_output(p) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["package_version"] = __version__
        f.attrs["iteration"] = np.int64(iteration)
        f.attrs["input_checksum"] = str(input_checksum)
        f.attrs["n_gaussians"] = np.int64(params.n)
        _write_params(f.create_group("params"), params)
        if adam_state is not None:
            g = f.create_group("adam")
            g.attrs["step"] = np.int64(adam_state.step)
            g.attrs["beta1"] = float(adam_state.beta1)
            g.attrs["beta2"] = float(adam_state.beta2)
            g.attrs["eps"] = float(adam_state.eps)
            _write_params(g.create_group("exp_avg"), adam_state.exp_avg)
            _write_params(g.create_group("exp_avg_sq"), adam_state.exp_avg_sq)
            g.create_dataset("lr", data=lr_text, dtype=h5py.string_dtype("utf-8"))
        if candidates is not None:
            _write_params(f.create_group("candidates"), candidates)
        meta = f.create_group("meta")
        for name, text in texts.items():
            meta.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))
    return p


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------

def _sniff_not_hdf5(p: Path) -> str:
    """Why ``p`` is not HDF5, in words (names MRC files, the usual mistake)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(head) >= 212 and head[208:212] in (b"MAP ", b"MAP\x00"):
        return "is an MRC file, not a taichi-etgs state (HDF5); give the .h5 state file"
    if not head:
        return "is empty, not a taichi-etgs state (HDF5)"
    return "is not an HDF5 file, so not a taichi-etgs state"


def _read_dataset(f: Any, name: str, p: Path) -> np.ndarray:
    if name not in f:
        raise InputError(f"is missing dataset '{name}': the state file is incomplete or "
                         f"damaged", p)
    obj = f[name]
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        raise InputError(f"has '{name}' as a group, not a dataset: not a valid state", p)
    return obj[()]


def _read_json(f: Any, name: str, p: Path) -> Any:
    if name not in f:
        raise InputError(f"is missing dataset '{name}': the state file is incomplete or "
                         f"damaged", p)
    try:
        text = f[name].asstr()[()]
        return _loads(text)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"has an unreadable '{name}' (expected JSON text): {exc}", p) from exc


def _read_params(f: Any, prefix: str, p: Path) -> GaussianParams:
    arrays = [_read_dataset(f, f"{prefix}/{name}", p) for name in GROUPS]
    for name, a in zip(GROUPS, arrays, strict=True):
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"has '{prefix}/{name}' of type {a.dtype}, expected floats", p)
    try:
        return GaussianParams(*arrays)
    except ValueError as exc:
        raise InputError(f"has inconsistent '{prefix}' arrays: {exc}", p) from exc


def _attr(attrs: Any, name: str, p: Path, where: str = "/") -> Any:
    if name not in attrs:
        raise InputError(f"is missing attribute '{name}' on '{where}': the state file is "
                         f"incomplete or damaged", p)
    return attrs[name]


def _as_str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_state(path: str | PathLike) -> State:
    """Read a state written by :func:`save_state`.

    Parameters
    ----------
    path: the HDF5 state file.

    Returns
    -------
    The :class:`State`; arrays in the dtypes they were saved with.

    Raises
    ------
    InputError: the file is missing, a folder, not HDF5 (e.g. an MRC volume), truncated
        or corrupted, not a taichi-etgs state, written by a newer taichi-etgs (a
        ``format_version`` above this one's) or of an unknown version, or lacks a
        dataset or attribute.
    """
    import h5py

    p = Path(path)
    if not p.exists():
        raise InputError("state file not found", p)
    if p.is_dir():
        raise InputError("is a folder, not a state file", p)
    if not h5py.is_hdf5(p):
        raise InputError(_sniff_not_hdf5(p), p)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"cannot be read: the HDF5 file is truncated or corrupted ({exc})",
                         p) from exc
    try:
        with f:
            return _read_state(f, p)
    except InputError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        # h5py reports damaged object headers and data blocks as these.
        raise InputError(f"cannot be read: the HDF5 file is truncated or corrupted ({exc})",
                         p) from exc


def _read_state(f: Any, p: Path) -> State:
    fmt = _as_str(f.attrs.get("format", ""))
    if fmt != FORMAT_NAME:
        what = f"format {fmt!r}" if fmt else "no 'format' attribute"
        raise InputError(f"is an HDF5 file but not a taichi-etgs state ({what}; expected "
                         f"{FORMAT_NAME!r})", p)
    version = _attr(f.attrs, "format_version", p)
    try:
        version_int = int(version)
        if version_int != version:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"has an unknown format_version {version!r}", p) from None
    if version_int > FORMAT_VERSION:
        raise InputError(f"was written by a newer taichi-etgs (format_version {version_int}, "
                         f"written by version {_as_str(f.attrs.get('package_version', '?'))}"
                         f"); this version reads format_version {FORMAT_VERSION}: "
                         f"upgrade taichi-etgs", p)
    if version_int < 1:
        raise InputError(f"has an unknown format_version {version_int}", p)

    params = _read_params(f, "params", p)
    adam = None
    if "adam" in f:
        g = f["adam"]
        exp_avg = _read_params(f, "adam/exp_avg", p)
        exp_avg_sq = _read_params(f, "adam/exp_avg_sq", p)
        if not exp_avg.n == exp_avg_sq.n == params.n:
            raise InputError(f"has Adam moments for {exp_avg.n} Gaussians but parameters "
                             f"for {params.n}", p)
        adam = AdamState(step=int(_attr(g.attrs, "step", p, "/adam")), exp_avg=exp_avg,
                         exp_avg_sq=exp_avg_sq, lr=_read_json(f, "adam/lr", p),
                         beta1=float(_attr(g.attrs, "beta1", p, "/adam")),
                         beta2=float(_attr(g.attrs, "beta2", p, "/adam")),
                         eps=float(_attr(g.attrs, "eps", p, "/adam")))
    rng_state = _read_json(f, "meta/rng_state", p)
    config = _read_json(f, "meta/config", p)
    geometry = _read_json(f, "meta/geometry", p)
    for name, value in (("rng_state", rng_state), ("config", config), ("geometry", geometry)):
        if not isinstance(value, dict):
            raise InputError(f"has 'meta/{name}' that is not a JSON object", p)
    return State(params=params, adam=adam, iteration=int(_attr(f.attrs, "iteration", p)),
                 rng_state=rng_state, config=config,
                 geometry=ModelGeometry.from_dict(geometry, p),
                 input_checksum=_as_str(_attr(f.attrs, "input_checksum", p)),
                 format_version=version_int,
                 package_version=_as_str(f.attrs.get("package_version", "")),
                 candidates=_read_params(f, "candidates", p) if "candidates" in f else None)
