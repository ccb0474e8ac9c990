"""What a reconstruction's state knows of its run, and the decisions of a resume.

A state file (:mod:`taichi_etgs.gaussian.state`) saved by
:func:`~taichi_etgs.pipeline.gaussian.run_reconstruct` records, besides the model, the
run that made it (:class:`RunRecord`: the tilt series and how it was read, the tomogram
and where it goes), so ``reconstruct --resume STATE`` needs nothing else, and options
given with it are compared with the saved ones: a different ``--binning`` is named as
such rather than reported as other data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .inputs import StackSource
from .outputs import check_writable
from .tomograms import VolumeTarget

__all__ = ["INPUT_OPTIONS", "RunRecord", "check_resume", "check_state_output",
           "default_state_path", "half_paths", "resolve", "saved_config", "state_geometry"]
#: Reading options that change the data a model was fitted to (compared on resume).
INPUT_OPTIONS = ("binning", "exclude_views", "xf", "aln", "apply_aln", "mdoc", "contrast")
_EXTRA_OPTIONS = ("voxel_size", "halves")


@dataclass
class RunRecord:
    """The run a state was saved by: its input, its output and their settings.

    source: the tilt series and how it was read (absolute paths).
    target: the tomogram's size and file.
    voxel_size: the written tomogram's voxel size in A (None: the stack's).
    halves: odd/even half reconstructions were asked for.
    """

    source: StackSource
    target: VolumeTarget
    voxel_size: float | None = None
    halves: bool = False

    def to_dict(self) -> dict:
        return {"source": self.source.to_dict(), "target": self.target.to_dict(),
                "voxel_size": self.voxel_size, "halves": bool(self.halves)}

    @classmethod
    def from_dict(cls, values: Mapping, path=None) -> RunRecord:
        try:
            return cls(StackSource.from_dict(dict(values["source"])),
                       VolumeTarget.from_dict(dict(values["target"])),
                       None if values.get("voxel_size") is None
                       else float(values["voxel_size"]),
                       bool(values.get("halves", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"holds an unreadable record of its run ({exc})", path) from None

    @classmethod
    def from_state(cls, state, path=None) -> RunRecord | None:
        """The record a state holds, or None (a state saved by an older version, or not
        by a reconstruction)."""
        values = state.geometry.run
        return None if values is None else cls.from_dict(values, path)

    def options(self) -> dict[str, Any]:
        """The record as command options, by name (``stack``, ``binning``, ``output``...)."""
        return {**self.source.to_dict(), **self.target.to_dict(),
                "voxel_size": self.voxel_size, "halves": self.halves}


def resolve(resume_path, given: Mapping[str, Any]):
    """The input and output of a resumed run: the options ``given`` (by name, only those
    the user gave), the rest from the state's record.

    Returns ``(source, target, voxel_size, halves)``.

    Raises
    ------
    InputError: the state cannot be read, or records no run and the stack, thickness or
        output are not given.
    """
    from ..gaussian.state import load_state

    state = load_state(resume_path)
    record = RunRecord.from_state(state, resume_path)
    values = record.options() if record is not None else {}
    values.update(given)
    missing = [text for name, text in (("stack", "STACK"), ("thickness", "--thickness NZ"),
                                       ("output", "-o OUTPUT")) if values.get(name) is None]
    if missing:
        raise InputError(f"does not record the run it continues (saved by an older "
                         f"taichi-etgs); give {', '.join(missing)} with --resume", resume_path)
    source = StackSource.from_dict(values)
    target = VolumeTarget.from_dict(values)
    target.force = bool(values.get("force", False))
    return source, target, values.get("voxel_size"), bool(values.get("halves", False))


def _option_text(name: str, value) -> str:
    option = "--" + name.replace("_", "-")
    if value is None or value is False:
        return f"no {option}"
    if value is True:
        return option
    if name in ("xf", "aln", "mdoc"):
        value = Path(value).name
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"{option} {value}"


def _same(name: str, a, b) -> bool:
    if name in ("xf", "aln", "mdoc") and a is not None and b is not None:
        return os.path.abspath(a) == os.path.abspath(b)
    if name == "exclude_views" and not isinstance(a, str) and a is not None:
        a = [int(v) for v in a]
    if name == "exclude_views" and not isinstance(b, str) and b is not None:
        b = [int(v) for v in b]
    return a == b


def check_resume(state, path, source: StackSource, shape, checksum: str, force: bool) -> None:
    """Refuse (unless ``force``) to continue a state with other reading options, other
    data or another tomogram size, naming which."""
    record = RunRecord.from_state(state, path)
    if record is not None and not force and not source.in_memory:
        saved, now = record.source.to_dict(), source.to_dict()
        for name in INPUT_OPTIONS:
            if not _same(name, saved.get(name), now.get(name)):
                raise InputError(f"was made with {_option_text(name, saved.get(name))}, not "
                                 f"{_option_text(name, now.get(name))}: resume with the "
                                 f"state's setting (leave the option out: the state knows "
                                 f"it), or use --force to use the state anyway", path)
    geometry_shape = state.geometry.shape_zyx
    if state.input_checksum != checksum and not force:
        raise InputError("was made from other data (input checksum differs); use --force to "
                         "use it anyway", path)
    if geometry_shape and geometry_shape != tuple(shape) and not force:
        raise InputError(f"was made for a {'x'.join(map(str, geometry_shape))} (z, y, x) "
                         f"tomogram, not {'x'.join(map(str, shape))}; use --force to use it "
                         "anyway", path)


def saved_config(state, path, config_class, session):
    """The configuration a state was saved with, as ``config_class``; settings this
    version does not know are ignored with a warning, and settings the state predates take
    the values it was made with (``config_class.SAVED_BEFORE``), not today's defaults."""
    from .. import __version__

    known = {f.name for f in dataclasses.fields(config_class)}
    saved = {k: v for k, v in state.config.items() if not k.startswith("_")}
    unknown = sorted(set(saved) - known)
    if unknown:
        session.warn(f"{path}: settings unknown to taichi-etgs {__version__} are ignored: "
                     f"{', '.join(unknown)}")
    try:
        before = getattr(config_class, "SAVED_BEFORE", {})
        return config_class(**{**before, **{k: v for k, v in saved.items() if k in known}})
    except (TypeError, ValueError) as exc:  # InputError included
        raise InputError(f"holds invalid settings ({exc})", path) from None


