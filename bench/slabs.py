"""Y-slab decomposition (issue 11, item 2): slabbed WBP and SIRT against the whole, equality
and peak memory; with ``--gaussians``, slabbed Gaussian reconstruction against the whole.

    python bench/slabs.py [--quick] [--slab-rows N] [--iterations N] [--threads N]
                          [--shape NZ,NY,NX] [--workers-speedup]
                          [--gaussians [--gaussian-shape NZ,NY,NX] [--gaussian-rows N]
                           [--gaussian-iterations N] [--max-gaussians N]]

Simulates a tilt series of a 64 x 1024 x 1024 tomogram (41 tilts, -60..60 by 3 degrees;
``--quick``: 16 x 128 x 128, 21 tilts), then runs ``taichi-etgs wbp`` and ``sirt`` on it
whole and with ``--slab-rows``, each in its own process. Peak memory is the child's
``ru_maxrss``: every run goes through a small wrapper process that starts it and reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the wrapper's only child is the run, so
the figure is that run's alone). The outputs are compared a section at a time (memory
maps): correlation, largest difference, and the row profile's step at every slab border
against the whole's (a seam would show there).

``--gaussians`` simulates a second series (64 x 256 x 256 by default, 41 tilts; ``--quick``:
16 x 64 x 64, 21 tilts), reconstructs it with ``taichi-etgs reconstruct`` whole and with
``--slab-rows`` (a quarter of the rows by default), and scores both against the phantom
(band FSC, :func:`taichi_etgs.evaluation.metrics.evaluate`), with their peak RSS and the
seam check of a Gaussian run: the mean absolute row-to-row difference at every slab
border and blend-band edge over the whole run's at the same rows.

``--workers-speedup`` measures instead how the slabs of one tomogram spread over Dask
workers: slabbed SIRT (``--iterations``, default 10 here) of a 64 x 512 x 512 tomogram
(``--shape``) in 64-row slabs, run in the command's own process with 1 thread against
``--workers 2 --threads 1`` (an embedded cluster of two one-thread workers, its start
included), each timed as a whole command; the two tomograms must be equal bit for bit.
Results: bench/results/slabs-workers.md and .json.

Acceptance (issue 11): slabbed equal to the whole (correlation >= 0.999, no seam) and the
slabbed runs' peak RSS at most 1/3 of the whole runs'; Gaussians: slabbed band FSC at
least the whole's minus 0.01, row steps at the seams at most 1.25 x the whole's.
Results: bench/results/slabs.md and slabs.json (``--quick``: slabs-quick.*, the sizes too
small for the memory figures to mean much: Python and Taichi's runtime dominate;
``--shape``: slabs-NZxNYxNX.*).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, volume_bytes

RESULTS = Path(__file__).resolve().parent / "results"

_SIMULATE = """
import sys
import numpy as np
from taichi_etgs import runtime
from taichi_etgs.classical.projector import forward_project
from taichi_etgs.io import write_stack

