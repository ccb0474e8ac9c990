"""Simulated data sets with their ground truth, and scores of a tomogram: against a
reference (PSNR, SSIM, FSC, missing-wedge FSC) or of two half maps (half-map FSC)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError
from .outputs import check_writable
from .session import Session

__all__ = ["Evaluation", "Simulated", "run_evaluate", "run_simulate"]


@dataclass
class Simulated:
    """A simulation (:class:`~taichi_etgs.simulation.simulate.SimulationResult`: tilts, angles,
    ground truth) and the files written, by name."""

    result: object
    files: dict[str, Path] = field(default_factory=dict)


def run_simulate(config, output_dir: str | PathLike | None = None, *, force: bool = False,
                 session: Session | None = None):
    """Simulate a tilt series and its ground truth (:mod:`taichi_etgs.simulation.simulate`).

    config: a :class:`~taichi_etgs.simulation.simulate.SimulationConfig`.
    output_dir: where ``tilts.mrc``, ``tilts.tlt``, ``ground_truth.mrc`` and
        ``simulation.json`` go (with sidecars); None: nothing is written.

    Returns a :class:`Simulated`.
    """
    from ..simulation.simulate import (
        DEFOCUS_FILE,
        DOSE_FILE,
        OUTPUT_FILES,
        simulate_tilt_series,
        write_simulation,
    )
    from ..simulation.specimen import PlacementWarning

    session = session or Session()
    if output_dir is not None:
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise InputError("exists and is not a folder", out)
        extra = (DEFOCUS_FILE, DOSE_FILE) if config.noise == "physical" else ()
        for name in OUTPUT_FILES + extra:
            check_writable(out / name, force, folder_must_exist=False)
    for path in config.structures:
        session.add_input("structure", path)
    session.start_compute()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PlacementWarning)
        result = simulate_tilt_series(config, progress=session.tell)
    session.relay(caught)
    out = Simulated(result)
    if output_dir is not None:
        out.files = write_simulation(result, output_dir, force=force)
        for name, path in out.files.items():
            if Path(path).suffix.lower() == ".mrc":
                session.write_sidecar(Path(path), {"what": name,
                                                   "pixel_size_A": config.pixel_size_A,
                                                   "shape_zyx": list(config.shape_zyx),
                                                   "seed": config.seed})
        session.say(f"wrote {', '.join(str(p) for p in out.files.values())}")
    return out


@dataclass
class Evaluation:
    """Scores of a tomogram.

    kind: "reference" (against a ground truth) or "halves" (half-map FSC).
    metrics: :func:`~taichi_etgs.evaluation.metrics.evaluate` or
        :func:`~taichi_etgs.evaluation.metrics.half_map_fsc`.
    voxel_size_A: the voxel size the resolutions are in.
    files: what was written (the JSON, the figure).
    """

    kind: str
    metrics: dict
    voxel_size_A: float
    files: list[Path] = field(default_factory=list)


def _volume(value, role: str, session: Session) -> tuple[np.ndarray, float, str]:
    """A volume and its voxel size (0: unknown) from a file or an array."""
    from ..io import read_volume

    if isinstance(value, (str, PathLike)):
        volume, voxel = read_volume(value)
        session.add_input(role, value)
        return volume, voxel, Path(value).name
    return np.asarray(value, dtype=np.float32), 0.0, f"the {role} array"


def run_evaluate(recon, reference=None, *, half2=None, voxel_size: float | None = None,
                 max_tilt: float | None = None, angles: str | PathLike | None = None,
                 json_path: str | PathLike | None = None,
                 figure_path: str | PathLike | None = None, force: bool = False,
                 session: Session | None = None) -> Evaluation:
    """Score a reconstruction against a reference, or two half maps against each other.

    recon, reference, half2: MRC files or arrays (z, y, x); give ``reference`` or
        ``half2``.
    voxel_size: A (default: the headers', else 1). max_tilt: the data's largest tilt for
        the missing-wedge FSC (default: from ``angles``, else 60).
    json_path, figure_path: also write every metric as JSON, and (with a reference) a
        figure of slices and FSC curves.
    """
    from ..evaluation.metrics import evaluate, half_map_fsc, write_metrics_json
    from ..io import read_tilt_angles

    session = session or Session()
    if (reference is None) == (half2 is None):
        raise InputError("give either --reference TRUTH (score against a ground truth) or "
                         "--half2 HALF2 (half-map FSC), "
                         + ("not both" if reference is not None else "one of them"))
    if half2 is not None and (figure_path is not None or max_tilt is not None
                              or angles is not None):
        raise InputError("--figure, --max-tilt and --angles need --reference; a half-map "
                         "FSC has no missing-wedge score or figure")
    if voxel_size is not None and not voxel_size > 0:
        raise InputError(f"--voxel-size must be a positive number of A, got {voxel_size}")
    for path in (json_path, figure_path):
        if path is not None:
            check_writable(path, force, probe=True)
    volume, voxel, name = _volume(recon, "reconstruction", session)
    other, other_voxel, other_name = _volume(half2 if half2 is not None else reference,
                                             "half2" if half2 is not None else "reference",
                                             session)
    if voxel_size is None:
        if voxel and other_voxel and abs(voxel - other_voxel) > 1e-3 * max(voxel, other_voxel):
            session.warn(f"the voxel sizes in the headers differ ({voxel:g} A in {name}, "
                         f"{other_voxel:g} A in {other_name}); using {voxel:g} A "
                         "(set --voxel-size to choose)")
        voxel_size = voxel or other_voxel
        if not voxel_size:
            session.warn("no voxel size in the MRC headers; resolutions are in voxels of 1 A "
                         "(set --voxel-size)")
            voxel_size = 1.0
    files: list[Path] = []
    if half2 is not None:
        metrics = half_map_fsc(volume, other, voxel_size)
        kind = "halves"
    else:
        if max_tilt is None:
            max_tilt = float(np.abs(read_tilt_angles(angles)).max()) if angles else 60.0
        metrics = evaluate(volume, other, voxel_size, max_tilt)
        kind = "reference"
    if json_path is not None:
        files.append(write_metrics_json(metrics, json_path, force=force))
    if figure_path is not None:
        from ..evaluation.figures import evaluation_figure

        files.append(evaluation_figure(volume, other, metrics, figure_path, force=force,
                                       title=f"{name} vs {other_name}"))
    return Evaluation(kind, metrics, float(voxel_size), files)
