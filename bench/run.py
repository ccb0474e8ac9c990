"""Quality benchmark: every method on the same simulated data, the same metrics.

    python bench/run.py --preset small|medium|paper [--arch cpu|cuda] [--methods ...]

Simulates the preset's dataset (or reuses it from bench/data/<preset>/), runs WBP, WBP
with the SIRT-like filter, SIRT at several iteration counts and the Gaussian
reconstruction through the same pipeline as the commands (:mod:`taichi_etgs.pipeline`),
and (when ``astra-toolbox`` is installed) ASTRA's CPU FBP and SIRT slice by
slice as an external reference. Records quality (PSNR, SSIM, correlation, FSC
resolutions, missing-wedge FSC, band FSCs), wall time and peak memory per method. Writes
bench/results/<preset>.json, <preset>.md (a table) and <preset>.png (slices, FSC curves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mib, reset_peak_rss

HERE = Path(__file__).resolve().parent
STRUCTURES = HERE.parent.parent / "shared" / "data" / "structures"

PRESETS = {
    # CI-friendly: a minute or two on two cores.
    "small": dict(shape_zyx=(48, 128, 128), tilt_step_deg=3.0, snr=0.5),
    "medium": dict(shape_zyx=(96, 256, 256), tilt_step_deg=3.0, snr=0.5),
    # SHREC-like protocol (isolated specimen, 61 tilts by 2 deg); low SNR as in ICE-TIDE's.
    "paper": dict(shape_zyx=(180, 512, 512), tilt_step_deg=2.0, snr=0.1, isolated=True),
}
SIRT_ITERATIONS = (10, 20, 50)


def load_or_simulate(preset: str, force: bool, structures_dir: Path = STRUCTURES) -> dict:
    """The preset's tilt series and ground truth, simulated once and cached on disk."""
    from taichi_etgs.io import load_tilt_series, read_volume
    from taichi_etgs.simulation.simulate import (
        SimulationConfig,
        simulate_tilt_series,
        write_simulation,
    )

    folder = HERE / "data" / preset
    if force or not (folder / "simulation.json").exists():
        structures = tuple(str(p) for p in sorted(structures_dir.glob("*.cif.gz"))
                           if p.name.startswith(("4v1w", "6qt9", "3jb9")))
        if len(structures) < 3:  # procedural particles would be another specimen
            raise SystemExit(f"the atomic models 4v1w, 6qt9 and 3jb9 are not all in "
                             f"{structures_dir} (--structures)")
        config = SimulationConfig(structures=structures, seed=1, **PRESETS[preset])
        start = time.perf_counter()
        result = simulate_tilt_series(config, progress=lambda m: print(f"  {m}", flush=True))
        write_simulation(result, folder, force=True)
        print(f"simulated {preset} in {time.perf_counter() - start:.1f} s -> {folder}")
    series = load_tilt_series(folder / "tilts.mrc", folder / "tilts.tlt")
    truth, voxel = read_volume(folder / "ground_truth.mrc")
    return {"series": series, "truth": truth, "voxel_size_A": voxel,
            "simulation": json.loads((folder / "simulation.json").read_text())}


def astra_methods(views: np.ndarray, tilts_deg: np.ndarray, nz: int) -> dict:
    """ASTRA's CPU FBP and SIRT, slice by slice; its 'linear' projector is Joseph's model.

    Geometry map (checked against our projector to 1e-5): ASTRA's parallel-beam angle is
    minus our tilt, with volume rows = z.
    """
    try:
        import astra
    except ImportError:
        return {}
    n_tilts, ny, nx = views.shape
    vol_geom = astra.create_vol_geom(nz, nx)
    proj_geom = astra.create_proj_geom("parallel", 1.0, nx, np.deg2rad(-tilts_deg))

    def run(name: str, iterations: int) -> np.ndarray:
        projector = astra.create_projector("linear", proj_geom, vol_geom)
        out = np.empty((nz, ny, nx), np.float32)
        for y in range(ny):
            sid = astra.data2d.create("-sino", proj_geom, views[:, y, :])
            rid = astra.data2d.create("-vol", vol_geom)
            cfg = astra.astra_dict(name)
            cfg.update(ProjectorId=projector, ProjectionDataId=sid, ReconstructionDataId=rid)
            aid = astra.algorithm.create(cfg)
            astra.algorithm.run(aid, iterations)
            out[:, y, :] = astra.data2d.get(rid)
            astra.algorithm.delete(aid)
            astra.data2d.delete([sid, rid])
        astra.projector.delete(projector)
        return out

    return {"astra_fbp": lambda: run("FBP", 1),
            "astra_sirt20": lambda: run("SIRT", 20)}


