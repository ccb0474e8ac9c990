"""MRC files: tilt stacks in, tomograms (and stacks) out.

Reading goes through ``mrcfile`` in permissive mode so that a damaged file becomes
one clear :class:`~taichi_etgs.errors.InputError` instead of a traceback; damage
that does not prevent reading (an old-style header without the ``MAP`` identifier,
for example) is reported as a :class:`StackWarning`.

Writing is atomic: a temporary file in the destination folder is written, flushed to
disk and renamed over the destination, so an interrupted run never leaves a
half-written MRC behind.
"""

from __future__ import annotations

import contextlib
import mmap
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import mrcfile
import numpy as np

from .._atomic import atomic_output
from ..errors import InputError
from ..pipeline.outputs import check_writable
from ._files import AtomicWriter, existing_file

__all__ = [
    "SUPPORTED_MODES",
    "MrcSlabWriter",
    "StackWarning",
    "read_stack",
    "read_volume",
    "release_pages",
    "write_stack",
    "write_volume",
]

#: MRC modes we read: 0 int8 (uint8 for IMOD files that say so), 1 int16, 2 float32,
#: 6 uint16, 12 float16.
SUPPORTED_MODES: dict[int, str] = {
    0: "8-bit integer",
    1: "16-bit integer",
    2: "32-bit float",
    6: "16-bit unsigned integer",
    12: "16-bit float",
}
_MODE_NAMES = {3: "complex 16-bit integer", 4: "complex 32-bit float", 16: "RGB colour",
               101: "4-bit"}

_HEADER_BYTES = 1024
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# IMOD marks files it wrote with this stamp; bit 0 of the flags that follow says whether
# mode-0 bytes are signed. Without the bit IMOD's bytes are unsigned (0..255).
_IMOD_STAMP = 1146047817
_IMOD_STAMP_OFFSET = 152 - 112  # offsets inside the 84-byte ``extra2`` header field
_MAX_LABELS = 10
_LABEL_CHARS = 80


class StackWarning(UserWarning):
    """Something odd about an input image file that does not stop it being read."""


# --------------------------------------------------------------------------- reading


def _imod_unsigned_bytes(header: np.recarray) -> bool:
    raw = np.asarray(header.extra2).tobytes()
    ints = np.frombuffer(raw, dtype=header.mode.dtype, count=2, offset=_IMOD_STAMP_OFFSET)
    return int(ints[0]) == _IMOD_STAMP and not (int(ints[1]) & 1)


def _pixel_size_from_header(header: np.recarray) -> float:
    # mrcfile's voxel_size divides by mx and warns on mx == 0; 0.0 means "unknown" here.
    mx = int(header.mx)
    cella_x = float(header.cella.x)
    if mx <= 0 or not np.isfinite(cella_x) or cella_x <= 0:
        return 0.0
    return cella_x / mx


