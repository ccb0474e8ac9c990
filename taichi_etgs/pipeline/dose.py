"""The exposure settings of a run (``--dose`` FILE, ``--dose-per-tilt`` with
``--tilt-order``, ``--tilt-start``, ``--tilt-group``), the exposure of each view of a
loaded tilt series, and the exposure filtering of the views for WBP and SIRT."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..simulation.simulate import TILT_ORDERS
from . import inputs

__all__ = ["TILT_ORDERS", "DoseSettings", "dose_of_views", "exposure_filter", "record"]

log = logging.getLogger("taichi_etgs.pipeline")

@dataclass
class DoseSettings:
    """Where the views' exposure comes from.

    dose: a SerialEM ``.mdoc`` (``ExposureDose``, ``PriorRecordDose``) or a two-column
        ``.dose`` file (:mod:`taichi_etgs.io.dose`); None: from ``dose_per_tilt``.
    dose_per_tilt: the exposure of every view, e/A^2 (None or 0: no dose weighting unless
        ``dose`` is given).
    tilt_order, tilt_start_deg, tilt_group: the acquisition order that gives each view's
        prior exposure (:func:`taichi_etgs.simulation.simulate.acquisition_sequence`); for an
        ``.mdoc`` without ``PriorRecordDose`` or ``DateTime``, too.
    """

    dose: str | PathLike | None = None
    dose_per_tilt: float | None = None
    tilt_order: str | None = None
    tilt_start_deg: float | None = None
    tilt_group: int = 2

    def __post_init__(self) -> None:
        if self.dose is not None:
            self.dose = Path(self.dose)
        if self.dose_per_tilt is not None:
            if not (np.isfinite(self.dose_per_tilt) and 0 <= self.dose_per_tilt <= 1000):
                raise InputError(f"--dose-per-tilt {self.dose_per_tilt}: expected the exposure "
                                 f"of one view in e/A^2, >= 0 (and at most 1000)")
            if self.dose is not None and self.dose_per_tilt > 0:
                raise InputError("--dose FILE and --dose-per-tilt both given: the file has "
                                 "the doses; give one of them")
        if self.tilt_order is not None and self.tilt_order not in TILT_ORDERS:
            raise InputError(f"--tilt-order {self.tilt_order}: expected one of "
                             f"{', '.join(TILT_ORDERS)}")
        if self.tilt_start_deg is not None and not np.isfinite(self.tilt_start_deg):
            raise InputError("--tilt-start: expected an angle in degrees")
        if int(self.tilt_group) < 1:
            raise InputError(f"--tilt-group {self.tilt_group}: expected views per group >= 1")

    @property
    def active(self) -> bool:
        return self.dose is not None or bool(self.dose_per_tilt)


def _sequence(settings: DoseSettings, angles) -> np.ndarray:
    from ..simulation.simulate import acquisition_sequence

    return acquisition_sequence(angles, settings.tilt_order or "sequential",
                                group=int(settings.tilt_group),
                                start_deg=settings.tilt_start_deg)


def dose_of_views(settings: DoseSettings, series, n_raw: int, session):
    """The :class:`~taichi_etgs.io.dose.DoseSeries` of the series' views (matched to the
    views it keeps, as its angles are), or None without dose weighting."""
    from ..io.dose import DoseSeries, match_views, read_dose

    if settings is None or not settings.active:
        return None
    raw = inputs.raw_angles(series, n_raw)
    if settings.dose is not None:
        sequence = None
        if settings.tilt_order is not None:
            sequence = _sequence(settings, raw if raw is not None else series.tilts_deg)
        dose = match_views(read_dose(settings.dose, sequence), n_raw, series.kept_views)
        session.add_input("dose", settings.dose)
        where = f"{settings.dose} ({dose.format})"
    else:
        if raw is None:
            session.warn(f"--dose-per-tilt: the angles of the {n_raw - series.n_tilts} "
                         f"excluded views are unknown; their exposure is not counted in the "
                         f"prior dose of the views after them")
            dose = DoseSeries.from_order(settings.dose_per_tilt,
                                         _sequence(settings, series.tilts_deg))
        else:
            dose = DoseSeries.from_order(settings.dose_per_tilt, _sequence(settings, raw))
            dose = dose.select(series.kept_views)
        where = (f"--dose-per-tilt {settings.dose_per_tilt:g}, "
                 f"{settings.tilt_order or 'sequential'} order")
    e = dose.exposure_e_per_A2
    session.tell(f"exposure from {where}: {float(e.min()):.1f} to {float(e.max()):.1f} e/A^2 "
                 f"over {dose.n_views} views")
    log.info("exposure per view (e/A^2): %s", np.round(e, 2).tolist())
    return dose


def record(dose, settings: DoseSettings, **extra) -> dict:
    """What the sidecar records of the dose weighting (``result.dose``)."""
    return {"dose": {"dose_e_per_A2": dose.dose_e_per_A2.tolist(),
                     "prior_dose_e_per_A2": dose.prior_dose_e_per_A2.tolist(),
                     "source": str(settings.dose) if settings.dose is not None
                     else f"dose-per-tilt {settings.dose_per_tilt:g}",
                     "tilt_order": settings.tilt_order, "tilt_start_deg": settings.tilt_start_deg,
                     "tilt_group": int(settings.tilt_group), **extra}}


def exposure_filter(views: np.ndarray, series, settings: DoseSettings, n_raw: int,
                    pixel_size_A: float, voltage_kV: float, session, out=None
                    ) -> tuple[np.ndarray, dict]:
    """Exposure-filtered views for WBP and SIRT (unchanged without dose weighting), and
    what the sidecar records of it (:mod:`taichi_etgs.classical.doseweight`). out: where
    they go (``views`` itself: in place; default new)."""
    from ..classical.doseweight import exposure_filter_views

    dose = dose_of_views(settings, series, n_raw, session)
    if dose is None:
        return views, {}
    if not pixel_size_A > 0:
        raise InputError("dose weighting needs the pixel size, which the stack's header does "
                         "not give: pass --pixel-size", series.source)
    with session.progress(series.n_tilts, "exposure filter") as bar:
        filtered = exposure_filter_views(views, pixel_size_A, dose.exposure_e_per_A2,
                                         voltage_kV, progress=lambda k: bar.update(k),
                                         out=out)
    return filtered, record(dose, settings, exposure_filtered=True, voltage_kV=voltage_kV,
                            normalisation="max")
