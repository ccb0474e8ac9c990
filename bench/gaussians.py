"""Speed of one Gaussian reconstruction step and of its parts.

    python bench/gaussians.py [--arch cpu|cuda] [--n 20000,60000] [--repeats 5]
                              [--threads T] [--baseline GITREF]
    python bench/gaussians.py --project-rate [--n 100000,1000000] [--size 512]
                              [--rate-views 8] [--baseline GITREF]

Step mode: the "medium" problem (tomogram 96 x 256 x 256, 41 tilts -60..60 by 3 deg,
8 views of 256^2 per step) with N random Gaussians of scale 1-2 voxels in the box. Times
the projector forward (:func:`project_gaussians`), the loss (:func:`view_loss`: L1 +
D-SSIM and its gradient), the projector backward, the Adam update, and one whole
:meth:`GaussianReconstruction.step` (which also holds the Python glue between them).

Project-rate mode: views per second for projecting N Gaussians (scale 1-2 voxels, box
128 x size x size) into ``size^2`` views, a few views per call.

``--baseline GITREF`` times, in the same process and interleaved repeat by repeat, a copy
of the package whose performance-relevant modules (the projector, SSIM, loss, Adam and
optimiser modules) are taken from that git revision: the ratio ``baseline / current`` is
the speed-up of the working tree over it. Every figure is the median of ``--repeats``
runs after one warm-up (Taichi compiles kernels on the first call), with ``ti.sync()``
around each timed call. Results go to bench/results/gaussians-<arch>[-rate].json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _common import machine, peak_rss_mib, reset_peak_rss  # noqa: E402

SHAPE_ZYX = (96, 256, 256)
TILTS_DEG = np.arange(-60.0, 61.0, 3.0)  # 41 tilts
VIEWS_PER_STEP = 8

#: Modules a --baseline revision replaces (package-relative paths; the revision must have
#: the subpackage layout).
BASELINE_MODULES = ("kernels/gaussian_projector.py", "kernels/voxelizer.py", "kernels/ssim.py",
                    "kernels/adam.py", "gaussian/render.py", "gaussian/loss.py",
                    "gaussian/optim.py")
#: Modules the baseline copy shares with the working tree (one Taichi runtime, one model
#: class, one set of exceptions).
SHARED_MODULES = ("_ti", "runtime", "gaussian.params", "errors")


# ----------------------------------------------------------------------------------------
# Packages under test
# ----------------------------------------------------------------------------------------

def load_baseline(ref: str):
    """A copy of ``taichi_etgs`` importable as ``_etgs_baseline``, with BASELINE_MODULES
    taken from git revision ``ref`` and SHARED_MODULES aliased to the working tree's."""
    tmp = Path(tempfile.mkdtemp(prefix="etgs-baseline-"))
    pkg = tmp / "_etgs_baseline"
    shutil.copytree(ROOT / "taichi_etgs", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in BASELINE_MODULES:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:taichi_etgs/{rel}"],
                              capture_output=True, check=True).stdout
        (pkg / rel).write_bytes(text)
    sys.path.insert(0, str(tmp))
    base = importlib.import_module("_etgs_baseline")
    for name in SHARED_MODULES:
        module = importlib.import_module(f"taichi_etgs.{name}")
        alias = f"_etgs_baseline.{name}"
        sys.modules[alias] = module
        parent, _, leaf = alias.rpartition(".")
        setattr(importlib.import_module(parent), leaf, module)
    return base


class Package:
    """The entry points of one copy of the package."""

    def __init__(self, root: str) -> None:
        proj = importlib.import_module(f"{root}.gaussian.render")
        loss = importlib.import_module(f"{root}.gaussian.loss")
        optim = importlib.import_module(f"{root}.gaussian.optim")
        recon = importlib.import_module(f"{root}.gaussian.fit")
        self.project = proj.project_gaussians
        self.backward = proj.project_gaussians_backward
        self.view_loss = loss.view_loss
        self.Adam = optim.Adam
        self.learning_rates = optim.learning_rates
        self.Reconstruction = recon.GaussianReconstruction
        self.Config = recon.ReconstructConfig


# ----------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------

def random_gaussians(rng: np.random.Generator, n: int, shape_zyx: tuple[int, int, int]):
    """N Gaussians uniform in the box, scales 1-2 voxels, random rotations and densities."""
    from taichi_etgs.gaussian.params import GaussianParams

    nz, ny, nx = shape_zyx
    half = 0.5 * np.array([nx, ny, nz], dtype=np.float64)
    return GaussianParams(
        means_xyz=rng.uniform(-1.0, 1.0, (n, 3)) * half,
        log_scales=np.log(rng.uniform(1.0, 2.0, (n, 3))),
        quats_wxyz=rng.normal(size=(n, 4)),
        density_raw=rng.normal(0.0, 1.0, n),
    ).astype(np.float32)


