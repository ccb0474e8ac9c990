"""What became of each series of a batch: the outcomes, the table printed at the end, and
the same as ``batch_summary.csv`` and ``batch_summary.json`` in the output folder."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["STATUSES", "SUMMARY_NAME", "SeriesOutcome", "counts", "format_table",
           "write_summary"]

#: done: reconstructed now; skipped: its output was up to date; failed: see its message;
#: interrupted: the batch stopped (Ctrl-C) before it finished.
STATUSES = ("done", "skipped", "failed", "interrupted")
SUMMARY_NAME = "batch_summary"
_CSV_COLUMNS = ("series", "status", "seconds", "attempts", "output", "message")


@dataclass
class SeriesOutcome:
    """One series' fate.

    name: the series. status: one of :data:`STATUSES`. stack: its stack file.
    output: the tomogram (done or skipped). seconds: the run's wall time (0 if skipped).
    attempts: how many workers ran it (more than 1: a worker died and it was retried;
        0: not run). message: why it failed or was skipped, one line.
    worker: the Dask worker that ran it. warnings, notes: what its run said.
    """

    name: str
    status: str
    stack: str = ""
    output: str | None = None
    seconds: float = 0.0
    attempts: int = 1
    message: str = ""
    worker: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def counts(outcomes: Sequence[SeriesOutcome]) -> dict[str, int]:
    """How many series ended in each status."""
    return {status: sum(o.status == status for o in outcomes) for status in STATUSES}


def _row(o: SeriesOutcome) -> dict:
    return {"series": o.name, "status": o.status, "seconds": f"{o.seconds:.1f}",
            "attempts": o.attempts, "output": o.output or "", "message": o.message}


def format_table(outcomes: Sequence[SeriesOutcome]) -> str:
    """The summary as aligned text columns (series, status, time, attempts, output or
    message)."""
    rows = [("series", "status", "time", "tries", "output / message")]
    for o in outcomes:
        rows.append((o.name, o.status, f"{o.seconds:.1f} s", str(o.attempts),
                     o.message if o.status == "failed" else (o.output or o.message)))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                     for r in rows)


def write_summary(outcomes: Sequence[SeriesOutcome], outdir: Path, record: dict
                  ) -> tuple[Path, Path]:
    """Write ``batch_summary.csv`` (one row per series) and ``batch_summary.json`` (the
    batch's ``record``, the counts and every outcome) in ``outdir``, atomically."""
    from .._atomic import write_text_atomic
    from ..pipeline.jsonio import dumps

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_row(o) for o in outcomes)
    csv_path = outdir / f"{SUMMARY_NAME}.csv"
    json_path = outdir / f"{SUMMARY_NAME}.json"
    write_text_atomic(csv_path, text.getvalue())
    document = {"format": "taichi-etgs-batch-summary", "format_version": 1, **record,
                "counts": counts(outcomes), "series": [asdict(o) for o in outcomes]}
    write_text_atomic(json_path, dumps(document, indent=1) + "\n")
    return csv_path, json_path