def _open_mrc(path: str | PathLike, what: str) -> tuple[Path, np.ndarray, np.recarray]:
    """Map an MRC file read-only and return ``(path, data, header)``.

    ``data`` keeps mrcfile's shape (2D for a single image, 4D for a volume stack).
    Raises InputError for anything that prevents reading the data block.
    """
    p = existing_file(path)
    size = p.stat().st_size
    if size < _HEADER_BYTES:
        raise InputError(f"is not an MRC file: it has {size} bytes, fewer than the "
                         f"{_HEADER_BYTES}-byte MRC header ({what} expected)", p)
    try:
        with open(p, "rb") as fh:
            signature = fh.read(len(_HDF5_SIGNATURE))
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", p) from exc
    if signature == _HDF5_SIGNATURE:
        raise InputError(f"is an HDF5 file (a taichi-etgs state?), not an MRC file ({what} "
                         f"expected)", p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(p, mode="r", permissive=True)
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot be read as an MRC file ({exc})", p) from exc
        try:
            header = mrc.header
            data = mrc.data
        finally:
            # The memmap stays valid after close: it holds its own mapping of the file.
            mrc.close()
    notes = [str(w.message) for w in caught]
    has_map_id = bytes(header.map) == b"MAP "
    nx, ny, nz, mode = int(header.nx), int(header.ny), int(header.nz), int(header.mode)
    header_sane = min(nx, ny, nz) > 0 and max(nx, ny, nz) < 2**20
    if not has_map_id and (not header_sane or mode not in SUPPORTED_MODES):
        raise InputError(f"is not an MRC file (no 'MAP ' identifier and an invalid header; "
                         f"{what} expected)", p)
    if not header_sane:
        raise InputError(f"has an invalid MRC header: nx, ny, nz = {nx}, {ny}, {nz}", p)
    if mode not in SUPPORTED_MODES:
        name = _MODE_NAMES.get(mode, "unknown")
        supported = ", ".join(str(m) for m in SUPPORTED_MODES)
        raise InputError(f"has MRC mode {mode} ({name}), which is not supported; "
                         f"supported modes are {supported}", p)
    if data is None:
        itemsize = mrcfile.utils.dtype_from_mode(mode).itemsize
        expected = _HEADER_BYTES + int(header.nsymbt) + nx * ny * nz * itemsize
        raise InputError(f"is truncated: its header describes {nx} x {ny} x {nz} pixels "
                         f"in mode {mode} ({expected} bytes in all) but the file has only "
                         f"{size} bytes", p)
    if not has_map_id:
        notes.insert(0, "no 'MAP ' identifier (an old-style MRC header?)")
    for note in dict.fromkeys(notes):
        if "Map ID string" in note:
            continue  # already reported in plain words above
        warnings.warn(f"{p}: {note}; reading it anyway", StackWarning, stacklevel=3)
    if mode == 0 and _imod_unsigned_bytes(header):
        data = data.view(np.uint8)
    return p, data, header


def _to_zyx(data: np.ndarray, header: np.recarray, p: Path, what: str) -> np.ndarray:
    """Reorder the file's (sections, rows, columns) axes to (Z, Y, X)."""
    axes = (int(header.maps), int(header.mapr), int(header.mapc))
    if axes in ((3, 2, 1), (0, 0, 0)):
        return data
    if sorted(axes) != [1, 2, 3]:
        raise InputError(f"has an invalid axis order (mapc, mapr, maps = "
                         f"{axes[2]}, {axes[1]}, {axes[0]})", p)
    if what == "tilt stack":
        raise InputError(f"has axis order mapc, mapr, maps = {axes[2]}, {axes[1]}, "
                         f"{axes[0]}; a tilt stack must be 1, 2, 3 (one image per section)", p)
    # data axis i holds the file axis numbered axes[i] (1 = X, 2 = Y, 3 = Z)
    order = [axes.index(3), axes.index(2), axes.index(1)]
    return data.transpose(order)


def _check_3d(data: np.ndarray, p: Path, what: str) -> None:
    if data.ndim == 2 or (data.ndim == 3 and data.shape[0] == 1):
        raise InputError(f"is a single image, not a {what}", p)
    if data.ndim == 4:
        raise InputError(f"is a volume stack ({data.shape[0]} volumes), not a {what}", p)


def read_stack(path: str | PathLike, *, mmap: bool = True) -> tuple[np.ndarray, float]:
    """Read a tilt stack (``.mrc``, ``.st``, ``.ali``, ... any extension).

    Parameters
    ----------
    path
        The MRC file; one tilt image per section.
    mmap
        If True (default) the data are a read-only memory map of the file in its
        stored dtype, so nothing is loaded until used. If False, they are loaded
        into memory (still in the stored dtype).

    Returns
    -------
    data
        The images, ``(n_tilts, ny, nx)``, dtype of the file's mode: int8 or uint8
        (mode 0; uint8 when IMOD's header flag says the bytes are unsigned), int16,
        float32, uint16 or float16.
    pixel_size_A
        Pixel size in Angstrom from the header (``cella.x / mx``), or ``0.0`` when the
        header does not give one; callers then assume 1.0 and tell the user.

    Raises
    ------
    InputError
        Missing file, not an MRC file, truncated data, unsupported mode, a single
        image (``nz == 1``), a volume stack, or a non-standard axis order.

    Warns
    -----
    StackWarning
        Header problems that do not prevent reading (for example no ``MAP`` id).
    """
    p, data, header = _open_mrc(path, "tilt stack")
    _check_3d(data, p, "tilt stack")
    data = _to_zyx(data, header, p, "tilt stack")
    if not mmap:
        data = np.array(data)
    return data, _pixel_size_from_header(header)


def release_pages(data: np.ndarray) -> None:
    """Give back the resident pages of a memory-mapped stack (:func:`read_stack`) read so
    far; they stay in the system's file cache. A stack read section by section through one
    map would otherwise stay whole in the process's resident memory until the map is
    closed. Nothing for an array in memory."""
    obj = data
    while obj is not None:
        mapping = getattr(obj, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                mapping.madvise(mmap.MADV_DONTNEED)  # a read-only shared map: nothing lost
            return
        obj = getattr(obj, "base", None)


def read_volume(path: str | PathLike) -> tuple[np.ndarray, float]:
    """Read a tomogram into memory as float32 ``(nz, ny, nx)``.

    Parameters
    ----------
    path
        The MRC file. Files written with another axis order (``mapc, mapr, maps``
        other than 1, 2, 3) are transposed to Z, Y, X.

    Returns
    -------
    volume_zyx
        float32, C-contiguous, ``(nz, ny, nx)``.
    voxel_size_A
        Voxel size in Angstrom (X axis of the header), or ``0.0`` if unknown.

    Raises
    ------
    InputError
        As :func:`read_stack`, and when the volume holds NaN or Inf values.
    """
    p, data, header = _open_mrc(path, "volume")
    _check_3d(data, p, "volume")
    data = _to_zyx(data, header, p, "volume")
    volume = np.empty(data.shape, dtype=np.float32)
    for k in range(data.shape[0]):
        volume[k] = data[k]
        if not np.isfinite(volume[k]).all():
            raise InputError(f"contains NaN or Inf values (first in section {k})", p)
    return volume, _pixel_size_from_header(header)


# --------------------------------------------------------------------------- writing


def _clean_label(label: str) -> str:
    # MRC labels are 80 printable ASCII characters; anything else would make mrcfile raise.
    text = "".join(c if " " <= c <= "~" else "?" for c in str(label))
    return text[:_LABEL_CHARS]


def _set_header_stats_f64(header: np.recarray, data: np.ndarray) -> None:
    """dmin, dmax, dmean and rms (the standard deviation) from float64 sums, per section."""
    total = float(sum(np.sum(section, dtype=np.float64) for section in data))
    mean = total / max(data.size, 1)
    sq = float(sum(np.sum(np.square(section.astype(np.float64) - mean)) for section in data))
    with np.errstate(over="ignore"):  # a range beyond float32's is stored as Inf
        header.dmin = float(data.min())
        header.dmax = float(data.max())
        header.dmean = np.float32(mean)
        header.rms = np.float32(np.sqrt(sq / max(data.size, 1)))


def _write_mrc(path: str | PathLike, array: np.ndarray, spacing_A: float, *, force: bool,
               labels: Sequence[str], image_stack: bool,
               origin_A: Sequence[float] | None = None) -> Path:
    p = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array (z, y, x), got shape {array.shape}")
    labels = _check_header_values(spacing_A, labels, origin_A)
    check_writable(p, force)
    data = np.ascontiguousarray(array, dtype=np.float32)
    for k in range(data.shape[0]):
        if not np.isfinite(data[k]).all():
            raise InputError(f"not written: the data contain NaN or Inf values "
                             f"(first in section {k})", p)
    with atomic_output(p) as tmp, mrcfile.new(tmp) as mrc:
        # mrcfile computes the header statistics in float32: values near 1e20 and
        # above overflow its rms (a RuntimeWarning and an Inf in the header).
        with np.errstate(over="ignore", invalid="ignore"):
            mrc.set_data(data)
        if not np.isfinite(float(mrc.header.rms)):
            _set_header_stats_f64(mrc.header, data)
        if image_stack:
            mrc.set_image_stack()
        _set_header(mrc, spacing_A, origin_A, labels)
    return p


def _check_header_values(spacing_A: float, labels, origin_A) -> list[str]:
    """Refuse a bad voxel size or origin (programming errors); the labels as a list."""
    if not (np.isfinite(spacing_A) and spacing_A > 0):
        raise ValueError(f"voxel size must be a positive number of Angstrom, got {spacing_A}")
    if origin_A is not None and (len(origin_A) != 3
                                 or not all(np.isfinite(v) for v in origin_A)):
        raise ValueError(f"origin must be three finite numbers (x, y, z), got {origin_A}")
    return [labels] if isinstance(labels, str) else list(labels)


def _set_header(mrc, spacing_A: float, origin_A, labels) -> None:
    """Voxel size, origin and labels of a file being written."""
    mrc.voxel_size = float(spacing_A)
    if origin_A is not None:
        mrc.header.origin = tuple(float(v) for v in origin_A)
    labels = list(labels)[:_MAX_LABELS]
    if labels:
        # Replace mrcfile's "Created by mrcfile.py" label: ten slots are all we have.
        mrc.header.nlabl = 0
        mrc.header.label[:] = b""
    for label in labels:
        mrc.add_label(_clean_label(label))


def write_volume(path: str | PathLike, volume_zyx: np.ndarray, voxel_size_A: float, *,
                 force: bool = False, labels: Sequence[str] = (),
                 origin_A: Sequence[float] | None = None) -> Path:
    """Write a float32 MRC volume atomically.

    Parameters
    ----------
    path
        Destination file. Its folder must exist.
    volume_zyx
        The volume. [nz, ny, nx]; converted to float32.
    voxel_size_A
        Voxel size in Angstrom (> 0), stored for X, Y and Z.
    force
        Overwrite an existing file. Without it an existing file is an error.
    labels
        Header labels (at most 10 are kept; each is cut to 80 characters, and
        characters other than printable ASCII become ``?``). Without labels the
        file keeps mrcfile's "Created by" label.
    origin_A
        The header's origin (x, y, z) in Angstrom, IMOD's convention: a point at
        (continuous) index ``i`` along an axis lies at ``i * voxel_size - origin`` in the
        frame the volume shares with others (so a sub-volume starting at index ``k`` of a
        larger one has origin ``-k * voxel_size``). None: (0, 0, 0).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        The file exists and ``force`` is False, the folder does not exist, or the
        volume holds NaN/Inf values (nothing is written then).
    ValueError
        ``volume_zyx`` is not 3D or ``voxel_size_A`` is not positive (programming errors).

    Notes
    -----
    The data go to a temporary file next to ``path`` which is flushed (fsync) and then
    renamed over ``path`` (``os.replace``); on any exception, KeyboardInterrupt
    included, the temporary file is removed. Header statistics (min, max, mean, rms)
    are computed from the data.
    """
    return _write_mrc(path, volume_zyx, voxel_size_A, force=force, labels=labels,
                      image_stack=False, origin_A=origin_A)


def write_stack(path: str | PathLike, stack: np.ndarray, pixel_size_A: float, *,
                force: bool = False, labels: Sequence[str] = ()) -> Path:
    """Write a tilt stack ``(n_tilts, ny, nx)`` as float32 MRC, atomically.

    Same as :func:`write_volume` (one implementation), except that the header marks
    the file as an image stack (``ispg = 0``, ``mz = 1``), as IMOD does for stacks.
    """
    return _write_mrc(path, stack, pixel_size_A, force=force, labels=labels,
                      image_stack=True)


class MrcSlabWriter(AtomicWriter):
    """A float32 MRC volume written a band of Y rows at a time, atomically.

    For volumes built slab by slab (:mod:`taichi_etgs.pipeline.slabs`): the file is
    created at its full size in a temporary file beside ``path`` and each band goes in
    through a memory map opened for that band only (the pages of an open map count in
    the process's resident memory; one map of the whole volume would hold all of it). The
    header's statistics are accumulated band by band in float64; :meth:`close` writes
    them and renames the file to ``path``. Used as a context manager, an exception
    removes the temporary file and leaves ``path`` as it was.

    path, voxel_size_A, force, labels, origin_A: as :func:`write_volume`.
    shape_zyx: the whole volume's shape.
    """

    def __init__(self, path: str | PathLike, shape_zyx: tuple[int, int, int],
                 voxel_size_A: float, *, force: bool = False, labels: Sequence[str] = (),
                 origin_A: Sequence[float] | None = None) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape_zyx)
        labels = _check_header_values(voxel_size_A, labels, origin_A)
        check_writable(self.path, force)
        self._files = contextlib.ExitStack()
        self._tmp = self._files.enter_context(atomic_output(self.path))
        try:
            with mrcfile.new_mmap(self._tmp, shape=self.shape, mrc_mode=2,
                                  overwrite=True) as mrc:
                _set_header(mrc, voxel_size_A, origin_A, labels)
        except BaseException as exc:
            self._files.__exit__(type(exc), exc, exc.__traceback__)
            raise
        # count, mean, sum of squared deviations (Chan et al.'s pairwise update), min, max
        self._count, self._mean, self._m2 = 0, 0.0, 0.0
        self._min, self._max = np.inf, -np.inf

    def write_rows(self, first: int, block: np.ndarray) -> None:
        """Rows ``first:first + rows`` of every section. block: [nz, rows, nx]"""
        block = np.asarray(block, dtype=np.float32)
        nz, ny, nx = self.shape
        if block.ndim != 3 or block.shape[0] != nz or block.shape[2] != nx \
                or not 0 <= first <= ny - block.shape[1]:
            raise ValueError(f"rows {first}+{block.shape[1:2]} of shape {block.shape} do "
                             f"not fit a volume of shape {self.shape}")
        with mrcfile.mmap(self._tmp, mode="r+") as mrc:
            mrc.data[:, first:first + block.shape[1], :] = block
        n = block.size
        mean = float(np.mean(block, dtype=np.float64))
        # A section at a time: float64 temporaries of one section, not of the band.
        m2 = sum(float(np.sum(np.square(section - mean, dtype=np.float64)))
                 for section in block)
        delta, total = mean - self._mean, self._count + n
        self._mean += delta * n / total
        self._m2 += m2 + delta * delta * self._count * n / total
        self._count = total
        self._min = min(self._min, float(block.min()))
        self._max = max(self._max, float(block.max()))

    def close(self) -> Path:
        """Write the header's statistics and move the file to ``path``."""
        with mrcfile.mmap(self._tmp, mode="r+") as mrc, np.errstate(over="ignore"):
            mrc.header.dmin, mrc.header.dmax = self._min, self._max
            mrc.header.dmean = np.float32(self._mean)
            mrc.header.rms = np.float32(np.sqrt(self._m2 / max(self._count, 1)))
        self._files.close()
        return self.path