def timed(sync: Callable[[], None], fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process: all threads) of one call."""
    sync()
    start = time.perf_counter()
    cpu = time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def interleaved_medians(cases: dict[str, Callable[[], object]], repeats: int,
                        sync: Callable[[], None]) -> dict[str, dict]:
    """Warm up every case, then time them in turn ``repeats`` times (rotating the order).

    Both wall and CPU time are kept: on a machine shared with other work the CPU time
    (summed over threads) is the steadier measure of the work done."""
    for fn in cases.values():
        fn()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            w, c = timed(sync, cases[name])
            wall[name].append(w)
            cpu[name].append(c)
    return {name: {"median_s": statistics.median(wall[name]), "times_s": wall[name],
                   "cpu_median_s": statistics.median(cpu[name]), "cpu_times_s": cpu[name]}
            for name in cases}


# ----------------------------------------------------------------------------------------
# Step mode
# ----------------------------------------------------------------------------------------

def bench_step(packages: dict[str, Package], n: int, repeats: int, sync) -> dict:
    rng = np.random.default_rng(n)
    nz, ny, nx = SHAPE_ZYX
    current = packages["current"]
    truth = random_gaussians(rng, n, SHAPE_ZYX)
    measured_all = current.project(truth, TILTS_DEG, ny, nx)
    measured_all = measured_all + rng.normal(0.0, 0.5 * measured_all.std(),
                                             measured_all.shape).astype(np.float32)
    params = random_gaussians(rng, n, SHAPE_ZYX)
    selected = rng.permutation(TILTS_DEG.size)[:VIEWS_PER_STEP]
    tilts = TILTS_DEG[selected]
    measured = np.ascontiguousarray(measured_all[selected])
    weights = np.cos(np.deg2rad(tilts))
    data_range = float(measured_all.max() - measured_all.min())

    rendered = current.project(params, tilts, ny, nx)
    shift = measured.mean(axis=(1, 2), keepdims=True) - rendered.mean(axis=(1, 2), keepdims=True)
    rendered = rendered + shift
    _, grad = current.view_loss(rendered, measured, weights, 0.2, data_range)
    grads = current.backward(params, tilts, grad).grads

    cases: dict[str, dict[str, Callable]] = {}
    for label, pkg in packages.items():
        adam_params = params.copy()
        adam = pkg.Adam(adam_params, pkg.learning_rates(0, 1000, 128.0))
        config = pkg.Config(iterations=10**6, views_per_step=VIEWS_PER_STEP, max_gaussians=n,
                            densify_from=10**9, densify_every=10**6)
        recon = pkg.Reconstruction(measured_all, TILTS_DEG, nz, config, params=params.copy())
        cases[label] = {
            "forward": lambda pkg=pkg: pkg.project(params, tilts, ny, nx),
            "loss": lambda pkg=pkg: pkg.view_loss(rendered, measured, weights, 0.2, data_range),
            "backward": lambda pkg=pkg: pkg.backward(params, tilts, grad),
            "adam": lambda pkg=pkg, adam=adam, p=adam_params: adam.step(p, grads),
            "step": lambda recon=recon: recon.step(),
        }

    # Same results (the point of a speed-up is not to change them).
    checks = {}
    if "baseline" in packages:
        base = packages["baseline"]
        v_new = current.project(params, tilts, ny, nx)
        v_old = base.project(params, tilts, ny, nx)
        checks["forward_max_rel_diff"] = float(np.abs(v_new - v_old).max() / np.abs(v_old).max())
        l_new, g_new = current.view_loss(rendered, measured, weights, 0.2, data_range)
        l_old, g_old = base.view_loss(rendered, measured, weights, 0.2, data_range)
        checks["loss_rel_diff"] = abs(l_new - l_old) / abs(l_old)
        checks["loss_grad_max_rel_diff"] = float(np.abs(g_new - g_old).max()
                                                 / np.abs(g_old).max())
        b_new = current.backward(params, tilts, grad)
        b_old = base.backward(params, tilts, grad)
        for field in ("means_xyz", "log_scales", "quats_wxyz", "density_raw"):
            a, b = getattr(b_new.grads, field), getattr(b_old.grads, field)
            checks[f"grad_{field}_max_rel_diff"] = float(np.abs(a - b).max() / np.abs(b).max())
        checks["visible_views_equal"] = bool(np.array_equal(b_new.visible_views,
                                                            b_old.visible_views))
        checks["uv_norm_max_rel_diff"] = float(
            np.abs(b_new.uv_grad_norm_sum - b_old.uv_grad_norm_sum).max()
            / np.abs(b_old.uv_grad_norm_sum).max())

    result = {"n_gaussians": n, "views": VIEWS_PER_STEP, "detector": [ny, nx],
              "checks": checks, "components": {}}
    for comp in ("forward", "loss", "backward", "adam", "step"):
        reset_peak_rss()
        runs = interleaved_medians({label: cases[label][comp] for label in cases}, repeats, sync)
        entry = {label: runs[label] for label in runs}
        if "baseline" in runs:
            entry["speedup"] = runs["baseline"]["median_s"] / runs["current"]["median_s"]
            entry["cpu_speedup"] = (runs["baseline"]["cpu_median_s"]
                                    / runs["current"]["cpu_median_s"])
        entry["peak_rss_mib"] = peak_rss_mib()
        result["components"][comp] = entry
        line = f"  {comp:<9}" + "".join(
            f" {label} {runs[label]['median_s']:7.4f} s (cpu {runs[label]['cpu_median_s']:7.4f})"
            for label in runs)
        if "speedup" in entry:
            line += f"   x{entry['speedup']:.2f} (cpu x{entry['cpu_speedup']:.2f})"
        print(line, flush=True)
    if checks:
        print("  checks: " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in checks.items()), flush=True)
    return result


# ----------------------------------------------------------------------------------------
# Project-rate mode
# ----------------------------------------------------------------------------------------

def bench_rate(packages: dict[str, Package], n: int, size: int, n_views: int, repeats: int,
               sync) -> dict:
    rng = np.random.default_rng(n)
    shape = (128, size, size)
    params = random_gaussians(rng, n, shape)
    tilts = np.linspace(-60.0, 60.0, n_views)
    cases = {label: (lambda pkg=pkg: pkg.project(params, tilts, size, size))
             for label, pkg in packages.items()}
    runs = interleaved_medians(cases, repeats, sync)
    out = {"n_gaussians": n, "detector": [size, size], "views_per_call": n_views}
    for label, run in runs.items():
        run["views_per_s"] = n_views / run["median_s"]
        out[label] = run
    line = f"  N={n:>8}  {size}^2 x {n_views} views:" + "".join(
        f"  {label} {run['median_s']:.3f} s = {run['views_per_s']:.2f} views/s"
        for label, run in runs.items())
    if "baseline" in runs:
        out["speedup"] = runs["baseline"]["median_s"] / runs["current"]["median_s"]
        line += f"   x{out['speedup']:.2f}"
    print(line, flush=True)
    return out


# ----------------------------------------------------------------------------------------

def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default all)")
    parser.add_argument("--n", default=None,
                        help="Gaussian counts, comma-separated (default 20000,60000; "
                             "100000,1000000 with --project-rate)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=None, metavar="GITREF",
                        help="also time the performance modules of this git revision")
    parser.add_argument("--project-rate", action="store_true",
                        help="views/s of projecting N Gaussians into size^2 views")
    parser.add_argument("--size", type=int, default=512, help="detector size (project-rate)")
    parser.add_argument("--rate-views", type=int, default=4,
                        help="views per timed call (project-rate)")
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/...)")
    opts = parser.parse_args(args)

    from taichi_etgs import runtime
    from taichi_etgs._ti import ti

    cfg = runtime.init(opts.arch, threads=opts.threads)
    packages = {"current": Package("taichi_etgs")}
    if opts.baseline:
        load_baseline(opts.baseline)
        packages = {"baseline": Package("_etgs_baseline"), **packages}
    default_n = "100000,1000000" if opts.project_rate else "20000,60000"
    counts = [int(float(v)) for v in (opts.n or default_n).split(",")]
    report = {"machine": machine(), "arch": cfg.arch, "threads": opts.threads,
              "baseline": opts.baseline, "repeats": opts.repeats, "results": []}
    print(f"arch={cfg.arch} threads={opts.threads or 'all'} baseline={opts.baseline} "
          f"repeats={opts.repeats}", flush=True)
    for n in counts:
        if opts.project_rate:
            report["results"].append(bench_rate(packages, n, opts.size, opts.rate_views,
                                                opts.repeats, ti.sync))
        else:
            print(f"N = {n}  (box {SHAPE_ZYX}, {VIEWS_PER_STEP} views of "
                  f"{SHAPE_ZYX[1]}x{SHAPE_ZYX[2]})", flush=True)
            report["results"].append(bench_step(packages, n, opts.repeats, ti.sync))
    out = Path(opts.out) if opts.out else (
        HERE / "results" / f"gaussians-{cfg.arch}{'-rate' if opts.project_rate else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
