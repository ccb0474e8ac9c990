"""Rescore committed benchmark results from their stored FSC curves, without rerunning.

    python bench/rescore.py [small medium paper]   (default: all three)

Each ``bench/results/<preset>.json`` written by ``bench/run.py`` stores, per method, the
FSC and missing-wedge FSC curves (``metrics.curves.fsc`` and ``metrics.curves.wedge_fsc``).
This script recomputes from those curves, with the current
:mod:`taichi_etgs.evaluation.metrics`:

- ``fsc05_resolution_A`` and ``fsc0143_resolution_A`` (:func:`resolution_at`; written
  for issue 8, whose fix stopped the crossing being interpolated from the DC shell, which
  had given resolutions coarser than the box, e.g. ~17,000 A in the paper preset's
  5,120 A box);
- ``band_fsc`` and ``wedge_band_fsc`` (:func:`band_average` over the default band,
  1/400-1/32 per A).

The specimen scores (``specimen_band_fsc``, ``specimen_wedge_band_fsc``) need the volumes
(each XY plane's mean is removed before the FFT), which the results do not keep: they
stay absent (``n/a`` in the table) until ``bench/run.py`` is rerun. Every other field is
left as it was. The resolutions found before the first rescoring are kept under
``rescored.previous`` in the JSON; the script is idempotent. It then rewrites
``<preset>.md`` with ``run.markdown_table`` and prints the old -> new figures. The
``.png`` figures are not redrawn (they need the volumes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from run import markdown_table  # noqa: E402

from taichi_etgs.evaluation.metrics import (  # noqa: E402
    DEFAULT_BAND_PER_A,
    band_average,
    resolution_at,
)
from taichi_etgs.pipeline import jsonio  # noqa: E402

PRESETS = ("small", "medium", "paper")
NOTE = ("Rescored with `bench/rescore.py` from the stored FSC curves (issue 8: FSC "
        "resolutions no longer interpolated from the DC shell, so never coarser than the "
        "box; band FSCs added). The reconstructions were not rerun; the specimen band FSC "
        "needs the volumes and is n/a until `bench/run.py` is rerun.")


def _curve(stored: dict) -> tuple[np.ndarray, np.ndarray]:
    """(freq_per_A, fsc) of a stored curve; JSON null (an empty shell) -> NaN."""
    freq = np.asarray(stored["freq_per_A"], dtype=np.float64)
    values = np.asarray([math.nan if v is None else v for v in stored["fsc"]],
                        dtype=np.float64)
    return freq, values


def rescore(report: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """Recompute the curve-derived metrics of every method of ``report`` in place.

    Returns
    -------
    ``{method: {key: (old, new)}}`` for the two resolutions.
    """
    previous = report.setdefault("rescored", {}).setdefault("previous", {})
    changes: dict[str, dict[str, tuple[float, float]]] = {}
    for name, result in report["methods"].items():
        m = result["metrics"]
        freq, curve = _curve(m["curves"]["fsc"])
        wfreq, wcurve = _curve(m["curves"]["wedge_fsc"])
        old = {key: m[key] for key in ("fsc05_resolution_A", "fsc0143_resolution_A")}
        previous.setdefault(name, old)
        m["fsc05_resolution_A"] = resolution_at(freq, curve, 0.5)
        m["fsc0143_resolution_A"] = resolution_at(freq, curve, 0.143)
        m["band_fsc"] = band_average(freq, curve, DEFAULT_BAND_PER_A)
        m["wedge_band_fsc"] = band_average(wfreq, wcurve, DEFAULT_BAND_PER_A)
        m["band_per_A"] = [float(v) for v in DEFAULT_BAND_PER_A]
        changes[name] = {key: (float(old[key]), float(m[key])) for key in old}
    report["rescored"]["by"] = "bench/rescore.py"
    report["rescored"]["note"] = NOTE
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", metavar="PRESET",
                        help=f"any of {', '.join(PRESETS)} (default: all)")
    args = parser.parse_args()
    # Checked here: argparse rejects a list default of a nargs="*" argument with choices.
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(PRESETS)}")
    for preset in args.presets or PRESETS:
        path = HERE / "results" / f"{preset}.json"
        report = json.loads(path.read_text())
        changes = rescore(report)
        # The same layout as run.py writes.
        path.write_text(jsonio.dumps(report, indent=1))
        (HERE / "results" / f"{preset}.md").write_text(markdown_table(preset, report))
        print(f"{preset}: FSC 0.5 / FSC 0.143 (A), old -> new; band FSC, wedge band FSC")
        for name, c in changes.items():
            m = report["methods"][name]["metrics"]
            (o5, n5), (o143, n143) = c["fsc05_resolution_A"], c["fsc0143_resolution_A"]
            print(f"  {name:<16} {o5:9.1f} -> {n5:7.1f}   {o143:9.1f} -> {n143:7.1f}   "
                  f"{m['band_fsc']:.3f}  {m['wedge_band_fsc']:.3f}")
        print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
