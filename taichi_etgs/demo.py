"""The built-in example: simulate a small tilt series, reconstruct it, compare with the truth.

Runs anywhere (a procedural specimen, no input files) and goes through the same pipeline
as the commands (:mod:`taichi_etgs.pipeline`): the simulated stack is written and read
back as a user's would be, then reconstructed with WBP, SIRT and Gaussians, each tomogram
written with its sidecar and scored against the ground truth.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

__all__ = ["DemoResult", "run_demo", "DEMO_SHAPE_ZYX", "metrics_table"]

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

    def table(self) -> str:
        """The methods' scores as a fixed-width table (:func:`metrics_table`)."""
        return metrics_table(self.metrics, self.seconds)


def metrics_table(metrics: dict[str, dict], seconds: dict[str, float]) -> str:
    """Methods as rows, the headline metrics as columns (fixed-width text)."""
    header = (f"{'method':<10} {'time (s)':>8} {'PSNR':>7} {'SSIM':>6} {'corr':>6} "
              f"{'FSC 0.5 (A)':>11} {'wedge FSC':>9}")
    rows = [header, "-" * len(header)]
    for name, m in metrics.items():
        rows.append(f"{name:<10} {seconds.get(name, float('nan')):>8.1f} {m['psnr']:>7.2f} "
                    f"{m['ssim']:>6.3f} {m['correlation']:>6.3f} "
                    f"{m['fsc05_resolution_A']:>11.1f} {m['wedge_fsc']:>9.3f}")
    return "\n".join(rows)


def run_demo(out_dir: str | PathLike, *, force: bool = False, seed: int = 0,
             shape_zyx: tuple[int, int, int] = DEMO_SHAPE_ZYX,
             gaussian_iterations: int = DEMO_GAUSSIAN_ITERATIONS,
             report: Callable[[str], None] = print,
             progress: Callable[[object], None] | None = None,
             session=None) -> DemoResult:
    """Simulate, reconstruct with WBP, SIRT and Gaussians, evaluate; write to ``out_dir``.

    Parameters
    ----------
    out_dir: folder for the tilt series, ground truth and tomograms (created if needed).
    force: overwrite files from an earlier run.
    seed: seed of the simulation.
    shape_zyx: tomogram shape (nz, ny, nx).
    gaussian_iterations: iterations of the Gaussian reconstruction.
    report: receives one line per stage.
    progress: receives the Gaussian reconstruction's :class:`~taichi_etgs.gaussian.fit.Progress`.
    session: the pipeline :class:`~taichi_etgs.pipeline.session.Session` (messages,
        provenance, compute device); default: logging, no sidecars.

    Raises
    ------
    InputError: an output file exists and ``force`` is False (checked before anything
        is computed), or ``out_dir`` is a file.
    """
    from .errors import InputError
    from .evaluation.metrics import evaluate
    from .pipeline.classical import run_sirt, run_wbp
    from .pipeline.gaussian import GaussianSettings, run_reconstruct
    from .pipeline.inputs import StackSource
    from .pipeline.outputs import check_writable
    from .pipeline.session import Session
    from .pipeline.simulation import run_simulate
    from .pipeline.tomograms import VolumeTarget
    from .simulation.simulate import OUTPUT_FILES, SimulationConfig

    session = session or Session()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    tomograms = {name: out / f"tomogram_{name}.mrc" for name in ("wbp", "sirt", "gaussians")}
    for path in [*tomograms.values(), *(out / name for name in OUTPUT_FILES)]:
        check_writable(path, force, folder_must_exist=False)
    config = SimulationConfig(shape_zyx=tuple(shape_zyx), seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    session.start_compute()
    # The stages' own "wrote ..." lines go to the log: the demo reports one line each.
    quiet = copy.copy(session)
    quiet.result = None
    result = DemoResult()

    start = time.perf_counter()
    simulated = run_simulate(config, out, force=force, session=quiet)
    simulation = simulated.result
    result.files.update(simulated.files)
    result.seconds["simulate"] = time.perf_counter() - start
    nz = shape_zyx[0]
    report(f"simulated {simulation.tilts.shape[0]} tilts "
           f"({simulation.tilts_deg.min():g} to {simulation.tilts_deg.max():g} deg) of a "
           f"{'x'.join(map(str, shape_zyx))} (z, y, x) specimen at {config.pixel_size_A:g} A "
           f"in {result.seconds['simulate']:.1f} s")

    # Read back what was written, as a user's stack would be.
    source = StackSource(result.files["tilts.mrc"], angles=result.files["tilts.tlt"])
    max_tilt = float(abs(simulation.tilts_deg).max())
    settings = GaussianSettings(iterations=gaussian_iterations,
                                max_gaussians=DEMO_MAX_GAUSSIANS, seed=seed, save_state=False)
    methods: dict[str, Callable] = {
        "wbp": lambda target: run_wbp(source, target, session=quiet),
        "sirt": lambda target: run_sirt(source, target, iterations=DEMO_SIRT_ITERATIONS,
                                        session=quiet),
        "gaussians": lambda target: run_reconstruct(source, target, settings, session=quiet,
                                                    on_step=progress),
    }
    for name, method in methods.items():
        start = time.perf_counter()
        tomogram = method(VolumeTarget(nz, tomograms[name], force=force))
        result.seconds[name] = time.perf_counter() - start
        result.files[name] = tomograms[name]
        result.metrics[name] = evaluate(tomogram.volume, simulation.ground_truth,
                                        tomogram.voxel_size_A, max_tilt)
        quiet.write_sidecar(tomograms[name], {"what": f"demo {name}", **tomogram.info,
                                              "metrics": result.metrics[name],
                                              "seconds": result.seconds[name]})
        report(f"{name}: {result.seconds[name]:.1f} s -> {tomograms[name]}")
    return result
