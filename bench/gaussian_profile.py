"""Where a Gaussian reconstruction's time goes: its set-up, then its steps.

    python bench/gaussian_profile.py [--preset paper] [--arch cuda] [--steps 60]

Reads a preset's data from bench/data/<preset>/ (``bench/run.py --preset P
--simulate-only`` writes it), then times, with the library defaults:

- the set-up (slab fit, classical initialisation, seeding), by Python function;
- ``--steps`` optimisation steps after a few warm-up steps (Taichi compiles there), by
  Python function and, through Taichi's kernel profiler, by kernel (synchronised, so the
  kernels' own time and not their launch);
- the final voxelisation.

A profile, not a benchmark: the kernel profiler synchronises after every kernel, so the
steps run slower than in a plain run. Prints plain-text tables.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _top(profile: cProfile.Profile, key: str, n: int) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats(key).print_stats(n)
    return "\n".join(line for line in out.getvalue().splitlines()
                     if line.strip() and not line.startswith("   Ordered"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--arch", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    from taichi_etgs import runtime
    from taichi_etgs._ti import ti
    from taichi_etgs.gaussian.fit import GaussianReconstruction, ReconstructConfig
    from taichi_etgs.io import load_tilt_series
    from taichi_etgs.preprocess import density_views

    runtime.init(args.arch)
    ti.reset()  # the same runtime again, with the kernel profiler on
    ti.init(arch=ti.cuda if args.arch == "cuda" else ti.cpu, offline_cache=True,
            kernel_profiler=True, log_level=ti.WARN)
    folder = HERE / "data" / args.preset
    series = load_tilt_series(folder / "tilts.mrc", folder / "tilts.tlt")
    views = density_views(series.data, "dark")
    nz = int(json.loads((folder / "simulation.json").read_text())["config"]["shape_zyx"][0])
    print(f"{args.preset}: {views.shape[0]} views of {views.shape[2]} x {views.shape[1]}, "
          f"thickness {nz}, arch {args.arch}", flush=True)

    setup = cProfile.Profile()
    start = time.perf_counter()
    setup.enable()
    run = GaussianReconstruction(views, series.tilts_deg, nz, ReconstructConfig())
    setup.disable()
    print(f"\n## set-up: {time.perf_counter() - start:.1f} s (compiles included)\n"
          f"{_top(setup, 'cumulative', 30)}", flush=True)

    start = time.perf_counter()
    for _ in range(args.warmup):
        run.step()
    ti.sync()
    print(f"\n## {args.warmup} warm-up steps: {time.perf_counter() - start:.1f} s", flush=True)
    ti.profiler.clear_kernel_profiler_info()
    steps = cProfile.Profile()
    start = time.perf_counter()
    steps.enable()
    for _ in range(args.steps):
        run.step()
        if run.iteration % run.config.validate_every == 0:
            run.validate()
    ti.sync()
    steps.disable()
    seconds = time.perf_counter() - start
    print(f"\n## {args.steps} steps (validation included): {seconds:.1f} s, "
          f"{1000 * seconds / args.steps:.0f} ms a step, {run.params.n} Gaussians\n"
          f"{_top(steps, 'tottime', 30)}", flush=True)
    print("\n## Taichi kernels over those steps", flush=True)
    ti.profiler.print_kernel_profiler_info("count")

    start = time.perf_counter()
    volume = run.tomogram()
    ti.sync()
    print(f"\n## voxelisation of {volume.shape}: {time.perf_counter() - start:.1f} s",
          flush=True)


if __name__ == "__main__":
    main()
