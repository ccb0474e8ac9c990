"""The built-in example: simulate a small tilt series, reconstruct it, compare with the truth.

Runs anywhere (a procedural specimen, no input files) and exercises the same library
calls as the commands: reading the written stack back, contrast handling, WBP, SIRT,
evaluation against the ground truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["DemoResult", "run_demo", "DEMO_SHAPE_ZYX"]

#: Small enough for the whole demo to take about two minutes on two CPU cores.
DEMO_SHAPE_ZYX = (48, 128, 128)
DEMO_SIRT_ITERATIONS = 20
#: A shorter Gaussian fit than the command's defaults, to keep the demo quick.
DEMO_GAUSSIAN_ITERATIONS = 300
DEMO_MAX_GAUSSIANS = 20_000


@dataclass
class DemoResult:
    """Where the demo wrote its files and how each method scored."""

    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # method -> evaluate() output
    seconds: dict[str, float] = field(default_factory=dict)  # method -> wall time


def run_demo(out_dir: str | PathLike, *, force: bool = False, seed: int = 0,
             shape_zyx: tuple[int, int, int] = DEMO_SHAPE_ZYX,
             gaussian_iterations: int = DEMO_GAUSSIAN_ITERATIONS,
             report: Callable[[str], None] = print,
             progress: Callable[[object], None] | None = None) -> DemoResult:
    """Simulate, reconstruct with WBP, SIRT and Gaussians, evaluate; write to ``out_dir``.

    Parameters
    ----------
    out_dir: folder for the tilt series, ground truth and tomograms (created if needed).
    force: overwrite files from an earlier run.
    seed: seed of the simulation.
    shape_zyx: tomogram shape (nz, ny, nx).
    gaussian_iterations: iterations of the Gaussian reconstruction.
    report: receives one line per stage.
    progress: receives the Gaussian reconstruction's :class:`~taichi_etgs.reconstruct.Progress`.

    Raises
    ------
    InputError: an output file exists and ``force`` is False.
    """
    from .io import load_tilt_series, write_volume
    from .metrics import evaluate
    from .preprocess import density_views, to_output_polarity
    from .simulate import SimulationConfig, simulate_tilt_series, write_simulation
    from .sirt import sirt
    from .wbp import weighted_back_projection

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult()
    tomograms = {name: out / f"tomogram_{name}.mrc" for name in ("wbp", "sirt", "gaussians")}
    if not force:
        from .errors import InputError

        for path in tomograms.values():
            if path.exists():
                raise InputError("exists; use --force to overwrite", path)

    start = time.perf_counter()
    config = SimulationConfig(shape_zyx=tuple(shape_zyx), seed=seed)
    simulation = simulate_tilt_series(config)
    result.files.update(write_simulation(simulation, out, force=force))
    result.seconds["simulate"] = time.perf_counter() - start
    nz = shape_zyx[0]
    report(f"simulated {simulation.tilts.shape[0]} tilts "
           f"({simulation.tilts_deg.min():g} to {simulation.tilts_deg.max():g} deg) of a "
           f"{'x'.join(map(str, shape_zyx))} (z, y, x) specimen at {config.pixel_size_A:g} A "
           f"in {result.seconds['simulate']:.1f} s")

    # Read back what was written, as a user's stack would be.
    series = load_tilt_series(result.files["tilts.mrc"], result.files["tilts.tlt"])
    views = density_views(series.data, "dark")
    max_tilt = float(np.max(np.abs(series.tilts_deg)))
    methods: dict[str, Callable[[], np.ndarray]] = {
        "wbp": lambda: weighted_back_projection(views, series.tilts_deg, nz),
        "sirt": lambda: sirt(views, series.tilts_deg, nz,
                             iterations=DEMO_SIRT_ITERATIONS).volume,
        "gaussians": lambda: _gaussians(views, series.tilts_deg, nz, seed,
                                        gaussian_iterations, progress),
    }
    for name, reconstruct in methods.items():
        start = time.perf_counter()
        volume = reconstruct()
        result.seconds[name] = time.perf_counter() - start
        write_volume(tomograms[name], to_output_polarity(volume, "dark", "input"),
                     series.pixel_size_A, force=force,
                     labels=[f"taichi-etgs demo: {name}"])
        result.files[name] = tomograms[name]
        result.metrics[name] = evaluate(volume, simulation.ground_truth, series.pixel_size_A,
                                        max_tilt)
        report(f"{name}: {result.seconds[name]:.1f} s -> {tomograms[name]}")
    return result


def _gaussians(views: np.ndarray, tilts_deg: np.ndarray, thickness: int, seed: int,
               iterations: int, progress) -> np.ndarray:
    from .reconstruct import GaussianReconstruction, ReconstructConfig

    config = ReconstructConfig(iterations=iterations, max_gaussians=DEMO_MAX_GAUSSIANS,
                               seed=seed)
    run = GaussianReconstruction(views, tilts_deg, thickness, config)
    run.run(progress=progress)
    return run.tomogram()
