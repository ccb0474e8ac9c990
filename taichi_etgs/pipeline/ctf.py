"""The CTF settings of a run (``--defocus`` NUMBER or FILE, ``--voltage``, ``--cs``,
``--amplitude-contrast``) and the defocus of each view of a loaded tilt series."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["CtfSettings", "defocus_of_views", "microscope", "parse_defocus",
           "phase_flip"]

log = logging.getLogger("taichi_etgs.pipeline")


def parse_defocus(value) -> float | Path | None:
    """``--defocus``: a number (micrometres of underfocus, >= 0) or a defocus file."""
    if value is None or isinstance(value, (int, float)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise InputError(f"--defocus {value}: the underfocus in micrometres must be a "
                             f"number >= 0")
        return None if value is None else float(value)
    if isinstance(value, PathLike):
        return Path(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return Path(text)
    return parse_defocus(number)


@dataclass
class CtfSettings:
    """How the microscope's CTF is handled.

    defocus: underfocus in micrometres for every view (0 or None: no CTF), or a file with
        the defocus of each view (IMOD .defocus, CTFFIND4, AreTomo3 _CTF.txt:
        :mod:`taichi_etgs.io.defocus`).
    voltage_kV, cs_mm, amplitude_contrast: the microscope.
    tolerance_nm: phase flipping (WBP, SIRT): the largest change of defocus across a strip.
    """

    defocus: float | str | PathLike | None = None
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    tolerance_nm: float = 200.0

    def __post_init__(self) -> None:
        self.defocus = parse_defocus(self.defocus)
        if not 0 <= self.amplitude_contrast < 1:
            raise InputError(f"--amplitude-contrast {self.amplitude_contrast}: expected a "
                             f"fraction in [0, 1)")
        if not self.voltage_kV > 0:
            raise InputError(f"--voltage {self.voltage_kV}: expected kV > 0")
        if not self.cs_mm >= 0:
            raise InputError(f"--cs {self.cs_mm}: expected mm >= 0")

    @property
    def active(self) -> bool:
        return self.defocus is not None and (isinstance(self.defocus, Path)
                                             or self.defocus > 0)


def defocus_of_views(settings: CtfSettings, series, n_raw: int, session):
    """The :class:`~taichi_etgs.io.defocus.DefocusSeries` of the series' views (matched to
    the views it keeps, as its angles are), or None without a CTF."""
    from ..io.defocus import DefocusSeries, match_views, read_defocus

    if not settings.active:
        return None
    if not isinstance(settings.defocus, Path):
        return DefocusSeries.uniform(settings.defocus, series.n_tilts)
    path = settings.defocus
    defocus = read_defocus(path)
    if defocus.format == "imod" and defocus.n_views < n_raw:
        last = defocus.n_views
        session.warn(f"{path}: gives views 1 to {last} only; views {last + 1} to {n_raw} take "
                     f"view {last}'s defocus")
    defocus = match_views(defocus, n_raw, series.kept_views)
    session.add_input("defocus", path)
    d = defocus.defocus_um
    astig = ""
    if defocus.astigmatic:
        spread = np.abs(defocus.defocus1_um - defocus.defocus2_um)
        astig = f", astigmatism up to {float(spread.max()):.2f} um"
    session.tell(f"defocus from {path} ({defocus.format}): {float(d.min()):.2f} to "
                 f"{float(d.max()):.2f} um over {defocus.n_views} views{astig}")
    log.info("defocus per view (um): %s", np.round(d, 3).tolist())
    return defocus


def microscope(defocus, pixel_size_A: float, settings: CtfSettings, source=None):
    """The :class:`~taichi_etgs.gaussian.transfer.Microscope` of the views."""
    from ..gaussian.transfer import Microscope

    if not pixel_size_A > 0:
        raise InputError("--defocus needs the pixel size, which the stack's header does not "
                         "give: pass --pixel-size", source)
    astig = defocus.astigmatic
    return Microscope(tuple(defocus.defocus1_um if astig else defocus.defocus_um),
                      pixel_size_A, settings.voltage_kV, settings.cs_mm,
                      settings.amplitude_contrast,
                      tuple(defocus.defocus2_um) if astig else None,
                      tuple(defocus.astigmatism_deg) if astig else None)


def phase_flip(views: np.ndarray, series, settings: CtfSettings, n_raw: int, pixel_size_A,
               session, out=None) -> tuple[np.ndarray, dict]:
    """Phase-flipped views for WBP and SIRT (unchanged without a CTF), and what the
    sidecar records of it. out: where they go (``views`` itself: in place; default new)."""
    from ..classical.phaseflip import phase_flip_views

    defocus = defocus_of_views(settings, series, n_raw, session)
    if defocus is None:
        return views, {}
    scope = microscope(defocus, pixel_size_A, settings, series.source)
    with session.progress(series.n_tilts, "phase flip") as bar:
        flipped = phase_flip_views(views, series.tilts_deg, scope,
                                   tolerance_nm=settings.tolerance_nm,
                                   progress=lambda k: bar.update(k), out=out)
    info = {"ctf": {"phase_flipped": True, "defocus_um": defocus.defocus_um.tolist(),
                    "defocus_source": str(settings.defocus), "voltage_kV": settings.voltage_kV,
                    "cs_mm": settings.cs_mm, "amplitude_contrast": settings.amplitude_contrast,
                    "astigmatic": defocus.astigmatic}}
    return flipped, info
