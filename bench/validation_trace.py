"""Does the held-out score track the tomogram's quality? A trace over one fit.

    python bench/validation_trace.py [--point snr1-ext] [--iterations 600] [--every 20]

Fits the Gaussian reconstruction (library defaults, with the CTF of physical-noise data,
as bench/sweep.py runs it) to one of bench/sweep.py's data sets
(simulated once, cached in bench/data/sweep/) and, every ``--every`` iterations, records
the held-out score the run stops on (:meth:`GaussianReconstruction.heldout_loss`) beside
the tomogram's scores against the truth (band FSC, wedge band FSC,
:func:`taichi_etgs.evaluation.metrics.evaluate`). The early stop keeps the model of the
lowest held-out score (ties within the held-out views' noise going to the later model);
a trace whose band FSC peaks long before its held-out score bottoms out shows where that
rule loses quality (issue 8: at snr1-ext the band FSC peaked near iteration 100).

Writes bench/results/validation-trace-<point>.md and .json. Diagnostic only: a few
minutes per point on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402
from sweep import (  # noqa: E402
    gaussian_config,
    load_or_simulate,
    score,
    simulation_config,
    structures,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", default="snr1-ext")
    parser.add_argument("--shape", default="64,128,128")
    parser.add_argument("--pixel-size", type=float, default=8.0)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()

    from taichi_etgs import runtime
    from taichi_etgs.gaussian.fit import GaussianReconstruction
    from taichi_etgs.preprocess import density_views

    runtime.init("cpu")
    shape = tuple(int(v) for v in args.shape.split(","))
    config = simulation_config(args.point, shape, args.pixel_size, structures(True))
    data = load_or_simulate(args.point, config, False)
    series, truth, voxel = data["series"], data["truth"], data["voxel_size_A"]
    max_tilt = float(np.abs(series.tilts_deg).max())
    # As bench/sweep.py runs it: with the CTF of physical-noise data.
    fit_config = gaussian_config(data["simulation"].get("config", {}), voxel, args.iterations)
    run = GaussianReconstruction(density_views(series.data, "dark"), series.tilts_deg,
                                 truth.shape[0], fit_config)
    rows = []
    start = time.perf_counter()
    while True:
        metrics = score(run.tomogram(), truth, voxel, max_tilt)
        rows.append({"iteration": run.iteration, "heldout_loss": run.heldout_loss(),
                     "band_fsc": metrics.get("band_fsc"),
                     "wedge_band_fsc": metrics.get("wedge_band_fsc")})
        print(json.dumps(rows[-1]), flush=True)
        if run.iteration >= args.iterations:
            break
        for _ in range(args.every):
            run.step()
    seconds = time.perf_counter() - start
    best_band = max(rows, key=lambda r: r["band_fsc"])
    best_heldout = min(rows, key=lambda r: r["heldout_loss"])
    report = {"point": args.point, "shape_zyx": list(shape), "pixel_size_A": args.pixel_size,
              "machine": machine(), "seconds": seconds, "rows": rows,
              "best_band_iteration": best_band["iteration"],
              "lowest_heldout_iteration": best_heldout["iteration"]}
    lines = [f"# Held-out score against the truth over one fit: {args.point}", "",
             f"`python bench/validation_trace.py --point {args.point}`: {shape} voxels at "
             f"{args.pixel_size:g} A, library defaults, {args.iterations} iterations; "
             f"{machine()['cpu_count']} CPUs.", "",
             f"Band FSC peaks at iteration {best_band['iteration']} "
             f"({best_band['band_fsc']:.3f}); the held-out score is lowest at iteration "
             f"{best_heldout['iteration']} (band FSC there {best_heldout['band_fsc']:.3f}); "
             f"the last model's band FSC is {rows[-1]['band_fsc']:.3f}.", "",
             "| iteration | held-out score | band FSC | wedge band FSC |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['iteration']} | {r['heldout_loss']:.5f} | {r['band_fsc']:.3f} | "
              f"{r['wedge_band_fsc']:.3f} |" for r in rows]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"validation-trace-{args.point}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"validation-trace-{args.point}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6]))


if __name__ == "__main__":
    main()
