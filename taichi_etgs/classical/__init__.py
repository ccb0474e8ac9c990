"""The classical reconstructions: the voxel projector and its transpose
(:mod:`.projector`), weighted back-projection (:mod:`.wbp`) and SIRT (:mod:`.sirt`).

numpy in, numpy out; the Taichi kernels are in :mod:`taichi_etgs.kernels`. The geometry
is that of docs/conventions.md ("Geometry").
"""
