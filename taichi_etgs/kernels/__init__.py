"""Taichi kernels only: they take plain arrays (numpy or Taichi ndarrays) and import
nothing of the package but the Taichi runtime (``_ti``, ``runtime``); no file I/O, no
model classes. Library modules wrap them: :mod:`taichi_etgs.classical.projector`,
:mod:`taichi_etgs.gaussian.render`, :mod:`taichi_etgs.gaussian.loss` (SSIM),
:mod:`taichi_etgs.gaussian.optim` (Adam), :mod:`taichi_etgs.classical.sirt`. A test
(tests/test_architecture.py) checks the rule.

Internal layouts favour the single-axis geometry: every Y row is an independent 2D
problem, so volumes are held as (ny, nz, nx) and views as (ny, n_tilts, nu) while kernels
run, keeping one row's slice and sinogram contiguous in cache.
"""
