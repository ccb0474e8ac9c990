"""CUDA path check: the same reconstructions on the CPU and the GPU must agree.

    python bench/gpu_check.py [--shape 48,128,128] [--gaussian-iterations 60]

Simulates a small tilt series, runs WBP, SIRT and a short Gaussian reconstruction
(through the commands' pipeline) with Taichi on the CPU and then on CUDA (same process,
Taichi re-initialised), and prints the correlation between the two results and each
one's wall time. WBP and SIRT are deterministic up to float32 summation order
(correlation > 0.9999 expected); the Gaussian fit scatters with atomic adds whose order
differs, and densification amplifies the difference (0.980 seen over 60 iterations), so
it agrees less tightly (> 0.95).
Exits non-zero when an agreement threshold is missed.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def run_all(arch: str, series, nz: int, iterations: int) -> dict:
    """WBP, SIRT and a short Gaussian fit on ``arch``, through the commands' pipeline."""
    from taichi_etgs import runtime
    from taichi_etgs.gaussian.fit import ReconstructConfig
    from taichi_etgs.pipeline import Session, StackSource, VolumeTarget
    from taichi_etgs.pipeline.classical import run_sirt, run_wbp
    from taichi_etgs.pipeline.gaussian import GaussianSettings, run_reconstruct

    runtime.init(arch)
    session = Session()  # keeps the Taichi just started
    source, target = StackSource(series), VolumeTarget(nz)
    config = ReconstructConfig(iterations=iterations, max_gaussians=20_000, densify_from=20,
                               densify_every=20)
    out = {}
    steps = {
        "wbp": lambda: run_wbp(source, target, session=session).volume,
        "sirt20": lambda: run_sirt(source, target, iterations=20, session=session).volume,
        "gaussians": lambda: run_reconstruct(source, target, GaussianSettings(config=config),
                                             session=session).volume,
    }
    for name, fn in steps.items():
        fn()  # warm-up: compiles the kernels
        start = time.perf_counter()
        volume = fn()
        out[name] = (volume, time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="48,128,128")
    parser.add_argument("--gaussian-iterations", type=int, default=60)
    args = parser.parse_args()

    from taichi_etgs.pipeline import StackSource
    from taichi_etgs.simulation.simulate import SimulationConfig, simulate_tilt_series

    shape = tuple(int(v) for v in args.shape.split(","))
    sim = simulate_tilt_series(SimulationConfig(shape_zyx=shape, seed=1))
    series = StackSource.from_arrays(sim.tilts, sim.tilts_deg, sim.pixel_size_A).stack
    results = {arch: run_all(arch, series, shape[0], args.gaussian_iterations)
               for arch in ("cpu", "cuda")}
    thresholds = {"wbp": 0.9999, "sirt20": 0.9999, "gaussians": 0.95}
    failed = False
    for name, threshold in thresholds.items():
        cpu, t_cpu = results["cpu"][name]
        gpu, t_gpu = results["cuda"][name]
        corr = float(np.corrcoef(cpu.ravel(), gpu.ravel())[0, 1])
        ok = corr >= threshold
        failed |= not ok
        print(f"{name:<10} cpu {t_cpu:7.2f} s  cuda {t_gpu:7.2f} s  speed-up "
              f"{t_cpu / t_gpu:5.1f}x  correlation {corr:.6f} "
              f"{'ok' if ok else 'FAILED'} (>= {threshold})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
