"""Helpers shared by the benchmarks: timing medians, peak memory, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's resident memory (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """High-water mark of resident memory since the last reset, MiB (Linux; else nan)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def median_time(fn: Callable[[], object], repeats: int = 5, sync: Callable[[], None] | None = None
                ) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up call."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def volume_bytes(path) -> bytes:
    """A tomogram's voxels as bytes (for bit-for-bit comparisons)."""
    import mrcfile

    with mrcfile.open(path, permissive=True) as f:
        return f.data.tobytes()