def methods_for(series, nz: int, with_astra: bool) -> dict[str, Callable[[], np.ndarray]]:
    """Each method as the commands run it (the pipeline: the same views, checks and
    scaling), returning the tomogram in positive density."""
    from taichi_etgs.pipeline import Session, StackSource, VolumeTarget
    from taichi_etgs.pipeline.classical import run_sirt, run_wbp
    from taichi_etgs.pipeline.gaussian import GaussianSettings, run_reconstruct

    session = Session(note=lambda line: print(f"    {line}", flush=True))
    source = StackSource(series)
    target = VolumeTarget(nz)
    methods: dict[str, Callable[[], np.ndarray]] = {
        "wbp": lambda: run_wbp(source, target, session=session).volume,
        "wbp_fakesirt20": lambda: run_wbp(source, target, fake_sirt=20,
                                          session=session).volume,
    }
    for k in SIRT_ITERATIONS:
        methods[f"sirt{k}"] = (lambda k=k: run_sirt(source, target, iterations=k,
                                                    session=session).volume)
    # The Gaussian reconstruction with the command's default settings.
    methods["gaussians"] = lambda: run_reconstruct(source, target, GaussianSettings(),
                                                   session=session).volume
    if with_astra:
        from taichi_etgs.preprocess import density_views

        views = density_views(series.data, "dark")
        methods.update(astra_methods(views, series.tilts_deg, nz))
    return methods


def _scored_file(path: Path) -> Callable[[], np.ndarray]:
    """A tomogram a command wrote, as a method whose time is the command's own (from its
    sidecar) and whose memory is not known here."""
    from taichi_etgs.io import read_volume

    def load() -> np.ndarray:
        return read_volume(path)[0]

    load.seconds = float(json.loads(Path(f"{path}.json").read_text())["seconds"])
    load.peak_rss_mib = float("nan")
    return load


def _cell(metrics: dict, key: str, fmt: str) -> str:
    """A table cell; "n/a" for a metric the result does not hold (e.g. a specimen score
    of a result rescored from its stored curves, see rescore.py) or holds as null."""
    value = metrics.get(key)
    return "n/a" if value is None else format(float(value), fmt)


