"""Acceptance of ``taichi-etgs batch`` (issue 11, part 1): speed-up of 2 workers over 1,
outputs equal to single-series runs, and a worker SIGKILLed mid-run.

For WBP and SIRT: N simulated tilt series (procedural phantoms, projected) go through
``taichi-etgs batch`` with 1 worker x 1 thread and with 2 workers x 1 thread (each a
fresh command, cluster start-up included; ``--repeats`` batches of each, alternating, and
their medians); the tomograms of both must equal, bit for bit, those of
``taichi-etgs wbp``/``sirt --threads 1`` on each series alone. Then SIRT
again into a fresh folder with 2 workers, one of which is SIGKILLed while it runs a
series: the batch must still finish every series (the task retried), leave no partial
files, say so in its summary; and a second identical batch must do nothing.

Writes ``bench/results/batch.md`` and ``batch.json`` (``--quick``: ``batch-quick.*``).

    python bench/batch.py            # 8 series of 64 x 256 x 256; minutes on 2 cores
    python bench/batch.py --quick    # 3 small series: checks the script in seconds
    python bench/batch.py --shape 64,512,512 --methods wbp   # bigger series, WBP only
                                     # (writes batch-wbp-64x512x512.*)

The SIGKILL scenario runs with SIRT, so only when SIRT is among ``--methods``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, volume_bytes

RESULTS = Path(__file__).resolve().parent / "results"
CLI = [sys.executable, "-m", "taichi_etgs.cli"]
GAUSSIAN_ITERATIONS = 150


def make_series(folder: Path, n: int, shape: tuple[int, int, int], step: float) -> None:
    """``n`` tilt series ``ts<k>.mrc`` with ``ts<k>.tlt``: phantoms projected at
    -60..60 degrees, dark contrast, a little noise."""
    from taichi_etgs import runtime
    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.io import write_stack
    from taichi_etgs.simulation.phantom import make_phantom

    runtime.init("cpu")
    tilts = np.arange(-60.0, 60.0 + step / 2, step)
    rng = np.random.default_rng(0)
    for k in range(n):
        views = forward_project(make_phantom(shape, seed=k), tilts)
        views = views.max() - views + rng.normal(0, 0.05 * views.std(), views.shape)
        write_stack(folder / f"ts{k}.mrc", views.astype(np.float32), 10.0)
        np.savetxt(folder / f"ts{k}.tlt", tilts, fmt="%.2f")


def run(args: list, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, **kwargs)
    return time.perf_counter() - start, done


def method_args(method: str, iterations: int) -> list:
    if method == "reconstruct":  # a short fit: the batch's behaviour, not the method's
        return ["--iterations", GAUSSIAN_ITERATIONS]
    return ["--iterations", iterations] if method == "sirt" else []


def batch_args(data: Path, out: Path, method: str, thickness: int, iterations: int,
               workers: int) -> list:
    return ["batch", data, "--method", method, "--thickness", thickness, "-o", out,
            "--workers", workers, "--threads", 1, "--arch", "cpu",
            *method_args(method, iterations)]


def leftovers(out: Path) -> list[str]:
    """Anything in an output folder besides finished tomograms, sidecars and the summary."""
    return sorted(p.name for p in out.iterdir()
                  if not (p.name.endswith((".mrc", ".mrc.json"))
                          or p.name.startswith("batch_summary")) or ".tmp" in p.name)


def kill_one_worker_while_running(args: list, after_s: float) -> tuple[float, int, str, dict]:
    """Run a batch; once a series runs, wait ``after_s`` and SIGKILL one worker process.
    Returns the wall time, exit code, stderr and what was killed."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if " running" in line and not line.startswith("batch: 0 done, 0 running"):
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed: dict = {}
    if running.wait(timeout=600):
        time.sleep(after_s)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        if workers:
            victim = workers[0]
            killed = {"pid": victim.pid, "at_s": round(time.perf_counter() - start, 2)}
            os.kill(victim.pid, signal.SIGKILL)
    proc.stdout.read()
    code = proc.wait()
    reader.join(timeout=10)
    return time.perf_counter() - start, code, "".join(lines), killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 small series (checks the script; the numbers mean nothing)")
    parser.add_argument("--series", type=int, default=None, help="tilt series [8]")
    parser.add_argument("--shape", default=None, help="NZ,NY,NX of each series [64,256,256]")
    parser.add_argument("--methods", default="wbp,sirt",
                        help="any of wbp, sirt, reconstruct, comma-separated [wbp,sirt]")
    parser.add_argument("--repeats", type=int, default=3,
                        help="batches per worker count, alternating; medians reported [3]")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data and outputs [a temporary one]")
    opts = parser.parse_args()
    n = opts.series or (3 if opts.quick else 8)
    shape = (tuple(int(v) for v in opts.shape.split(",")) if opts.shape
             else (16, 48, 48) if opts.quick else (64, 256, 256))
    methods = [m for m in opts.methods.split(",") if m]
    if not set(methods) <= {"wbp", "sirt", "reconstruct"} or not methods:
        parser.error(f"--methods {opts.methods}: expected wbp, sirt, reconstruct")
    step = 5.0 if opts.quick else 3.0
    iterations = 3 if opts.quick else 10
    thickness = shape[0]
    work = opts.work or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    make_series(data, n, shape, step)
    report: dict = {"machine": machine(), "series": n, "shape_zyx": list(shape),
                    "tilt_step_deg": step, "sirt_iterations": iterations,
                    "repeats": opts.repeats, "methods": {}}
    ok = True
    for method in methods:
        singles = {}
        for k in range(n):
            out = work / f"single-{method}" / f"ts{k}.mrc"
            out.parent.mkdir(exist_ok=True)
            _, done = run([method, data / f"ts{k}.mrc", "--thickness", thickness, "-o", out,
                           "--threads", 1, "--arch", "cpu", "--force",
                           *method_args(method, iterations)])
            assert done.returncode == 0, done.stderr
            singles[k] = volume_bytes(out)
        entry: dict = {f"{w}w": {"runs_s": [], "exit": 0, "equal_to_single_runs": True}
                       for w in (1, 2)}
        for _ in range(opts.repeats):  # 1 and 2 workers alternate: drift hits both alike
            for workers in (1, 2):
                out = work / f"batch-{method}-{workers}w"
                shutil.rmtree(out, ignore_errors=True)  # a fresh batch, nothing to skip
                seconds, done = run(batch_args(data, out, method, thickness, iterations,
                                               workers))
                equal = all(volume_bytes(out / f"ts{k}.mrc") == singles[k] for k in range(n))
                e = entry[f"{workers}w"]
                e["runs_s"].append(round(seconds, 2))
                e["exit"] = max(e["exit"], done.returncode)
                e["equal_to_single_runs"] &= equal
                ok &= done.returncode == 0 and equal
        for w in (1, 2):
            entry[f"{w}w"]["seconds"] = round(float(np.median(entry[f"{w}w"]["runs_s"])), 2)
        entry["speedup"] = round(entry["1w"]["seconds"] / entry["2w"]["seconds"], 2)
        report["methods"][method] = entry
        print(f"{method}: 1 worker {entry['1w']['seconds']} s, 2 workers "
              f"{entry['2w']['seconds']} s: x{entry['speedup']}; equal to single runs: "
              f"{entry['1w']['equal_to_single_runs'] and entry['2w']['equal_to_single_runs']}")

    name = "batch-quick" if opts.quick else "batch"
    if opts.shape or methods != ["wbp", "sirt"]:
        name = f"batch-{'-'.join(methods)}-{'x'.join(map(str, shape))}"
    if "sirt" not in methods:
        report["ok"] = bool(ok)
        write(report, name)
        return 0 if ok else 1
    out = work / "batch-sirt-killed"
    args = batch_args(data, out, "sirt", thickness, iterations, 2)
    seconds, code, stderr, killed = kill_one_worker_while_running(args, 0.2 if opts.quick
                                                                  else 2.0)
    summary = json.loads((out / "batch_summary.json").read_text())
    singles_equal = all(volume_bytes(out / f"ts{k}.mrc") == volume_bytes(
        work / "single-sirt" / f"ts{k}.mrc") for k in range(n))
    rerun_s, rerun = run(args)
    rerun_summary = json.loads((out / "batch_summary.json").read_text())
    kill = {"killed": killed, "seconds": round(seconds, 2), "exit": code,
            "counts": summary["counts"],
            "attempts": {s["name"]: s["attempts"] for s in summary["series"]},
            "leftovers": leftovers(out), "equal_to_single_runs": singles_equal,
            "rerun": {"seconds": round(rerun_s, 2), "exit": rerun.returncode,
                      "counts": rerun_summary["counts"]}}
    report["sigkill"] = kill
    ok &= (bool(killed) and code == 0 and summary["counts"]["done"] == n
           and not kill["leftovers"] and singles_equal and rerun.returncode == 0
           and rerun_summary["counts"]["skipped"] == n)
    print(f"SIGKILL of worker pid {killed.get('pid')} at {killed.get('at_s')} s: exit {code}, "
          f"{summary['counts']}, attempts {kill['attempts']}, leftovers {kill['leftovers']}; "
          f"rerun: {rerun_summary['counts']} in {rerun_s:.1f} s")
    if code != 0:
        print(stderr[-3000:])
    report["ok"] = bool(ok)
    write(report, name)
    return 0 if ok else 1


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    kill = report.get("sigkill")
    m = report["machine"]
    options = " --quick" if name.endswith("quick") else ""
    if name not in ("batch", "batch-quick"):
        options = (f" --shape {','.join(map(str, report['shape_zyx']))} --methods "
                   f"{','.join(report['methods'])}")
    lines = [
        "# batch: 2 workers vs 1, equality with single runs, a worker SIGKILLed",
        "",
        f"`python bench/batch.py{options}`: "
        f"{report['series']} simulated tilt series of {' x '.join(map(str, report['shape_zyx']))}"
        f" voxels, tilts every {report['tilt_step_deg']:g} degrees from -60 to 60; SIRT "
        f"{report['sirt_iterations']} iterations"
        + (f"; Gaussians {GAUSSIAN_ITERATIONS} iterations" if "reconstruct" in report["methods"]
           else "") + "; every run `--arch cpu --threads 1`, on "
        f"{m.get('cpu_count', '?')} cores ({m.get('platform', '')}).",
        "",
        "| method | 1 worker x 1 thread | 2 workers x 1 thread | speed-up | equal to single "
        "runs, bit for bit |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, e in report["methods"].items():
        equal = e["1w"]["equal_to_single_runs"] and e["2w"]["equal_to_single_runs"]
        lines.append(f"| {method} | {e['1w']['seconds']:.1f} s | {e['2w']['seconds']:.1f} s | "
                     f"x{e['speedup']:.2f} | {'yes' if equal else 'NO'} |")
    repeats = report.get("repeats", 1)
    lines += ["", "Times are whole commands: the cluster's start, each worker's Taichi start and "
              "kernel compilation included"
              + (f"; medians of {repeats} batches each, 1 and 2 workers alternating (every "
                 "run in the JSON's runs_s)." if repeats > 1 else "."), ""]
    if kill is not None:
        lines += [
            f"SIGKILL of a worker during SIRT with 2 workers (pid {kill['killed'].get('pid')}, "
            f"{kill['killed'].get('at_s')} s in): exit {kill['exit']}, {kill['counts']['done']} of "
            f"{report['series']} done in {kill['seconds']:.1f} s, attempts "
            f"{kill['attempts']}; leftovers in the output folder: "
            f"{kill['leftovers'] or 'none'}; tomograms equal to single runs: "
            f"{'yes' if kill['equal_to_single_runs'] else 'NO'}. The same batch again: exit "
            f"{kill['rerun']['exit']}, {kill['rerun']['counts']['skipped']} skipped, "
            f"{kill['rerun']['seconds']:.1f} s.",
            ""]
    lines += [f"All checks passed: {'yes' if report['ok'] else 'NO'}.", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
