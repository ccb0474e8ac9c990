"""The CTF filter of the Gaussian forward model, on the host: float32 scipy.fft on every core
(what the library runs) against float64 numpy.fft on one thread (what it ran before).

    python bench/host_filters.py [--repeats 20] [--out bench/results]

Each step of a reconstruction with a CTF (or an exposure filter) filters its rendered
views and, for the gradient, the adjoint: ``ViewFilter.apply`` and ``ViewFilter.adjoint``
on a step's 8 views. They run on the host beside the kernels, on a GPU run too, where
their share of a step is largest. Medians over ``--repeats`` calls, the two
implementations alternated; the results must agree to 1e-12 of their scale.
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


def _measure(size: int, n_views: int, repeats: int, numpy_fft) -> dict:
    """Both implementations on ``n_views`` random views ``size`` square."""
    from taichi_etgs.gaussian.transfer import Microscope, ViewFilter

    views = np.random.default_rng(size).normal(size=(n_views, size, size)).astype(np.float32)
    f = ViewFilter(Microscope(defocus_um=3.0, pixel_size_A=8.0), (size, size))

    wide = views.astype(np.float64)  # what the filter computed in before: float64

    def step(v):
        return f.adjoint(f.apply(v))

    def timed(v):
        start = time.perf_counter()
        step(v)
        return time.perf_counter() - start

    ours = step(views)
    with numpy_fft():
        before = step(wide)
    assert np.abs(ours - before).max() <= 1e-5 * float(np.abs(before).max())  # float32 out
    times = {"scipy": [], "numpy": []}
    for _ in range(repeats):  # alternated, so that the machine's load hits both
        times["scipy"].append(timed(views))
        with numpy_fft():
            times["numpy"].append(timed(wide))
    row = {"size": size, "views": n_views,
           "scipy_ms": 1e3 * float(np.median(times["scipy"])),
           "numpy_ms": 1e3 * float(np.median(times["numpy"]))}
    return row | {"speedup": row["numpy_ms"] / row["scipy_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--views", type=int, default=8, help="views per step")
    parser.add_argument("--sizes", default="128,512", help="view widths (square views)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    from unittest import mock

    import taichi_etgs.gaussian.transfer as transfer

    def numpy_fft():
        # The previous implementation: numpy's FFTs, one thread (on float64 views).
        return mock.patch.multiple(
            transfer.scipy.fft,
            rfftn=lambda x, axes, workers: np.fft.rfftn(x, axes=axes),
            irfftn=lambda x, s, axes, workers: np.fft.irfftn(x, s=s, axes=axes))

    rows = []
    for size in (int(v) for v in args.sizes.split(",")):
        rows.append(_measure(size, args.views, args.repeats, numpy_fft))
        print(json.dumps(rows[-1]), flush=True)

    report = {"machine": machine(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "host_filters.json").write_text(json.dumps(report, indent=1))
    lines = ["# The CTF filter of the forward model on the host (apply + adjoint of one step)",
             "", f"Machine: {machine()['cpu_count']} CPUs. Medians of {args.repeats} calls, "
             "alternated. `bench/host_filters.py`.", "",
             "| views | size | before: float64 numpy.fft, 1 thread (ms) "
             "| float32 scipy.fft, every core (ms) | speedup |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['views']} | {r['size']} | {r['numpy_ms']:.1f} | {r['scipy_ms']:.1f} | "
              f"x{r['speedup']:.2f} |" for r in rows]
    (args.out / "host_filters.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