nz, ny, nx, n_tilts, threads, path, truth = sys.argv[1:]
nz, ny, nx, n_tilts = int(nz), int(ny), int(nx), int(n_tilts)
runtime.init("cpu", threads=int(threads))
rng = np.random.default_rng(11)
volume = np.zeros((nz, ny, nx), np.float32)
r = max(2, nx // 64)
for _ in range(ny * nx // 2000 + 20):  # blobs over every row, away from the sides
    z = rng.integers(r, nz - r); y = rng.integers(0, ny); x = rng.integers(nx // 8, nx - nx // 8)
    volume[z - r:z + r, max(0, y - r):y + r, x - r:x + r] += rng.uniform(0.5, 2.0)
tilts = np.linspace(-60.0, 60.0, n_tilts)
views = forward_project(volume, tilts)
if truth:
    np.save(truth, volume)
del volume
views += rng.normal(0.0, 0.2, views.shape).astype(np.float32)
write_stack(path, 100.0 - views, 10.0)
np.savetxt(path[:-4] + ".tlt", tilts, fmt="%.3f")
"""

# The run's process is the wrapper's only child: RUSAGE_CHILDREN is that run's peak.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - start
print(code, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _run(args: list[str]) -> dict:
    """One ``taichi-etgs`` run in its own process: exit code, wall time, peak RSS (MiB)."""
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "taichi_etgs.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    code, seconds, maxrss_kib = res.stdout.split()[-3:]
    if int(code) != 0:
        raise SystemExit(f"taichi-etgs {' '.join(args)} failed:\n{res.stderr}")
    return {"seconds": round(float(seconds), 2), "peak_rss_mib": round(int(maxrss_kib) / 1024, 1)}


def _simulate(shape, n_tilts: int, threads: int, stack: Path, truth: str = "") -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _SIMULATE, *map(str, shape), str(n_tilts),
                    str(threads), str(stack), truth], check=True)
    print(f"simulated {stack.name} in {time.perf_counter() - start:.0f} s", flush=True)


def _gaussians(args, tmp: Path) -> dict:
    """Gaussian reconstruction whole and in slabs: band FSC against the phantom, peak RSS,
    seams."""
    import mrcfile

    from taichi_etgs.evaluation.metrics import evaluate
    from taichi_etgs.pipeline.slabs import GAUSSIAN_OVERLAP_ROWS

    shape, n_tilts = ((16, 64, 64), 21) if args.quick else ((64, 256, 256), 41)
    if args.gaussian_shape:
        shape = tuple(int(v) for v in args.gaussian_shape.split(","))
    rows = args.gaussian_rows or max(1, shape[1] // 4)
    iterations = args.gaussian_iterations or (60 if args.quick else 600)
    stack, truth = tmp / "gs.mrc", tmp / "gs_truth.npy"
    _simulate(shape, n_tilts, args.threads, stack, str(truth))
    report: dict = {"shape_zyx": list(shape), "n_tilts": n_tilts, "slab_rows": rows,
                    "iterations": iterations, "max_gaussians": args.max_gaussians}
    volumes = {}
    for label, slab in (("whole", []), ("slabs", ["--slab-rows", str(rows)])):
        out = tmp / f"gs_{label}.mrc"
        report[label] = _run(["reconstruct", str(stack), "--thickness", str(shape[0]),
                              "--iterations", str(iterations), "--max-gaussians",
                              str(args.max_gaussians), "-o", str(out), "--arch", "cpu",
                              "--threads", str(args.threads), *slab])
        volumes[label] = mrcfile.read(out)
        # The stack is dark (100 - views): the metrics fit polarity and level themselves.
        report[label]["band_fsc"] = round(float(evaluate(volumes[label], np.load(truth), 10.0)
                                                ["band_fsc"]), 4)
        print(f"reconstruct {label}: {report[label]}", flush=True)
    steps = {k: np.abs(np.diff(v.astype(np.float64), axis=1)).mean(axis=(0, 2))
             for k, v in volumes.items()}
    overlap = min(GAUSSIAN_OVERLAP_ROWS, rows // 2)
    seams = sorted({b + d - 1 for b in range(rows, shape[1], rows)
                    for d in (-overlap, 0, overlap) if 0 < b + d < shape[1]})
    ratio = float(np.max(steps["slabs"][seams] / steps["whole"][seams])) if seams else 1.0
    report["seam_step_ratio"] = round(ratio, 3)
    report["band_fsc_difference"] = round(report["slabs"]["band_fsc"]
                                          - report["whole"]["band_fsc"], 4)
    report["rss_ratio"] = round(report["slabs"]["peak_rss_mib"]
                                / report["whole"]["peak_rss_mib"], 3)
    report["accepted"] = bool(report["band_fsc_difference"] >= -0.01 and ratio <= 1.25)
    return report


def _compare(whole: Path, slabbed: Path, rows: int) -> dict:
    """Correlation, largest difference and the seam check, one section at a time."""
    import mrcfile

    with mrcfile.mmap(whole, mode="r") as a, mrcfile.mmap(slabbed, mode="r") as b:
        nz, ny, _ = a.data.shape
        sums = np.zeros(5)  # a, b, a^2, b^2, ab
        largest, spread = 0.0, 0.0
        profile_a, profile_b = np.zeros(ny), np.zeros(ny)
        for k in range(nz):
            x = np.asarray(a.data[k], np.float64)
            y = np.asarray(b.data[k], np.float64)
            sums += [x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
            largest = max(largest, float(np.abs(x - y).max()))
            spread = max(spread, float(np.abs(x).max()))
            profile_a += x.mean(axis=1) / nz
            profile_b += y.mean(axis=1) / nz
        n = a.data.size
    mean_a, mean_b = sums[0] / n, sums[1] / n
    cov = sums[4] / n - mean_a * mean_b
    corr = cov / np.sqrt((sums[2] / n - mean_a ** 2) * (sums[3] / n - mean_b ** 2))
    borders = np.arange(rows, ny, rows)
    steps_a = profile_a[borders] - profile_a[borders - 1]
    steps_b = profile_b[borders] - profile_b[borders - 1]
    seam = float(np.abs(steps_b - steps_a).max()) if borders.size else 0.0
    return {"correlation": float(corr), "max_abs_difference": largest,
            "max_abs_value": spread, "bit_identical": largest == 0.0,
            "seam_step_difference": seam,
            "row_profile_std": float(np.std(profile_a)),
            "no_seam": seam <= 1e-6 * max(float(np.std(profile_a)), 1e-30)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 x 128 x 128, 21 tilts")
    parser.add_argument("--slab-rows", type=int, default=None,
                        help="rows per slab (default 64; --quick 16)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="SIRT iterations [5; --workers-speedup: 10]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", default=None, metavar="NZ,NY,NX",
                        help="another tomogram size (41 tilts)")
    parser.add_argument("--gaussians", action="store_true",
                        help="also compare slabbed and whole Gaussian reconstructions")
    parser.add_argument("--gaussian-shape", default=None, metavar="NZ,NY,NX",
                        help="their tomogram (default 64,256,256; --quick 16,64,64)")
    parser.add_argument("--gaussian-rows", type=int, default=None,
                        help="their slab rows (default: a quarter of NY)")
    parser.add_argument("--gaussian-iterations", type=int, default=None,
                        help="their iterations (default 600; --quick 60)")
    parser.add_argument("--max-gaussians", type=int, default=60_000)
    parser.add_argument("--workers-speedup", action="store_true",
                        help="slabbed SIRT on 1 process vs 2 Dask workers (only that)")
    args = parser.parse_args()
    if args.workers_speedup:
        _workers_speedup(args)
        return
    shape, n_tilts = ((16, 128, 128), 21) if args.quick else ((64, 1024, 1024), 41)
    if args.shape:
        shape = tuple(int(v) for v in args.shape.split(","))
    rows = args.slab_rows or (16 if args.quick else 64)
    iterations = args.iterations or 5
    report: dict = {"shape_zyx": list(shape), "n_tilts": n_tilts, "slab_rows": rows,
                    "sirt_iterations": iterations, "threads": args.threads,
                    "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-slabs-", dir=RESULTS.parent) as tmp:
        stack = Path(tmp) / "ts.mrc"
        _simulate(shape, n_tilts, args.threads, stack)
        for method, extra in (("wbp", []), ("sirt", ["--iterations", str(iterations)])):
            runs = {}
            for label, slab in (("whole", []), ("slabs", ["--slab-rows", str(rows)])):
                out = Path(tmp) / f"{method}_{label}.mrc"
                runs[label] = _run([method, str(stack), "--thickness", str(shape[0]),
                                    "-o", str(out), "--arch", "cpu",
                                    "--threads", str(args.threads), *extra, *slab])
                print(f"{method} {label}: {runs[label]}", flush=True)
            # Without enough memory the "whole" run would itself go in slabs (automatic).
            side = json.loads((Path(tmp) / f"{method}_whole.mrc.json").read_text())
            runs["whole"]["was_whole"] = "slab_rows" not in side["result"]
            runs["equality"] = _compare(Path(tmp) / f"{method}_whole.mrc",
                                        Path(tmp) / f"{method}_slabs.mrc", rows)
            runs["rss_ratio"] = round(runs["slabs"]["peak_rss_mib"]
                                      / runs["whole"]["peak_rss_mib"], 3)
            runs["accepted"] = bool(runs["whole"]["was_whole"]
                                    and runs["equality"]["correlation"] >= 0.999
                                    and runs["equality"]["no_seam"]
                                    and runs["rss_ratio"] <= 1 / 3)
            report["runs"][method] = runs
        if args.gaussians:
            report["gaussians"] = _gaussians(args, Path(tmp))
    name = "slabs" if not (args.quick or args.shape) else "slabs-" + (
        "quick" if args.quick else "x".join(map(str, shape)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(_markdown(report))
    print((RESULTS / f"{name}.md").read_text())


def _workers_speedup(args) -> None:
    """Slabbed SIRT in one process (1 thread) against 2 Dask workers of 1 thread."""
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else (64, 512, 512)
    rows = args.slab_rows or 64
    iterations = args.iterations or 10
    report: dict = {"shape_zyx": list(shape), "n_tilts": 41, "slab_rows": rows,
                    "sirt_iterations": iterations, "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-slabs-", dir=RESULTS.parent) as tmp:
        stack = Path(tmp) / "ts.mrc"
        _simulate(shape, 41, 2, stack)
        common = ["sirt", str(stack), "--thickness", str(shape[0]), "--arch", "cpu",
                  "--iterations", str(iterations), "--slab-rows", str(rows)]
        outputs = {}
        for label, extra in (("1 process x 1 thread", ["--threads", "1"]),
                             ("2 workers x 1 thread", ["--workers", "2", "--threads", "1"])):
            outputs[label] = Path(tmp) / f"sirt_{label[0]}.mrc"
            report["runs"][label] = _run([*common, "-o", str(outputs[label]), *extra])
            print(f"{label}: {report['runs'][label]}", flush=True)
        a, b = (volume_bytes(p) for p in outputs.values())
        report["equal_bit_for_bit"] = a == b
    one, two = (r["seconds"] for r in report["runs"].values())
    report["speedup"] = round(one / two, 2)
    lines = [f"# Slabs of one tomogram over Dask workers ({' x '.join(map(str, shape))})", "",
             f"`python bench/slabs.py --workers-speedup`: slabbed SIRT ({iterations} "
             f"iterations, {rows}-row slabs, 41 tilts) of one simulated tilt series, each run "
             f"a whole command (the embedded cluster's start included), on "
             f"{report['machine'].get('cpu_count', '?')} cores.", "",
             "| run | time (s) | peak RSS of the command (MiB) |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |"
              for label, r in report["runs"].items()]
    lines += ["", f"Speed-up x{report['speedup']:.2f}; tomograms equal bit for bit: "
              f"{'yes' if report['equal_bit_for_bit'] else 'NO'}. The command's peak RSS "
              "does not count the workers' (separate processes).", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slabs-workers.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "slabs-workers.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _markdown(report: dict) -> str:
    nz, ny, nx = report["shape_zyx"]
    lines = [f"# Slabbed WBP and SIRT against the whole ({nz} x {ny} x {nx}, "
             f"{report['n_tilts']} tilts, slabs of {report['slab_rows']} rows, "
             f"{report['threads']} threads)", "",
             "| method | run | time (s) | peak RSS (MiB) | slabbed / whole RSS | correlation "
             "| max abs diff | seam | accepted |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, runs in report["runs"].items():
        eq = runs["equality"]
        for label in ("whole", "slabs"):
            run = runs[label]
            tail = (f"{runs['rss_ratio']:.3f} | {eq['correlation']:.6f} | "
                    f"{eq['max_abs_difference']:.3g} | {'none' if eq['no_seam'] else 'SEAM'} | "
                    f"{'yes' if runs['accepted'] else 'NO'}") if label == "slabs" \
                else " | | | |"
            lines.append(f"| {method} | {label} | {run['seconds']} | {run['peak_rss_mib']} | "
                         f"{tail} |")
    lines += ["", "Acceptance (issue 11): correlation >= 0.999, no seam in the row profile at "
              "the slab borders, slabbed peak RSS <= 1/3 of the whole run's. Peak RSS is each "
              "run's own ru_maxrss (a process per run).", ""]
    if "gaussians" in report:
        gs = report["gaussians"]
        nz, ny, nx = gs["shape_zyx"]
        lines += [f"## Gaussians ({nz} x {ny} x {nx}, {gs['n_tilts']} tilts, "
                  f"{gs['iterations']} iterations, at most {gs['max_gaussians']} Gaussians, "
                  f"slabs of {gs['slab_rows']} rows)", "",
                  "| run | time (s) | peak RSS (MiB) | band FSC |", "|---|---|---|---|"]
        lines += [f"| {label} | {gs[label]['seconds']} | {gs[label]['peak_rss_mib']} | "
                  f"{gs[label]['band_fsc']:.4f} |" for label in ("whole", "slabs")]
        lines += ["", f"Band FSC slabbed - whole: {gs['band_fsc_difference']:+.4f}; row steps "
                  f"at the seams / the whole's: {gs['seam_step_ratio']:.3f} (at most); peak "
                  f"RSS slabbed / whole: {gs['rss_ratio']:.3f}; accepted: "
                  f"{'yes' if gs['accepted'] else 'NO'}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
