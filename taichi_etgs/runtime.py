"""The one place that initialises Taichi.

Library functions that launch kernels call :func:`ensure_initialized`, which starts Taichi
on the CPU with default settings if nothing chose otherwise. The CLI calls :func:`init`
with the user's ``--arch`` and ``--threads`` first.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

__all__ = ["init", "ensure_initialized", "current", "fft_workers", "RuntimeConfig",
           "ARCH_CHOICES"]

ARCH_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RuntimeConfig:
    """What Taichi was started with."""

    arch: str  # "cpu" or "cuda": the backend actually running
    threads: int | None
    precision: str  # "f32" or "f64"


_current: RuntimeConfig | None = None
_starts = 0  # how many times Taichi was started: device arrays die with each start


def _cuda_available() -> bool:
    from ._ti import ti

    # Probing for libcuda logs a warning on every CPU-only machine; it is expected there.
    ti.set_logging_level(ti.ERROR)
    try:
        return bool(ti.lang.misc.is_arch_supported(ti.cuda))
    except Exception:
        return False


def init(arch: str = "auto", threads: int | None = None, precision: str = "f32",
         quiet: bool = True) -> RuntimeConfig:
    """Start (or restart) Taichi.

    Parameters
    ----------
    arch: "auto" (CUDA when a GPU is usable, else CPU), "cpu" or "cuda".
    threads: CPU threads for the CPU backend; None lets Taichi use every core.
    precision: "f32" (default; kernels compute in float32) or "f64" (gradient checks).
    quiet: hide Taichi's start-up banner.

    Raises
    ------
    InputError: ``arch="cuda"`` on a machine without a usable CUDA device.
    """
    global _current, _starts
    from .errors import InputError

    if arch not in ARCH_CHOICES:
        raise InputError(f"unknown arch {arch!r}; expected one of {', '.join(ARCH_CHOICES)}")
    if precision not in ("f32", "f64"):
        raise InputError(f"unknown precision {precision!r}; expected f32 or f64")
    from ._ti import ti

    chosen = arch
    if arch == "auto":
        chosen = "cuda" if _cuda_available() else "cpu"
    elif arch == "cuda" and not _cuda_available():
        raise InputError("--arch cuda was asked for, but no usable CUDA device was found; "
                         "use --arch cpu or --arch auto")
    if _current is not None:
        ti.reset()
    kwargs = {}
    if threads is not None and chosen == "cpu":
        kwargs["cpu_max_num_threads"] = int(threads)
    # ti.init prints "[Taichi] Starting on arch=..." unconditionally.
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        ti.init(arch=ti.cuda if chosen == "cuda" else ti.cpu,
                default_fp=ti.f64 if precision == "f64" else ti.f32,
                offline_cache=True, log_level=ti.WARN if quiet else ti.INFO, **kwargs)
    _current = RuntimeConfig(arch=chosen, threads=threads, precision=precision)
    _starts += 1
    return _current


def ensure_initialized() -> RuntimeConfig:
    """Initialise Taichi on the CPU unless :func:`init` already ran."""
    return _current if _current is not None else init("cpu")


def starts() -> int:
    """How many times Taichi was started in this process: a cache of Taichi arrays made
    under another count holds arrays of a runtime that is gone."""
    return _starts


def current() -> RuntimeConfig | None:
    """The running configuration, or None before initialisation."""
    return _current


def fft_workers() -> int:
    """Threads for ``scipy.fft`` on the host: the CPU threads ``--threads`` gave Taichi,
    else every core (-1). Per-step host FFTs (the CTF in the forward model) run beside
    the kernels, on a GPU run too, where a single thread would leave them the step's
    largest part."""
    config = _current
    return int(config.threads) if config is not None and config.threads else -1
