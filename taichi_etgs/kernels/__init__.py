"""Taichi kernels only: no file I/O, no CLI. Library modules wrap them.

Internal layouts favour the single-axis geometry: every Y row is an independent 2D
problem, so volumes are held as (ny, nz, nx) and views as (ny, n_tilts, nu) while kernels
run, keeping one row's slice and sinogram contiguous in cache.
"""
