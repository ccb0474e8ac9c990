"""Noise sweep (issue 8): classical methods and the Gaussian reconstruction from clean to
very noisy data, on an isolated (SHREC-style) and on an extended specimen.

What it measures
----------------
One specimen (the atomic models of ``../shared/data/structures`` when present, as
``bench/run.py`` uses them, else procedural particles; seed 1) is simulated by
:func:`taichi_etgs.simulation.simulate.simulate_tilt_series` at seven noise points

    clean      noise-free (``noise="none"``)
    snr1, snr0.3, snr0.1, snr0.03
               white noise (``noise="gaussian"``) at that per-pixel SNR
    dose120, dose60
               the physical model (CTF + Poisson, ``noise="physical"``) at that total
               dose, e/A^2

each in two geometries, so 14 data sets (points ``<noise>-iso`` / ``<noise>-ext``):

    iso  ``isolated=True``: the specimen is cut to the box, and the ice is 0.8 x the box's
         thickness, so the ice layer ends inside the field of view in x and in z;
    ext  ``isolated=False``: the specimen (ice as thick as the box) runs past the field of
         view, as in a real tomogram.

Tilts -60..60 by 3 deg (41 views). On every data set it runs WBP, WBP with the SIRT-like
filter (20 iterations), SIRT 10/20/50 and the Gaussian reconstruction with the library's
default settings (``--iterations`` overrides the iteration count), and scores each
tomogram, and the Gaussians' initialisation (the model before fitting), with
:func:`taichi_etgs.evaluation.metrics.evaluate` against the ground truth: band FSC,
missing-wedge band FSC, their specimen versions (the ice slab's z-profile removed), wedge
FSC, correlation, FSC-0.143 resolution, wall time. For the Gaussians it records the best (held-out)
iteration and whether the run stopped early. With ``--halves`` it also reconstructs the
odd and the even views separately (:func:`taichi_etgs.gaussian.fit.reconstruct_halves`)
and sets the half-map FSC of their specimens (:func:`taichi_etgs.gaussian.fit.halves_fsc`:
the Gaussians, not the slab both halves fit alike), and the full-map estimate drawn from it
(``sqrt(2 FSC_half / (1 + FSC_half))`` per shell, averaged over the band), beside the
true specimen band FSC of the full tomogram: does the ground-truth-free estimate tell the
truth?

Output (``--out``, default bench/results): ``sweep.json`` (everything, strict
JSON), ``sweep.md`` (one table: best classical vs Gaussians per point) and ``sweep.png``
(band FSC and wedge band FSC per point). They are rewritten after every point, so an
interrupted run keeps what it measured, and a run of some ``--points`` replaces those
points' entries in an existing sweep.json and keeps the others. The simulated data are
cached in bench/data/sweep/<point>/ (git-ignored) and simulated again only when the
settings change (or with ``--resimulate``).

How to run
----------
    python bench/sweep.py                          # all 14 points, 64 x 128 x 128 at 8 A
    python bench/sweep.py --points clean-iso,snr0.1-iso,dose60-ext --halves
    python bench/sweep.py --shape 16,32,32 --iterations 20 --points clean-iso  # smoke test
    python bench/sweep.py --arch cuda

How long it takes
-----------------
The smoke test above takes about 5 s per point (2-core CPU). At the default shape on a
2-core CPU (estimated from that run and from bench/run.py's ``small`` preset, 48 x 128 x
128: SIRT 10/20/50 in 2/4/9 s, Gaussians 135 s), per point: the simulation (first time
only, cached after) well under a minute to a minute, the classical methods about 20 s,
scoring about 10 s, the Gaussian reconstruction (600 iterations or its early stop) 2-3
minutes: 3-4 minutes per point, about an hour for the 14 points. ``--halves`` adds two
more Gaussian runs (as long as the full one each): 7-10 minutes per point, 2 hours
or more for the sweep. On a GPU (``--arch cuda``) the Gaussians take seconds to a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

HERE = Path(__file__).resolve().parent
STRUCTURES = HERE.parent.parent / "shared" / "data" / "structures"
STRUCTURE_IDS = ("4v1w", "6qt9", "3jb9")  # the same models as bench/run.py

NOISE_POINTS: dict[str, dict] = {
    "clean": dict(noise="none"),
    "snr1": dict(noise="gaussian", snr=1.0),
    "snr0.3": dict(noise="gaussian", snr=0.3),
    "snr0.1": dict(noise="gaussian", snr=0.1),
    "snr0.03": dict(noise="gaussian", snr=0.03),
    "dose120": dict(noise="physical", total_dose_e_per_A2=120.0),
    "dose60": dict(noise="physical", total_dose_e_per_A2=60.0),
}
GEOMETRIES = {"iso": True, "ext": False}
POINTS = [f"{noise}-{geom}" for geom in GEOMETRIES for noise in NOISE_POINTS]
ISOLATED_ICE_FRACTION = 0.8  # of the box's thickness: the ice ends inside the box in z

CLASSICAL = ("wbp", "wbp_fakesirt20", "sirt10", "sirt20", "sirt50")
KEPT_METRICS = ("band_fsc", "wedge_band_fsc", "specimen_band_fsc", "specimen_wedge_band_fsc",
                "wedge_fsc", "correlation", "fsc0143_resolution_A", "fsc05_resolution_A")


# -- data ------------------------------------------------------------------------------


def structures(use: bool, ids: tuple[str, ...] = STRUCTURE_IDS) -> tuple[str, ...]:
    """The atomic models ``ids`` (PDB ids) found in the shared structures folder; exits
    when one is missing (the simulator would fill the box with procedural particles, a
    different specimen from every stored result's)."""
    if not use:
        return ()
    found = tuple(str(p) for p in sorted(STRUCTURES.glob("*.cif.gz"))
                  if p.name.startswith(ids))
    missing = [i for i in ids if not any(Path(f).name.startswith(i) for f in found)]
    if missing:
        raise SystemExit(f"no atomic model {', '.join(missing)} in {STRUCTURES} (the "
                         f"benchmarks expect the checkout beside shared/)")
    return found


def simulation_config(point: str, shape_zyx: tuple[int, int, int], pixel_size_A: float,
                      models: tuple[str, ...], *, noise: dict | None = None,
                      tilts_deg: tuple[float, float, float] = (-60.0, 60.0, 3.0)):
    """The simulation of ``point`` (``<noise>-<geometry>``); ``noise``: the noise settings
    when the point's noise is not one of :data:`NOISE_POINTS`; ``tilts_deg``: first, last
    and step."""
    from taichi_etgs.simulation.simulate import SimulationConfig

    name, geom = point.rsplit("-", 1)
    isolated = GEOMETRIES[geom]
    ice = ISOLATED_ICE_FRACTION * shape_zyx[0] * pixel_size_A if isolated else None
    return SimulationConfig(shape_zyx=shape_zyx, pixel_size_A=pixel_size_A,
                            tilt_min_deg=tilts_deg[0], tilt_max_deg=tilts_deg[1],
                            tilt_step_deg=tilts_deg[2], isolated=isolated,
                            ice_thickness_A=ice, structures=models, seed=1,
                            **(noise if noise is not None else NOISE_POINTS[name]))


def _cache_key(config) -> dict:
    """What identifies a cached data set: the settings, with models named by file name."""
    key = config.to_dict()
    key["structures"] = [Path(s).name for s in config.structures]
    if config.shift_sd_px or config.axis_error_deg:
        # Misaligned views are projected with a margin along X since 2026-12-01 (what comes
        # in past an isolated box is vacuum, no longer its edge repeated), their white noise
        # set from the aligned views.
        key["misaligned_views"] = "margin, noise of the aligned views"
    return key


def gaussian_config(sim: dict, voxel_size_A: float, iterations: int | None = None):
    """The Gaussian reconstruction's settings for a data set simulated with ``sim`` (its
    simulation.json ``config``): library defaults, with the CTF of physical-noise data as
    a user passes it with --defocus (and the header's pixel size): the CTF's constants are
    known from the acquisition, not fitted."""
    from taichi_etgs.gaussian.fit import ReconstructConfig

    overrides = {} if iterations is None else {"iterations": iterations}
    if sim.get("noise") == "physical":
        overrides.update(defocus_um=float(sim["defocus_um"]), pixel_size_A=float(voxel_size_A),
                         voltage_kV=float(sim["voltage_kV"]), cs_mm=float(sim["cs_mm"]),
                         amplitude_contrast=float(sim["amplitude_contrast"]))
    return ReconstructConfig(**overrides)


def load_or_simulate(point: str, config, force: bool) -> dict:
    """The point's tilt series and ground truth, simulated once and cached on disk
    (bench/data/sweep/<point>/; simulated again when the settings differ)."""
    from taichi_etgs._atomic import write_text_atomic
    from taichi_etgs.io import load_tilt_series, read_volume
    from taichi_etgs.simulation.simulate import simulate_tilt_series, write_simulation

    folder = HERE / "data" / "sweep" / point
    key_file = folder / "sweep_key.json"
    key = _cache_key(config)
    cached = (not force and (folder / "simulation.json").exists() and key_file.exists()
              and json.loads(key_file.read_text()) == key)
    seconds = 0.0
    if not cached:
        start = time.perf_counter()
        result = simulate_tilt_series(config, progress=lambda m: print(f"    {m}", flush=True))
        write_simulation(result, folder, force=True)
        write_text_atomic(key_file, json.dumps(key, indent=1) + "\n")
        seconds = time.perf_counter() - start
        print(f"  simulated {point} in {seconds:.1f} s -> {folder}", flush=True)
    series = load_tilt_series(folder / "tilts.mrc", folder / "tilts.tlt")
    truth, voxel = read_volume(folder / "ground_truth.mrc")
    sim = json.loads((folder / "simulation.json").read_text())
    return {"series": series, "truth": truth, "voxel_size_A": float(voxel),
            "simulation": sim, "simulation_seconds": seconds, "cached": cached}


# -- methods ---------------------------------------------------------------------------


def classical_methods(views: np.ndarray, tilts_deg: np.ndarray, nz: int
                      ) -> dict[str, Callable[[], np.ndarray]]:
    from taichi_etgs.classical.sirt import sirt
    from taichi_etgs.classical.wbp import weighted_back_projection

    methods: dict[str, Callable[[], np.ndarray]] = {
        "wbp": lambda: weighted_back_projection(views, tilts_deg, nz),
        "wbp_fakesirt20": lambda: weighted_back_projection(views, tilts_deg, nz,
                                                           fake_sirt_iterations=20),
    }
    for k in (10, 20, 50):
        methods[f"sirt{k}"] = (lambda k=k: sirt(views, tilts_deg, nz, iterations=k).volume)
    return methods


def _progress(label: str, start: float) -> Callable:
    def progress(info) -> None:
        if info.iteration % 100 == 0:
            print(f"    {label}{info.iteration}/{info.total} loss {info.loss:.4f} "
                  f"{info.n_gaussians} Gaussians {time.perf_counter() - start:.0f} s "
                  f"{info.message}", flush=True)
    return progress


def score(volume: np.ndarray, truth: np.ndarray, voxel_A: float, max_tilt: float) -> dict:
    """:func:`~taichi_etgs.evaluation.metrics.evaluate`, or the error it raised (the sweep
    goes on)."""
    from taichi_etgs.evaluation.metrics import evaluate

    try:
        return evaluate(volume, truth, voxel_A, max_tilt)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _line(point: str, name: str, seconds: float, metrics: dict, extra: str = "") -> None:
    if "error" in metrics:
        print(f"  {point:<12} {name:<16} {seconds:8.1f} s  not scored: {metrics['error']}",
              flush=True)
        return
    print(f"  {point:<12} {name:<16} {seconds:8.1f} s  band {metrics['band_fsc']:.3f}  "
          f"wedge band {metrics['wedge_band_fsc']:.3f}  specimen band "
          f"{metrics['specimen_band_fsc']:.3f}  corr {metrics['correlation']:.3f}  "
          f"FSC0.143 {metrics['fsc0143_resolution_A']:.1f} A{extra}", flush=True)


def full_map_estimate(half: dict) -> dict:
    """The full map's FSC against the truth estimated from a half-map FSC:
    ``sqrt(2 h / (1 + h))`` per shell (negative ``h`` taken as 0), and its band mean."""
    from taichi_etgs.evaluation.metrics import band_average, resolution_at

    freq = np.asarray(half["freq_per_A"], dtype=np.float64)
    h = np.asarray([np.nan if v is None else v for v in half["fsc"]], dtype=np.float64)
    hc = np.clip(h, 0.0, 1.0)
    estimate = np.sqrt(2.0 * hc / (1.0 + hc))
    return {"fsc": estimate.tolist(),
            "band_fsc": band_average(freq, estimate, tuple(half["band_per_A"])),
            "fsc05_resolution_A": resolution_at(freq, estimate, 0.5)}


def run_point(point: str, data: dict, args) -> dict:
    from taichi_etgs.gaussian.fit import (
        GaussianReconstruction,
        ReconstructConfig,
        halves_fsc,
        reconstruct_halves,
    )
    from taichi_etgs.preprocess import density_views

    series, truth, voxel = data["series"], data["truth"], data["voxel_size_A"]
    tilts = np.asarray(series.tilts_deg, dtype=np.float64)
    views = density_views(series.data, "dark")
    nz = truth.shape[0]
    max_tilt = float(np.abs(tilts).max())
    sim = data["simulation"].get("config", {})
    entry: dict = {
        "point": point,
        "data": {"shape_zyx": list(truth.shape), "voxel_size_A": voxel,
                 "n_tilts": int(len(tilts)), "max_tilt_deg": max_tilt,
                 "noise": sim.get("noise"), "snr": sim.get("snr"),
                 "total_dose_e_per_A2": sim.get("total_dose_e_per_A2"),
                 "defocus_um": sim.get("defocus_um"),
                 "isolated": sim.get("isolated"), "ice_thickness_A": sim.get("ice_thickness_A"),
                 "structures": [Path(s).name for s in sim.get("structures", [])],
                 "placed_in_box": data["simulation"].get("derived", {}).get("placed_in_box"),
                 "simulation_seconds": data["simulation_seconds"],
                 "cached": data["cached"]},
        "methods": {},
    }

    def record(name: str, volume: np.ndarray, seconds: float, extra: str = "") -> dict:
        metrics = score(volume, truth, voxel, max_tilt)
        entry["methods"][name] = {"seconds": seconds, "metrics": metrics}
        _line(point, name, seconds, metrics, extra)
        return metrics

    for name, fn in classical_methods(views, tilts, nz).items():
        start = time.perf_counter()
        volume = fn()
        record(name, volume, time.perf_counter() - start)

    config = gaussian_config(sim, voxel, args.iterations)
    start = time.perf_counter()
    run = GaussianReconstruction(views, tilts, nz, config)
    init_volume = run.tomogram()
    init_seconds = time.perf_counter() - start
    record("gaussians_init", init_volume, init_seconds)
    run.run(progress=_progress("", start))
    volume = run.tomogram()
    seconds = time.perf_counter() - start
    report = run.validation_report()
    record("gaussians", volume, seconds,
           f"  best it {report.get('best_iteration')} of {run.iteration}"
           f"{' (stopped early)' if report.get('stopped_early') else ''}")
    defaults = ReconstructConfig().to_dict()
    overrides = {k: v for k, v in config.to_dict().items() if v != defaults[k]}
    entry["gaussians"] = {"config": config.to_dict(), "overrides": overrides,
                          "iterations_run": int(run.iteration),
                          "n_gaussians": int(run.params.n),
                          "best_iteration": report.get("best_iteration"),
                          "stopped_early": report.get("stopped_early"),
                          "validation_report": report}

    if args.halves:
        start = time.perf_counter()
        h1, h2 = reconstruct_halves(
            views, tilts, nz, config, seed_gaussians=run.seed_count(),
            progress=lambda k, info: _progress(f"half {k} ", start)(info))
        t1 = h1.tomogram()
        seconds = time.perf_counter() - start
        hf = halves_fsc(h1, h2, voxel)
        est = full_map_estimate(hf)
        truth_full = entry["methods"]["gaussians"]["metrics"]
        half1_true = score(t1, truth, voxel, max_tilt)
        entry["halves"] = {
            "seconds": seconds,
            "half_map": hf,
            "full_map_estimate": est,
            "true_full_band_fsc": truth_full.get("band_fsc"),
            "true_full_specimen_band_fsc": truth_full.get("specimen_band_fsc"),
            "true_full_fsc05_resolution_A": truth_full.get("fsc05_resolution_A"),
            "true_full_fsc0143_resolution_A": truth_full.get("fsc0143_resolution_A"),
            "half1_true_band_fsc": half1_true.get("band_fsc"),
            "half1_true_wedge_band_fsc": half1_true.get("wedge_band_fsc"),
            "best_iterations": [int(h1.best_iteration), int(h2.best_iteration)],
            "stopped_early": [bool(h1.stopped_early), bool(h2.stopped_early)],
        }
        print(f"  {point:<12} {'halves':<16} {seconds:8.1f} s  half-map band "
              f"{hf['band_fsc']:.3f}  FSC0.143 {hf['fsc0143_resolution_A']:.1f} A  "
              f"estimated full band {est['band_fsc']:.3f} vs true specimen "
              f"{_fmt(truth_full.get('specimen_band_fsc'), '.3f')}", flush=True)
    entry["summary"] = summarise(entry)
    entry["seconds"] = sum(m["seconds"] for k, m in entry["methods"].items()
                           if k != "gaussians_init") + entry.get("halves", {}).get("seconds", 0.0)
    entry["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return entry


# -- summaries -------------------------------------------------------------------------


def _value(metrics: dict | None, key: str) -> float:
    if not metrics or metrics.get(key) is None or "error" in metrics:
        return float("nan")
    v = metrics[key]
    return float(v) if not isinstance(v, str) else float(v)  # "inf" from strict JSON


def _best(methods: dict, key: str) -> tuple[str | None, float]:
    best, name = float("nan"), None
    for k in CLASSICAL:
        v = _value(methods.get(k, {}).get("metrics"), key)
        if math.isfinite(v) and not v <= best:  # the first finite value, then larger ones
            best, name = v, k
    return name, best


def summarise(entry: dict) -> dict:
    methods = entry["methods"]
    out: dict = {}
    for key in ("band_fsc", "wedge_band_fsc", "specimen_band_fsc", "specimen_wedge_band_fsc"):
        name, best = _best(methods, key)
        g = _value(methods.get("gaussians", {}).get("metrics"), key)
        init = _value(methods.get("gaussians_init", {}).get("metrics"), key)
        out[key] = {"best_classical": best, "best_classical_method": name, "gaussians": g,
                    "gaussians_init": init,
                    "ratio": g / best if math.isfinite(best) and best != 0 else float("nan"),
                    "gaussians_beat_classical": bool(g > best)
                    if math.isfinite(g) and math.isfinite(best) else None}
    out["kept_metrics"] = {k: {m: methods[k]["metrics"].get(m) for m in KEPT_METRICS}
                           | {"seconds": methods[k]["seconds"]}
                           for k in methods if "error" not in methods[k]["metrics"]}
    return out


def _fmt(value, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else format(v, spec)


def ordered(points: dict) -> list[str]:
    return [p for p in POINTS if p in points] + sorted(p for p in points if p not in POINTS)


def half_map_tracking(report: dict) -> dict | None:
    """How the half-map band FSC of the specimens follows the true specimen band FSC of
    the full tomogram across the points: correlations, mean difference, the points whose
    order it gets wrong. None without halves."""
    from scipy.stats import pearsonr, spearmanr

    rows = [(name, e["halves"]["half_map"]["band_fsc"],
             e["halves"]["full_map_estimate"]["band_fsc"],
             e["halves"].get("true_full_specimen_band_fsc"))
            for name, e in report["points"].items() if "halves" in e]
    rows = [r for r in rows if None not in r]
    if len(rows) < 3:
        return None
    half, est, true = (np.array([r[k] for r in rows], dtype=np.float64) for k in (1, 2, 3))
    return {"points": [r[0] for r in rows],
            "half_map_vs_true": {"pearson": float(pearsonr(half, true)[0]),
                                 "spearman": float(spearmanr(half, true)[0]),
                                 "mean_difference": float(np.mean(half - true)),
                                 "mean_abs_difference": float(np.mean(np.abs(half - true)))},
            "estimate_vs_true": {"pearson": float(pearsonr(est, true)[0]),
                                 "spearman": float(spearmanr(est, true)[0]),
                                 "mean_difference": float(np.mean(est - true))}}


def markdown(report: dict) -> str:
    points = report["points"]
    shapes = {(tuple(e["data"]["shape_zyx"]), e["data"]["voxel_size_A"],
               e["gaussians"]["config"]["iterations"]) for e in points.values()}
    lines = ["# Noise sweep (issue 8)", "",
             "Gaussian reconstruction (library defaults) against the best classical method "
             "(WBP, WBP with the SIRT-like filter, SIRT 10/20/50) per data set, scored by "
             "`taichi_etgs.evaluation.metrics.evaluate` against the ground truth. `iso`: isolated "
             "specimen, ice 0.8 x the box thickness; `ext`: the specimen runs past the "
             "field of view. Tilts -60..60 by 3 deg. Machine: "
             f"{report['machine']['cpu_count']} CPUs, arch {report['arch']}. Data: "
             + "; ".join(f"{s[0]} (z, y, x) at {s[1]:g} A, {s[2]} Gaussian iterations"
                         for s in sorted(shapes)) + ".", "",
             "| point | best classical band FSC | Gaussian band FSC | ratio | "
             "best classical wedge band FSC | Gaussian wedge band FSC | ratio | "
             "Gaussian init band FSC | beats (band / wedge) | "
             "half-map est. / true specimen band FSC | best it. | time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|"]
    for name in ordered(points):
        e = points[name]
        s = e["summary"]
        b, w = s["band_fsc"], s["wedge_band_fsc"]

        def yes(v):
            return "n/a" if v is None else ("yes" if v else "no")

        halves = e.get("halves")
        half_cell = (f"{_fmt(halves['full_map_estimate']['band_fsc'], '.3f')} / "
                     f"{_fmt(halves.get('true_full_specimen_band_fsc'), '.3f')}"
                     if halves else "-")
        g = e["gaussians"]
        best_it = f"{g['best_iteration']}/{g['iterations_run']}" + \
            (" (early)" if g.get("stopped_early") else "")
        gseconds = e["methods"].get("gaussians", {}).get("seconds", float("nan"))
        lines.append(
            f"| {name} | {_fmt(b['best_classical'], '.3f')} ({b['best_classical_method']}) | "
            f"{_fmt(b['gaussians'], '.3f')} | {_fmt(b['ratio'], '.2f')} | "
            f"{_fmt(w['best_classical'], '.3f')} ({w['best_classical_method']}) | "
            f"{_fmt(w['gaussians'], '.3f')} | {_fmt(w['ratio'], '.2f')} | "
            f"{_fmt(b['gaussians_init'], '.3f')} | "
            f"{yes(b['gaussians_beat_classical'])} / {yes(w['gaussians_beat_classical'])} | "
            f"{half_cell} | {best_it} | {_fmt(gseconds, '.0f')} / {_fmt(e['seconds'], '.0f')} |")
    lines += ["",
              "Band FSC: mean FSC over the shells of 1/400-1/32 per A (features of 32-400 A); "
              "wedge band FSC: the same over the missing wedge only. Ratio: Gaussians / best "
              "classical. Init: the Gaussian model before fitting (its SIRT initialisation "
              "fitted by the octree). Half-map est.: `sqrt(2 h / (1 + h))` of the half-map "
              "FSC `h` of the halves' specimens (odd/even views, `--halves`; Gaussians only, "
              "the slab left out) averaged over the band, beside the true specimen band FSC "
              "(ice z-profile removed) of the full Gaussian tomogram. Time: Gaussians (their "
              "initialisation included) / all methods of the point (halves included; simulation "
              "not). Specimen scores (ice z-profile removed), correlations, resolutions and the "
              "curves are in sweep.json."]
    tracking = half_map_tracking(report)
    if tracking is not None:
        h, e = tracking["half_map_vs_true"], tracking["estimate_vs_true"]
        lines += ["", f"Half-map tracking over {len(tracking['points'])} points: the half-map "
                  f"band FSC of the specimens against the true specimen band FSC of the full "
                  f"tomogram, Pearson {h['pearson']:.2f}, Spearman {h['spearman']:.2f}, "
                  f"mean difference {h['mean_difference']:+.3f} (mean absolute "
                  f"{h['mean_abs_difference']:.3f}); the full-map estimate "
                  f"`sqrt(2 h / (1 + h))`: Pearson {e['pearson']:.2f}, Spearman "
                  f"{e['spearman']:.2f}, mean difference {e['mean_difference']:+.3f}."]
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = report["points"]
    names = ordered(points)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(8.0, 0.7 * len(names) + 3), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, key, title in ((axes[0], "band_fsc", "band FSC (1/400-1/32 per A)"),
                           (axes[1], "wedge_band_fsc", "missing-wedge band FSC")):
        s = [points[n]["summary"][key] for n in names]
        ax.plot(x, [v["best_classical"] for v in s], "o-", label="best classical")
        ax.plot(x, [v["gaussians"] for v in s], "s-", label="Gaussians")
        ax.plot(x, [v["gaussians_init"] for v in s], "^--", label="Gaussian init")
        if key == "band_fsc":
            est = [points[n]["halves"]["full_map_estimate"]["band_fsc"]
                   if "halves" in points[n] else np.nan for n in names]
            if np.isfinite(np.asarray(est, dtype=float)).any():
                ax.plot(x, est, "x", markersize=9, label="half-map estimate (Gaussians)")
        for i in range(1, len(names)):  # a gap between the isolated and extended groups
            if names[i].rsplit("-", 1)[-1] != names[i - 1].rsplit("-", 1)[-1]:
                ax.axvline(i - 0.5, color="0.6", linewidth=0.8)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(names, rotation=45, ha="right")
    axes[0].set_title("Noise sweep: best classical vs Gaussians")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(report: dict, out: Path, figure_too: bool) -> None:
    from taichi_etgs._atomic import write_text_atomic
    from taichi_etgs.pipeline import jsonio

    out.mkdir(parents=True, exist_ok=True)
    report = jsonio.to_jsonable(report)  # strict JSON: "inf", null for NaN
    write_text_atomic(out / "sweep.json", jsonio.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "sweep.md", markdown(report))
    if figure_too:
        try:
            figure(report, out / "sweep.png")
        except Exception as exc:
            print(f"  (figure not drawn: {type(exc).__name__}: {exc})", flush=True)


# -- command line ----------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X (three positive sizes), got {text}")
    return parts  # type: ignore[return-value]


def parse_points(text: str) -> list[str]:
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in POINTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown point(s) {', '.join(unknown)}; "
                                         f"expected some of {', '.join(POINTS)}")
    return [p for p in POINTS if p in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="points: " + ", ".join(POINTS))
    parser.add_argument("--shape", type=parse_shape, default=(64, 128, 128),
                        help="tomogram shape Z,Y,X (default 64,128,128)")
    parser.add_argument("--pixel-size", type=float, default=8.0, help="A (default 8)")
    parser.add_argument("--points", type=parse_points, default=list(POINTS),
                        help="comma-separated subset of the points (default: all 14)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Gaussian iterations (default: the library default)")
    parser.add_argument("--halves", action="store_true",
                        help="also run the odd/even half reconstructions (half-map FSC)")
    parser.add_argument("--arch", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--resimulate", action="store_true",
                        help="simulate again even when cached data match")
    parser.add_argument("--no-structures", action="store_true",
                        help="procedural particles even when the atomic models exist")
    parser.add_argument("--no-figure", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite sweep.md and sweep.png from OUT/sweep.json, run nothing")
    args = parser.parse_args()
    if args.report_only:
        report = json.loads((args.out / "sweep.json").read_text())
        report["half_map_tracking"] = half_map_tracking(report)
        write_outputs(report, args.out, not args.no_figure)
        print(f"rewrote {args.out / 'sweep.md'}", flush=True)
        return
    if not args.pixel_size > 0:
        parser.error("--pixel-size must be positive")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")

    from taichi_etgs import runtime

    runtime.init(args.arch)
    models = structures(not args.no_structures)
    out: Path = args.out
    report: dict = {"points": {}}
    if (out / "sweep.json").exists():
        try:
            report = json.loads((out / "sweep.json").read_text())
            report.setdefault("points", {})
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{out / 'sweep.json'} unreadable ({exc}); starting afresh", flush=True)
            report = {"points": {}}
    kept = [p for p in report["points"] if p not in args.points]
    for p in kept:
        old = report["points"][p]["data"]
        if old["shape_zyx"] != list(args.shape) or old["voxel_size_A"] != args.pixel_size:
            print(f"note: kept point {p} was measured at {old['shape_zyx']}, "
                  f"{old['voxel_size_A']:g} A (this run: {list(args.shape)}, "
                  f"{args.pixel_size:g} A)", flush=True)
    report.update({"issue": 8, "arch": args.arch, "machine": machine(),
                   "structures": [Path(m).name for m in models],
                   "last_run": {"argv": sys.argv[1:], "shape_zyx": list(args.shape),
                                "pixel_size_A": args.pixel_size, "points": args.points,
                                "iterations": args.iterations, "halves": args.halves}})
    specimen = ("atomic models " + ", ".join(Path(m).name for m in models) if models
                else "procedural particles")
    print(f"noise sweep: {len(args.points)} point(s), shape {args.shape} at "
          f"{args.pixel_size:g} A, {specimen}; writing {out}", flush=True)
    sweep_start = time.perf_counter()
    for point in args.points:
        print(f"[{point}]", flush=True)
        config = simulation_config(point, args.shape, args.pixel_size, models)
        data = load_or_simulate(point, config, args.resimulate)
        entry = run_point(point, data, args)
        report["points"][point] = entry
        report["points"] = {p: report["points"][p] for p in ordered(report["points"])}
        report["half_map_tracking"] = half_map_tracking(report)
        write_outputs(report, out, not args.no_figure)
        print(f"  {point} done in {entry['seconds']:.0f} s (+ simulation "
              f"{data['simulation_seconds']:.0f} s); sweep so far "
              f"{time.perf_counter() - sweep_start:.0f} s", flush=True)
    print(f"wrote {out / 'sweep.json'}, sweep.md, sweep.png", flush=True)


if __name__ == "__main__":
    main()
