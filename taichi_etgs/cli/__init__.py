"""The ``taichi-etgs`` command line: parse options, call the pipeline, report.

One module per command group, each thin (the work is in :mod:`taichi_etgs.pipeline`):

- :mod:`~taichi_etgs.cli.app`: the group, logging, the session every command gets,
  ``main`` and its exit codes;
- :mod:`~taichi_etgs.cli.options`: options several commands share, option-text parsers;
- :mod:`~taichi_etgs.cli.info`: ``info``, ``demo``;
- :mod:`~taichi_etgs.cli.classical`: ``wbp``, ``sirt``;
- :mod:`~taichi_etgs.cli.gaussian`: ``reconstruct``;
- :mod:`~taichi_etgs.cli.batch`: ``batch`` (many series on Dask);
- :mod:`~taichi_etgs.cli.models`: ``project``, ``voxelize``, ``gaussianize``, ``export``;
- :mod:`~taichi_etgs.cli.simulation`: ``simulate``, ``evaluate``.

Heavy modules (Taichi, the kernels) are imported when a command runs, so that ``--help``
is fast; Taichi starts only after a command's cheap checks (outputs, inputs, sizes).
"""

from __future__ import annotations

from . import batch, classical, gaussian, info, models, simulation  # noqa: F401  (registers commands)
from .app import cli, main

__all__ = ["cli", "main"]
