"""The package is import-light and Taichi is initialised in one place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taichi_etgs import runtime
from taichi_etgs.errors import InputError


def test_importing_the_package_and_cli_loads_no_taichi():
    code = ("import sys, taichi_etgs, taichi_etgs.cli, taichi_etgs.classical.projector, "
            "taichi_etgs.classical.wbp, taichi_etgs.classical.sirt, taichi_etgs.io; "
            "print('taichi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_init_rejects_unknown_settings():
    with pytest.raises(InputError, match="unknown arch"):
        runtime.init("tpu")
    with pytest.raises(InputError, match="precision"):
        runtime.init("cpu", precision="f16")


def test_cuda_request_without_a_gpu_is_a_clear_error(taichi_cpu):
    if runtime._cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no usable CUDA"):
        runtime.init("cuda")
    assert runtime.current().arch == "cpu"  # the running configuration is untouched


def test_host_ffts_use_the_threads_given_else_every_core(monkeypatch):
    monkeypatch.setattr(runtime, "_current", None)
    assert runtime.fft_workers() == -1  # scipy.fft: every core
    monkeypatch.setattr(runtime, "_current", runtime.RuntimeConfig("cpu", 3, "f32"))
    assert runtime.fft_workers() == 3  # --threads 3
    monkeypatch.setattr(runtime, "_current", runtime.RuntimeConfig("cuda", None, "f32"))
    assert runtime.fft_workers() == -1
