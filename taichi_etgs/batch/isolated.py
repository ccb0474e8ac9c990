"""A GPU worker's task in a Python process of its own.

Taichi's CUDA runtime belongs to the thread that started it, while a Dask worker runs
tasks, garbage collection and its own shutdown in threads of its own: device memory freed
from another thread aborts the whole worker (``CUDA_ERROR_INVALID_CONTEXT`` in
``cuMemFreeAsync``, seen on an H200 with two series: every series needed a retry and the
worker died again at the end). A GPU task therefore runs in a fresh process whose main
thread alone touches the device, and which ends with the task, so the driver frees all
it held. The price is the process start and Taichi's (its kernels come from Taichi's
on-disk cache after the first task): about two seconds a task.

The call and its result travel as pickles in a private temporary folder; the child dies
with the worker thread that started it (Linux), so a worker killed mid-task leaves no
orphan computing on its GPU.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RunFailure

__all__ = ["run_in_child"]


def run_in_child(function: Callable, *args: Any) -> Any:
    """``function(*args)`` in a new Python process with this one's environment (its
    ``CUDA_VISIBLE_DEVICES`` too); its exception is raised here as it was there.

    Raises
    ------
    RunFailure: the process ended without a result (killed, or Python itself failed).
    """
    with tempfile.TemporaryDirectory(prefix="taichi-etgs-task-") as folder:
        call, result = Path(folder) / "call.pickle", Path(folder) / "result.pickle"
        call.write_bytes(pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL))
        process = subprocess.run([sys.executable, "-m", __name__, str(call), str(result)],
                                 env=dict(os.environ), check=False)
        if not result.is_file():
            raise RunFailure(f"the task's process ended with exit status "
                             f"{process.returncode} and no result")
        try:
            ok, value = pickle.loads(result.read_bytes())
        except Exception as exc:  # e.g. an exception class whose arguments do not pickle
            raise RunFailure(f"the task's result could not be read back ({exc})") from None
    if ok:
        return value
    raise value


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the thread that started it ends."""
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: an orphan finishes its task and ends
        pass


def _main(call: str, result: str) -> None:
    _die_with_parent()
    function, args = pickle.loads(Path(call).read_bytes())
    try:
        outcome = (True, function(*args))
    except Exception as exc:  # raised again in the worker, where it is reported
        outcome = (False, exc)
    try:
        payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an exception that cannot travel: its text can
        payload = pickle.dumps((False, RunFailure(f"{type(exc).__name__}: {exc}")))
    partial = Path(result).with_suffix(".partial")
    partial.write_bytes(payload)
    partial.replace(result)  # never a half-written result


if __name__ == "__main__":
    _main(*sys.argv[1:3])
