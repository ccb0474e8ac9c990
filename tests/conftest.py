"""Shared fixtures: Taichi on the CPU (and CUDA when present), float32 unless asked."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Tests share two cores with whatever else runs; keep Taichi's thread pool small.
os.environ.setdefault("TAICHI_ETGS_TEST_THREADS", "2")


def _init(arch: str = "cpu", precision: str = "f32") -> None:
    from taichi_etgs import runtime

    cfg = runtime.current()
    if cfg is None or cfg.arch != arch or cfg.precision != precision:
        runtime.init(arch, threads=int(os.environ["TAICHI_ETGS_TEST_THREADS"]),
                     precision=precision)


@pytest.fixture
def taichi_cpu():
    """Taichi on the CPU in float32 (the default every kernel test uses)."""
    _init("cpu", "f32")
    yield


@pytest.fixture
def taichi_f64():
    """Taichi on the CPU in float64, for finite-difference gradient checks."""
    _init("cpu", "f64")
    yield
    _init("cpu", "f32")


def _cuda_present() -> bool:
    from taichi_etgs.runtime import _cuda_available

    return _cuda_available()


@pytest.fixture(params=["cpu", "cuda"])
def taichi_arch(request):
    """Run a test on the CPU always, and on CUDA when a GPU is present."""
    if request.param == "cuda" and not _cuda_present():
        pytest.skip("no CUDA device on this machine")
    _init(request.param, "f32")
    yield request.param
    _init("cpu", "f32")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