def markdown_table(preset: str, report: dict) -> str:
    lines = [f"# Benchmark `{preset}`", "",
             f"Data: {report['data']['shape_zyx']} (z, y, x) at "
             f"{report['data']['voxel_size_A']:g} A, "
             f"{report['data']['n_tilts']} tilts, noise {report['data']['noise']}"
             f" (SNR {report['data']['snr']}), isolated: {report['data']['isolated']}. "
             f"Machine: {report['machine']['cpu_count']} CPUs, arch {report['arch']}.", "",
             "| method | time (s) | peak RSS (MiB) | PSNR (dB) | SSIM | correlation | "
             "FSC 0.5 (A) | FSC 0.143 (A) | wedge FSC | band FSC | wedge band FSC | "
             "specimen band FSC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["methods"].items():
        m = r["metrics"]
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{m['psnr']:.2f} | {m['ssim']:.3f} | {m['correlation']:.3f} | "
                     f"{m['fsc05_resolution_A']:.1f} | {m['fsc0143_resolution_A']:.1f} | "
                     f"{_cell(m, 'wedge_fsc', '.3f')} | {_cell(m, 'band_fsc', '.3f')} | "
                     f"{_cell(m, 'wedge_band_fsc', '.3f')} | "
                     f"{_cell(m, 'specimen_band_fsc', '.3f')} |")
    lines += ["", "Metrics: `taichi_etgs.evaluation.metrics.evaluate` (each reconstruction "
              "is fitted affinely to the ground truth first; see its docstring). Band FSCs: "
              "the mean "
              "FSC (and missing-wedge FSC) over the shells of 1/400-1/32 per A (features "
              "of 32-400 A); specimen: the same after removing each XY plane's mean (the "
              "ice slab's z-profile) from both volumes."]
    if report.get("rescored"):
        lines += ["", report["rescored"]["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--arch", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of methods to run (default: all)")
    parser.add_argument("--resimulate", action="store_true")
    parser.add_argument("--no-astra", action="store_true")
    parser.add_argument("--no-figure", action="store_true")
    parser.add_argument("--structures", type=Path, default=STRUCTURES,
                        help="folder of the atomic models (default: ../shared/data/structures)")
    parser.add_argument("--score", action="append", default=[], metavar="NAME=FILE",
                        help="also score a tomogram written by a command (its time: the "
                             "command's, from the FILE.json sidecar); repeatable")
    parser.add_argument("--simulate-only", action="store_true",
                        help="write the preset's data to bench/data/<preset>/ and stop")
    args = parser.parse_args()

    from taichi_etgs import runtime
    from taichi_etgs.evaluation.metrics import evaluate
    from taichi_etgs.pipeline import jsonio

    runtime.init(args.arch)
    data = load_or_simulate(args.preset, args.resimulate, args.structures)
    if args.simulate_only:
        return
    series, truth = data["series"], data["truth"]
    nz = truth.shape[0]
    max_tilt = float(np.abs(series.tilts_deg).max())
    methods = methods_for(series, nz, not args.no_astra)
    if args.methods:
        wanted = args.methods.split(",")
        methods = {k: v for k, v in methods.items() if k in wanted}
    sim = data["simulation"]["config"] if "config" in data["simulation"] else data["simulation"]
    report = {"preset": args.preset, "arch": args.arch, "machine": machine(),
              "data": {"shape_zyx": list(truth.shape), "voxel_size_A": data["voxel_size_A"],
                       "n_tilts": int(series.n_tilts), "noise": sim.get("noise"),
                       "snr": sim.get("snr"), "isolated": sim.get("isolated")},
              "methods": {}}
    volumes = {}
    for item in args.score:
        name, _, path = item.partition("=")
        methods[name] = _scored_file(Path(path))
    for name, fn in methods.items():
        reset_peak_rss()
        start = time.perf_counter()
        volume = fn()
        seconds = getattr(fn, "seconds", time.perf_counter() - start)
        peak = getattr(fn, "peak_rss_mib", peak_rss_mib())
        metrics = evaluate(volume, truth, data["voxel_size_A"], max_tilt)
        volumes[name] = volume
        report["methods"][name] = {"seconds": seconds, "peak_rss_mib": peak, "metrics": metrics}
        print(f"{name:<16} {seconds:7.1f} s  PSNR {metrics['psnr']:6.2f}  SSIM "
              f"{metrics['ssim']:.3f}  FSC0.5 {metrics['fsc05_resolution_A']:6.1f} A  "
              f"wedge {metrics['wedge_fsc']:.3f}  band {metrics['band_fsc']:.3f}  "
              f"specimen band {metrics['specimen_band_fsc']:.3f}", flush=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"{args.preset}.json").write_text(jsonio.dumps(report, indent=1))
    (results / f"{args.preset}.md").write_text(markdown_table(args.preset, report))
    if not args.no_figure:
        from taichi_etgs.evaluation.figures import comparison_figure

        comparison_figure(volumes, truth, {k: v["metrics"] for k, v in
                                           report["methods"].items()},
                          results / f"{args.preset}.png", force=True)
    print(f"wrote {results / args.preset}.json/.md/.png")


if __name__ == "__main__":
    main()
