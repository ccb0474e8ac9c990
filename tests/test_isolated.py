"""GPU workers' tasks in a process of their own (taichi_etgs.batch.isolated)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from taichi_etgs.batch.isolated import run_in_child
from taichi_etgs.errors import InputError, RunFailure


def _pid_and_sum(values):
    return os.getpid(), float(np.sum(values))


def _refuse(path):
    raise InputError("expected 3 columns, found 2", path, line=4)


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_call_runs_in_another_process_and_returns_its_value():
    pid, total = run_in_child(_pid_and_sum, np.arange(5.0))
    assert pid != os.getpid() and total == 10.0


def test_the_child_s_error_is_raised_here_with_its_message():
    with pytest.raises(InputError, match=r"^defocus.txt, line 4: expected 3 columns"):
        run_in_child(_refuse, "defocus.txt")


def test_a_killed_child_is_a_run_failure():
    with pytest.raises(RunFailure, match="exit status -9 and no result"):
        run_in_child(_die)


def test_a_gpu_task_runs_isolated_with_the_same_result(tmp_path, taichi_cpu, monkeypatch):
    # A task for a GPU worker (gpus given) runs in a child process; here on the CPU,
    # which must give the tomogram of an ordinary task bit for bit.
    from taichi_etgs.batch import BatchSettings, find_series
    from taichi_etgs.batch.tasks import SeriesTask, run_series
    from tests.test_batch import _write_series

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    _write_series(folder, "ts0", 1)
    (series,) = find_series([folder / "ts0.mrc"])
    settings = BatchSettings("wbp", thickness=16, arch="cpu")
    outcomes = {}
    for gpus in ((), ("0",)):
        outdir = tmp_path / f"out{len(gpus)}"
        outdir.mkdir()
        outcomes[gpus] = run_series(SeriesTask(series, settings, outdir, threads=1,
                                               gpus=gpus))
        assert outcomes[gpus].status == "done", outcomes[gpus].message
    with mrcfile.open(Path(outcomes[()].output)) as a, \
            mrcfile.open(Path(outcomes[("0",)].output)) as b:
        assert a.data.tobytes() == b.data.tobytes()
