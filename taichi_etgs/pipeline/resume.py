"""The decisions of a resume: whether a state fits the run, its settings, where states
and half maps go."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .inputs import StackSource
from .outputs import check_writable

__all__ = ["check_resume", "check_state_output", "default_state_path", "half_paths",
           "saved_config", "state_geometry"]


def check_resume(state, path, source: StackSource, shape, checksum: str, force: bool) -> None:
    """Refuse (unless ``force``) to continue a state made from other data or for another
    tomogram size."""
    try:
        geometry_shape = tuple(int(n) for n in state.geometry.get("shape_zyx", ()))
    except (TypeError, ValueError):
        raise InputError("holds an unreadable geometry (shape_zyx)", path) from None
    if state.input_checksum != checksum and not force:
        raise InputError("was made from other data (input checksum differs); use --force to "
                         "use it anyway", path)
    if geometry_shape and geometry_shape != tuple(shape) and not force:
        raise InputError(f"was made for a {'x'.join(map(str, geometry_shape))} (z, y, x) "
                         f"tomogram, not {'x'.join(map(str, shape))}; use --force to use it "
                         "anyway", path)


def saved_config(state, path, config_class, session):
    """The configuration a state was saved with, as ``config_class``; settings this
    version does not know are ignored with a warning."""
    from .. import __version__

    known = {f.name for f in dataclasses.fields(config_class)}
    saved = {k: v for k, v in state.config.items() if not k.startswith("_")}
    unknown = sorted(set(saved) - known)
    if unknown:
        session.warn(f"{path}: settings unknown to taichi-etgs {__version__} are ignored: "
                     f"{', '.join(unknown)}")
    try:
        return config_class(**{k: v for k, v in saved.items() if k in known})
    except (TypeError, ValueError) as exc:  # InputError included
        raise InputError(f"holds invalid settings ({exc})", path) from None


def state_geometry(state, path) -> tuple[tuple[int, int, int], float]:
    """Tomogram shape (z, y, x) and pixel size (A) a state was made for."""
    try:
        shape = tuple(int(n) for n in state.geometry.get("shape_zyx", ()))
        pixel = float(state.geometry.get("pixel_size_A", 0.0) or 0.0) or 1.0
    except (TypeError, ValueError):
        raise InputError("holds an unreadable geometry (shape_zyx, pixel_size_A)",
                         path) from None
    if len(shape) != 3 or min(shape) < 1:
        raise InputError("holds no tomogram geometry (shape_zyx)", path)
    if not (np.isfinite(pixel) and pixel > 0):
        pixel = 1.0
    return shape, pixel


def default_state_path(output: Path) -> Path:
    """``tomo.mrc`` -> ``tomo.state.h5``."""
    return output.with_name(output.name.removesuffix(".mrc") + ".state.h5")


def half_paths(output: Path) -> list[Path]:
    """``tomo.mrc`` -> ``tomo_half1.mrc``, ``tomo_half2.mrc``."""
    stem = output.name.removesuffix(".mrc")
    return [output.with_name(f"{stem}_half{k}.mrc") for k in (1, 2)]


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
