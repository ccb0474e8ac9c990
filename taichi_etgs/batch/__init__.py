"""Many tilt series in one run, on Dask distributed (``taichi-etgs batch``).

One Dask task per tilt series, each through the same pipeline function as the single
command (:func:`~taichi_etgs.pipeline.classical.run_wbp`, ``run_sirt``,
:func:`~taichi_etgs.pipeline.gaussian.run_reconstruct`), on an embedded
``LocalCluster`` sized to the machine or on an existing scheduler.

Modules, by what they hold:

- :mod:`~taichi_etgs.batch.discover`: the series in folders, globs and tables (CSV, STAR).
- :mod:`~taichi_etgs.batch.tasks`: the settings, whether an output is up to date, and one
  series' run inside a worker (written in a work folder, moved to its final name at the end).
- :mod:`~taichi_etgs.batch.cluster`: the embedded cluster's size and the client.
- :mod:`~taichi_etgs.batch.runner`: :func:`run_batch`: skip, submit, progress, retries.
- :mod:`~taichi_etgs.batch.summary`: the outcomes and the summary table (CSV, JSON).

Importing this package imports nothing (names load on first use), Dask included.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Series": "discover",
    "find_series": "discover",
    "read_table": "discover",
    "BatchSettings": "tasks",
    "check_done": "tasks",
    "ClusterPlan": "cluster",
    "plan_cluster": "cluster",
    "BatchProgress": "runner",
    "BatchResult": "runner",
    "run_batch": "runner",
    "SeriesOutcome": "summary",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
