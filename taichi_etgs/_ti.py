"""Import Taichi without its start-up banner; every module gets ``ti`` from here."""

import os

os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "False")

import taichi as ti

__all__ = ["ti"]
