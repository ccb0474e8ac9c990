"""Two runs of bench/sweep.py side by side: what a change to the Gaussian method did at
every point (band and wedge band FSC of the Gaussians, their ratio to the best classical
method, the half-map estimate where both runs have halves).

    python bench/compare_sweeps.py BEFORE.json AFTER.json --title "..." -o OUT.md
    python bench/compare_sweeps.py <(git show HEAD~3:bench/results/sweep.json) \\
        bench/results/sweep.json -o bench/results/data-term.md

Prints the table too. Points present in only one run are listed, not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import summarise


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


def _half_estimate(entry: dict) -> float | None:
    half = entry.get("halves") or {}
    return (half.get("full_map_estimate") or {}).get("band_fsc")


def rows(before: dict, after: dict) -> list[dict]:
    out = []
    for point, new in after["points"].items():
        old = before["points"].get(point)
        if old is None:
            continue
        s_old, s_new = summarise(old), summarise(new)
        out.append({
            "point": point,
            "band": (s_old["band_fsc"]["gaussians"], s_new["band_fsc"]["gaussians"]),
            "ratio": (s_old["band_fsc"]["ratio"], s_new["band_fsc"]["ratio"]),
            "wedge": (s_old["wedge_band_fsc"]["gaussians"],
                      s_new["wedge_band_fsc"]["gaussians"]),
            "wedge_ratio": (s_old["wedge_band_fsc"]["ratio"], s_new["wedge_band_fsc"]["ratio"]),
            "half": (_half_estimate(old), _half_estimate(new)),
            "best_iteration": (new.get("gaussians") or {}).get("best_iteration"),
        })
    return out


def markdown(table: list[dict], title: str, note: str) -> str:
    def pair(p, spec=".3f"):
        return f"{_fmt(p[0], spec)} -> {_fmt(p[1], spec)}"

    def change(p):
        return _fmt(p[1] - p[0], "+.3f") if None not in p else "-"

    lines = [f"# {title}", ""] + ([note, ""] if note else []) + [
        "| point | Gaussian band FSC | change | ratio to best classical | Gaussian wedge band "
        "FSC | change | wedge ratio | half-map estimate of the band FSC | best it. (after) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['point']} | {pair(r['band'])} | {change(r['band'])} | "
                     f"{pair(r['ratio'], '.2f')} | {pair(r['wedge'])} | {change(r['wedge'])} | "
                     f"{pair(r['wedge_ratio'], '.2f')} | {pair(r['half'])} | "
                     f"{r['best_iteration'] if r['best_iteration'] is not None else '-'} |")
    up = [r for r in table if None not in r["band"] and r["band"][1] > r["band"][0]]
    w_up = [r for r in table if None not in r["wedge"] and r["wedge"][1] > r["wedge"][0]]
    lines += ["", f"Band FSC higher after at {len(up)} of {len(table)} points, wedge band FSC "
              f"at {len(w_up)}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--title", default="Sweep: before -> after")
    parser.add_argument("--note", default="", help="a paragraph under the title")
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args()
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    text = markdown(rows(before, after), args.title, args.note)
    missing = sorted(set(before["points"]) ^ set(after["points"]))
    if missing:
        text += f"\nIn one run only: {', '.join(missing)}.\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