def state_geometry(state, path) -> tuple[tuple[int, int, int], float]:
    """Tomogram shape (z, y, x) and voxel size (A; 1 when unknown) a state was made for."""
    geometry = state.geometry
    if geometry.shape_zyx is None:
        raise InputError("holds no tomogram size (not a model of a reconstruction?)", path)
    return geometry.shape_zyx, geometry.voxel_size_A


def _stem(output: Path) -> tuple[str, str]:
    """The output's name without its tomogram suffix, and that suffix (``.mrc``, or
    ``.zarr`` for OME-Zarr; ``.mrc`` for other names, which are kept whole)."""
    for suffix in (".zarr", ".mrc"):
        if output.name.endswith(suffix):
            return output.name.removesuffix(suffix), suffix
    return output.name, ".mrc"


def default_state_path(output: Path) -> Path:
    """``tomo.mrc`` (or ``tomo.zarr``) -> ``tomo.state.h5``."""
    return output.with_name(_stem(output)[0] + ".state.h5")


def half_paths(output: Path) -> list[Path]:
    """``tomo.mrc`` -> ``tomo_half1.mrc``, ``tomo_half2.mrc`` (``tomo.zarr`` ->
    ``tomo_half1.zarr``, ...)."""
    stem, suffix = _stem(output)
    return [output.with_name(f"{stem}_half{k}{suffix}") for k in (1, 2)]


def check_state_output(state_path: Path, resume_path: Path | None, force: bool) -> None:
    """The state file must not replace an earlier run's (unless resumed or ``force``)."""
    check_writable(state_path, True, what="state (--state)", probe=True)
    if not state_path.exists() or force:
        return
    if resume_path is not None and resume_path.exists() and os.path.samefile(resume_path,
                                                                             state_path):
        return
    raise InputError(f"exists: the state of an earlier run; continue it with --resume "
                     f"{state_path}, pass --state NEW.h5, or use --force to replace it",
                     state_path)
