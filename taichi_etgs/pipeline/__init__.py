"""The application layer: what a command does, as library calls.

The command line (:mod:`taichi_etgs.cli`), the built-in demo (:mod:`taichi_etgs.demo`),
the benchmarks (``bench/``) and the Python API (``taichi_etgs.reconstruct(...)`` and its
siblings, :mod:`taichi_etgs.api`) all go through these functions, so each gets the same
checks, messages, outputs and provenance.

Modules, by what they hold:

- :mod:`~taichi_etgs.pipeline.session`: where a run reports (results, notes, warnings,
  progress) and what it records (provenance); starting the compute device.
- :mod:`~taichi_etgs.pipeline.progress`: progress bars on a terminal, periodic one-line
  progress in the log (and on stderr when it is not a terminal).
- :mod:`~taichi_etgs.pipeline.inputs`: reading and checking a tilt series
  (:class:`StackSource`), and its views at unit scale for the linear methods.
- :mod:`~taichi_etgs.pipeline.outputs`: :func:`check_writable`, the one output guard.
- :mod:`~taichi_etgs.pipeline.jsonio`: the one JSON encoder.
- :mod:`~taichi_etgs.pipeline.sizes`: tomogram sizes and the memory/disk checks.
- :mod:`~taichi_etgs.pipeline.tomograms`: writing a tomogram (MRC origin, polarity,
  sidecar) and what a run returns (:class:`TomogramResult`).
- :mod:`~taichi_etgs.pipeline.classical`: :func:`run_wbp`, :func:`run_sirt`.
- :mod:`~taichi_etgs.pipeline.gaussian`: :func:`run_reconstruct` (seeding, resume,
  halves).
- :mod:`~taichi_etgs.pipeline.resume`: what a state knows of its run, and the decisions
  of a resume.
- :mod:`~taichi_etgs.pipeline.checkpoint`: the fitting loop with periodic saves and
  Ctrl-C/SIGTERM handling.
- :mod:`~taichi_etgs.pipeline.models`: fitted models: project, voxelize, gaussianize,
  export.
- :mod:`~taichi_etgs.pipeline.info`: what ``info`` says about a tilt series.
- :mod:`~taichi_etgs.pipeline.simulation`: simulate a data set; evaluate a tomogram.

Importing this package imports nothing (its names load on first use): the low-level
writers use :mod:`~taichi_etgs.pipeline.outputs` and :mod:`~taichi_etgs.pipeline.jsonio`,
which depend on nothing else in the package.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Session": "session",
    "ProgressReport": "progress",
    "StackSource": "inputs",
    "VolumeTarget": "tomograms",
    "TomogramResult": "tomograms",
    "check_writable": "outputs",
    "run_wbp": "classical",
    "run_sirt": "classical",
    "GaussianSettings": "gaussian",
    "ReconstructResult": "gaussian",
    "run_reconstruct": "gaussian",
    "RunRecord": "resume",
    "run_project": "models",
    "run_voxelize": "models",
    "run_gaussianize": "models",
    "run_export": "models",
    "describe_stack": "info",
    "run_simulate": "simulation",
    "run_evaluate": "simulation",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
