"""Speed of the voxel kernels: forward, back-projection, WBP, one SIRT iteration.

    python bench/kernels.py [--arch cpu|cuda] [--sizes medium,large] [--repeats 5]

Prints voxel-view updates per second (volume voxels x views / time), medians of several
runs after a warm-up, peak resident memory, the start-up cost of a command (import +
Taichi init + kernel compilation, cold and with Taichi's offline cache warm), and, when
``astra-toolbox`` is installed, the same operations with ASTRA's CPU 2D projector run
slice by slice on the same problem. Results go to bench/results/kernels-<arch>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_time, peak_rss_mib, reset_peak_rss

SIZES = {
    "medium": ((96, 256, 256), np.arange(-60.0, 61.0, 3.0)),   # 41 tilts
    "large": ((128, 512, 512), np.arange(-60.0, 61.0, 2.0)),   # 61 tilts
}

_STARTUP = """
import time; t0 = time.perf_counter()
import numpy as np
from taichi_etgs import runtime
from taichi_etgs.classical.projector import VoxelProjector
t1 = time.perf_counter()
runtime.init({arch!r})
t2 = time.perf_counter()
p = VoxelProjector(np.array([0.0, 30.0]), (8, 4, 8))
p.back(p.forward(np.ones((8, 4, 8), np.float32)))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def startup_cost(arch: str) -> dict:
    """Import, init and first-call (compile) times in fresh processes: cold, then warm cache."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TI_OFFLINE_CACHE_FILE_PATH=cache)
        for label in ("cold_cache", "warm_cache"):
            start = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", _STARTUP.format(arch=arch)], env=env,
                                 capture_output=True, text=True, check=True)
            total = time.perf_counter() - start
            imp, init, first = (float(v) for v in res.stdout.split()[-3:])
            out[label] = {"import_s": imp, "init_s": init, "first_call_s": first,
                          "process_s": total}
    return out


def bench_ours(shape, tilts, repeats: int) -> dict:
    from taichi_etgs._ti import ti
    from taichi_etgs.classical.projector import VoxelProjector
    from taichi_etgs.classical.sirt import sirt
    from taichi_etgs.classical.wbp import weighted_back_projection

    nz, ny, nx = shape
    rng = np.random.default_rng(0)
    volume = rng.random(shape, dtype=np.float32)
    projector = VoxelProjector(tilts, shape)
    vol_dev = projector.device(np.ascontiguousarray(volume.transpose(1, 0, 2)))
    views_dev = projector.empty_views()
    back_dev = projector.empty_volume()
    views = projector.forward(volume)
    updates = nz * ny * nx * tilts.size
    results = {}

    def run(name, fn):
        reset_peak_rss()
        med, times = median_time(fn, repeats, sync=ti.sync)
        results[name] = {"median_s": med, "times_s": times,
                         "voxel_view_updates_per_s": updates / med,
                         "peak_rss_mib": peak_rss_mib()}
        print(f"  {name:<22} {med:8.3f} s  {updates / med / 1e9:6.2f} G voxel-view/s  "
              f"peak {results[name]['peak_rss_mib']:.0f} MiB", flush=True)

    run("forward", lambda: projector.forward_internal(vol_dev, views_dev))
    run("back_projection", lambda: projector.back_internal(views_dev, back_dev))
    run("wbp", lambda: weighted_back_projection(views, tilts, nz, projector=projector))
    # One SIRT iteration = (cost of 3 iterations - cost of 1) / 2, which cancels set-up
    # (normalisers, transfers) out. "sirt_iteration" is the volume itself; the command's
    # default also widens X for the extended field of view (a bigger volume).
    for name, extend in (("sirt_iteration", False), ("sirt_iteration_extended_fov", True)):
        one = median_time(lambda e=extend: sirt(views, tilts, nz, iterations=1, extend_fov=e),
                          repeats, ti.sync)[0]
        reset_peak_rss()
        three = median_time(lambda e=extend: sirt(views, tilts, nz, iterations=3,
                                                  extend_fov=e), repeats, ti.sync)[0]
        per_iter = (three - one) / 2
        results[name] = {"median_s": per_iter, "sirt_setup_plus_1_iter_s": one,
                         "voxel_view_updates_per_s": updates / per_iter,
                         "peak_rss_mib": peak_rss_mib()}
        print(f"  {name:<22} {per_iter:8.3f} s  {updates / per_iter / 1e9:6.2f} "
              f"G voxel-view/s  (set-up + 1 iteration {one:.3f} s)", flush=True)
    return results


def bench_astra(shape, tilts, repeats: int) -> dict | None:
    try:
        import astra
    except ImportError:
        return None
    nz, ny, nx = shape
    vol_geom = astra.create_vol_geom(nz, nx)
    proj_geom = astra.create_proj_geom("parallel", 1.0, nx, np.deg2rad(tilts))
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    rng = np.random.default_rng(0)
    volume = rng.random(shape, dtype=np.float32)
    sino = np.zeros((ny, tilts.size, nx), np.float32)
    updates = nz * ny * nx * tilts.size

    def forward():
        for y in range(ny):
            sid, sino[y] = astra.create_sino(volume[:, y, :], projector)
            astra.data2d.delete(sid)

    def back():
        for y in range(ny):
            bid, _ = astra.create_backprojection(sino[y], projector)
            astra.data2d.delete(bid)

    def algorithm(name, iterations):
        def run():
            for y in range(ny):
                sid = astra.data2d.create("-sino", proj_geom, sino[y])
                rid = astra.data2d.create("-vol", vol_geom)
                cfg = astra.astra_dict(name)
                cfg.update(ProjectorId=projector, ProjectionDataId=sid, ReconstructionDataId=rid)
                aid = astra.algorithm.create(cfg)
                astra.algorithm.run(aid, iterations)
                astra.algorithm.delete(aid)
                astra.data2d.delete([sid, rid])
        return run

    results = {}
    for name, fn in (("forward", forward), ("back_projection", back),
                     ("wbp", algorithm("FBP", 1))):
        med, times = median_time(fn, max(1, repeats // 2))
        results[name] = {"median_s": med, "voxel_view_updates_per_s": updates / med}
        print(f"  astra {name:<16} {med:8.3f} s  {updates / med / 1e9:6.2f} G voxel-view/s",
              flush=True)
    one = median_time(algorithm("SIRT", 1), 1)[0]
    three = median_time(algorithm("SIRT", 3), 1)[0]
    results["sirt_iteration"] = {"median_s": (three - one) / 2,
                                 "voxel_view_updates_per_s": updates / ((three - one) / 2)}
    print(f"  astra {'sirt_iteration':<16} {(three - one) / 2:8.3f} s", flush=True)
    astra.projector.delete(projector)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="medium,large")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-astra", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from taichi_etgs import runtime

    report = {"machine": machine(), "arch": args.arch, "startup": startup_cost(args.arch)}
    print("start-up (import / init / first call):")
    for label, s in report["startup"].items():
        print(f"  {label:<11} {s['import_s']:.2f} / {s['init_s']:.2f} / {s['first_call_s']:.2f} s"
              f"  (whole process {s['process_s']:.2f} s)")
    runtime.init(args.arch)
    report["sizes"] = {}
    for size in args.sizes.split(","):
        shape, tilts = SIZES[size]
        print(f"{size}: volume {shape} (z, y, x), {tilts.size} tilts", flush=True)
        entry = {"shape_zyx": shape, "n_tilts": int(tilts.size),
                 "ours": bench_ours(shape, tilts, args.repeats)}
        if not args.no_astra and args.arch == "cpu":
            astra_res = bench_astra(shape, tilts, args.repeats)
            if astra_res is not None:
                entry["astra_cpu"] = astra_res
                # ASTRA's SIRT is confined to the box: compare with ours on the same volume.
                entry["speedup_vs_astra"] = {
                    k: astra_res[k]["median_s"] / entry["ours"][k]["median_s"] for k in astra_res}
                print("  speed-up over ASTRA: " + ", ".join(
                    f"{k} {v:.1f}x" for k, v in entry["speedup_vs_astra"].items()))
        report["sizes"][size] = entry
    out = Path(args.out) if args.out else (Path(__file__).parent / "results"
                                           / f"kernels-{args.arch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
