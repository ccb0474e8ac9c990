"""One tomogram's slabs as Dask tasks (taichi_etgs.batch.slab_tasks; ``--slab-rows`` with
``--workers``/``--scheduler``): the same tomogram as the slabs in one process, a failed
slab fails the run in one line and leaves nothing, and the options without slabs."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from taichi_etgs.cli import main
from taichi_etgs.pipeline import slabs

# The small series of the in-process slab tests (reused, not rebuilt).
from .test_gaussian_slabs import series  # noqa: F401
from .test_slabs import stack_file  # noqa: F401

# One Taichi thread everywhere: the in-process run and each worker then add in the same
# order, so the tomograms can be compared bit for bit.
_CPU = ["--arch", "cpu", "--threads", "1"]


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _here_and_as_tasks(capsys, tmp_path, base: list, slabs: str) -> None:
    """Run ``base`` in this process and on 2 workers: both succeed, the second says so,
    and the tomograms are equal bit for bit."""
    code, err = _cli(capsys, *base, "-o", tmp_path / "here.mrc")
    assert code == 0, err
    code, err = _cli(capsys, *base, "--workers", 2, "-o", tmp_path / "tasks.mrc")
    assert code == 0, err
    assert f"{slabs} as Dask tasks on 2 CPU workers x 1 thread" in err
    with mrcfile.open(tmp_path / "here.mrc") as a, mrcfile.open(tmp_path / "tasks.mrc") as b:
        assert a.data.tobytes() == b.data.tobytes()


@pytest.mark.parametrize("method, options", [("wbp", []), ("sirt", ["--iterations", 4])])
def test_slabs_as_tasks_equal_the_slabs_in_process(stack_file, tmp_path, capsys,  # noqa: F811
                                                   method, options):
    base = [method, stack_file, "--thickness", 16, "--slab-rows", 14, *options, *_CPU]
    _here_and_as_tasks(capsys, tmp_path, base, "3 slabs")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "here.mrc", "here.mrc.json", "tasks.mrc", "tasks.mrc.json"]


def test_gaussian_slabs_as_tasks_equal_the_slabs_in_process(series, tmp_path,  # noqa: F811
                                                            capsys):
    stack, _ = series
    base = ["reconstruct", stack, "--thickness", 16, "--iterations", 10, "--max-gaussians",
            400, "--slab-rows", 24, *_CPU]
    # Each slab is a pure function of its rows, settings and seed, fitted on one thread:
    # the same numbers in a worker as here.
    _here_and_as_tasks(capsys, tmp_path, base, "2 slabs")


def test_a_failed_slab_task_fails_the_run_in_one_line(stack_file, tmp_path, capsys,  # noqa: F811
                                                      monkeypatch):
    from distributed import LocalCluster

    def failing(views, tilts, settings, progress=None):
        if views.shape[1] == 5:  # the last slab (rows 35-39 of 40, slabs of 7)
            raise RuntimeError("no slab for you")
        # The others without Taichi, which compiles kernels on the main thread only.
        return slabs.RowsResult(np.zeros((16, views.shape[1], 48), np.float32))

    monkeypatch.setattr(slabs, "reconstruct_rows", failing)
    folder = tmp_path / "out"
    folder.mkdir()
    # An existing cluster (--scheduler) with one worker thread in this process: cheap, and
    # the patched function is the one it runs; the slabs before the failed one are
    # stitched and written (to the temporary file) first.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        code, err = _cli(capsys, "wbp", stack_file, "--thickness", 16, "--slab-rows", 7,
                         *_CPU, "--scheduler", cluster.scheduler_address,
                         "-o", folder / "t.mrc")
    assert code == 1
    assert err.splitlines()[-1] == ("error: slab 6 failed: the task failed (RuntimeError: "
                                    "no slab for you)")
    assert list(folder.iterdir()) == []  # no tomogram, no temporary file, no views


def test_workers_without_slabs_run_whole_with_a_warning(stack_file, tmp_path,  # noqa: F811
                                                        capsys):
    code, err = _cli(capsys, "wbp", stack_file, "--thickness", 16, *_CPU, "--workers", 2,
                     "-o", tmp_path / "t.mrc")
    assert code == 0, err
    assert "this run is not in slabs: it runs whole, in this process" in " ".join(err.split())
    assert "Dask tasks" not in err and (tmp_path / "t.mrc").exists()
