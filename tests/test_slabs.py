"""Y-slab decomposition (taichi_etgs.pipeline.slabs): slabbed WBP and SIRT equal the whole,
without seams; the plan's edge cases; the automatic choice; nothing left after a failure."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from taichi_etgs.classical.projector import forward_project
from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.io import write_stack
from taichi_etgs.io.scratch import ScratchStack
from taichi_etgs.pipeline import slabs
from taichi_etgs.pipeline.classical import run_sirt, run_wbp
from taichi_etgs.pipeline.ctf import CtfSettings
from taichi_etgs.pipeline.dose import DoseSettings
from taichi_etgs.pipeline.inputs import StackSource
from taichi_etgs.pipeline.session import Session
from taichi_etgs.pipeline.tomograms import VolumeTarget
from taichi_etgs.resources import RunSize, estimate_memory_bytes

SHAPE = (16, 40, 48)
TILTS = np.arange(-60.0, 61.0, 6.0)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    """A dark noisy stack of blobs spread over every row, with a sibling .tlt."""
    from .conftest import _init

    _init("cpu", "f32")
    rng = np.random.default_rng(7)
    volume = np.zeros(SHAPE, np.float32)
    for _ in range(40):
        z, y, x = rng.integers(3, 13), rng.integers(0, SHAPE[1]), rng.integers(6, 42)
        volume[z - 2:z + 2, max(0, y - 3):y + 3, x - 3:x + 3] += rng.uniform(0.5, 2.0)
    views = forward_project(volume, TILTS)
    views += rng.normal(0.0, 0.1, views.shape).astype(np.float32)
    folder = tmp_path_factory.mktemp("slabs")
    write_stack(folder / "ts.mrc", 100.0 - views, 10.0)
    np.savetxt(folder / "ts.tlt", TILTS, fmt="%.2f")
    return folder / "ts.mrc"


def _pair(run, stack_file, tmp_path, rows, **options):
    """The tomogram written whole and in slabs of ``rows`` rows."""
    out = {}
    for name, slab_rows in (("whole", None), ("slabs", rows)):
        path = tmp_path / f"{name}.mrc"
        run(StackSource(str(stack_file)), VolumeTarget(SHAPE[0], output=str(path)),
            slab_rows=slab_rows, session=Session.for_python(run.__name__, {}), **options)
        out[name] = mrcfile.read(path)
    return out["whole"], out["slabs"]


def _step_at_borders(volume: np.ndarray, rows: int) -> np.ndarray:
    """How much the row profile (the mean of each row over Z and X) jumps at each slab
    border."""
    profile = volume.mean(axis=(0, 2), dtype=np.float64)
    borders = np.arange(rows, volume.shape[1], rows)
    return profile[borders] - profile[borders - 1]


@pytest.mark.parametrize("method", ["wbp", "sirt"])
def test_slabbed_reconstructions_equal_the_whole_without_seams(stack_file, tmp_path, method):
    run, options = (run_wbp, {}) if method == "wbp" else (run_sirt, {"iterations": 6})
    whole, slabbed = _pair(run, stack_file, tmp_path, 7, **options)
    assert slabbed.shape == whole.shape == SHAPE
    assert np.corrcoef(whole.ravel(), slabbed.ravel())[0, 1] >= 0.999
    # Rows depend on the same rows only: the same numbers, bit for bit.
    np.testing.assert_array_equal(slabbed, whole)
    # No seam: the row profile steps at the borders as the whole's does.
    spread = float(np.std(whole.mean(axis=(0, 2))))
    np.testing.assert_allclose(_step_at_borders(slabbed, 7), _step_at_borders(whole, 7),
                               atol=1e-6 * spread)
    side = json.loads((tmp_path / "slabs.mrc.json").read_text())["result"]
    assert side["slab_rows"] == 7 and side["shape_zyx"] == list(SHAPE)
    with mrcfile.open(tmp_path / "whole.mrc") as a, mrcfile.open(tmp_path / "slabs.mrc") as b:
        assert b.voxel_size.x == pytest.approx(a.voxel_size.x)
        assert tuple(b.header.origin.tolist()) == tuple(a.header.origin.tolist())
        assert float(b.header.rms) == pytest.approx(float(a.header.rms), rel=1e-4)
        assert float(b.header.dmin) == float(a.header.dmin)
    if method == "sirt":
        whole_side = json.loads((tmp_path / "whole.mrc.json").read_text())["result"]
        assert side["final_residual"] == pytest.approx(whole_side["final_residual"], rel=1e-5)


def test_whole_view_steps_before_the_slabs_phase_flip_and_exposure(stack_file, tmp_path):
    """The phase flip and the exposure filter are 2D: done on whole views before the
    slabs read their rows, so the slabs still equal the whole."""
    whole, slabbed = _pair(run_wbp, stack_file, tmp_path, 9, ctf=CtfSettings(2.0),
                           dose=DoseSettings(dose_per_tilt=3.0))
    np.testing.assert_array_equal(slabbed, whole)


def test_slabs_of_a_series_in_memory_and_of_one_row(stack_file, tmp_path):
    data = mrcfile.read(stack_file)
    source = StackSource.from_arrays(data, TILTS, 10.0)
    whole = run_wbp(source, VolumeTarget(SHAPE[0])).volume
    one_row = run_wbp(source, VolumeTarget(SHAPE[0]), slab_rows=1)
    # No output: the slabs are stitched in memory.
    np.testing.assert_array_equal(one_row.volume, whole)
    assert one_row.info["slab_rows"] == 1


def test_the_plan_cuts_rows_and_checks_its_numbers():
    plan = slabs.plan_slabs(10, 3)
    assert [(s.first, s.end) for s in plan.slabs] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert all((s.weights == 1).all() for s in plan.slabs)
    assert [(s.first, s.end) for s in slabs.plan_slabs(40, 1000).slabs] == [(0, 40)]
    assert len(slabs.plan_slabs(5, 1).slabs) == 5
    for bad in (0, -3, 2.5, True, "x", None):
        with pytest.raises(InputError, match="--slab-rows"):
            slabs.check_rows(bad)
    with pytest.raises(InputError, match="overlap"):
        slabs.plan_slabs(40, 8, overlap=5)


def test_overlapping_slabs_blend_back_to_the_volume():
    """With an overlap (for methods that need one) the weights add up to 1 in every row and
    stitching the slabs of a volume gives the volume back."""
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(4, 30, 5)).astype(np.float32)
    plan = slabs.plan_slabs(30, 8, overlap=2)
    total = np.zeros(30)
    for s in plan.slabs:
        total[s.first:s.end] += s.weights
    np.testing.assert_allclose(total, 1.0)
    assert [(s.first, s.end) for s in plan.slabs] == [(0, 10), (6, 18), (14, 26), (22, 30)]
    out = np.full_like(volume, np.nan)

    def write(first, block):
        out[:, first:first + block.shape[1]] = block

    slabs.stitch(plan, (volume[:, s.first:s.end] for s in plan.slabs), write)
    np.testing.assert_allclose(out, volume, atol=1e-6)


def test_a_bad_slab_size_is_one_error_line_and_exit_2(stack_file, tmp_path, capsys):
    out = tmp_path / "t.mrc"
    code = main(["wbp", str(stack_file), "--thickness", "16", "--slab-rows", "0", "-o",
                 str(out), "--arch", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("error: --slab-rows 0:") and err.count("\n") == 1
    # More rows than the tomogram has: one slab, the whole.
    code = main(["sirt", str(stack_file), "--thickness", "16", "--iterations", "2",
                 "--slab-rows", "1000", "-o", str(out), "--arch", "cpu"])
    assert code == 0 and out.exists()


def test_slabs_are_chosen_when_the_whole_does_not_fit(stack_file, tmp_path, monkeypatch):
    from taichi_etgs import resources

    size = RunSize("sirt", len(TILTS), SHAPE[1], SHAPE[2], SHAPE[0], SHAPE[2])
    whole = estimate_memory_bytes(size).total_bytes
    monkeypatch.delenv(resources.SKIP_ENV, raising=False)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: whole - 1)
    rows = slabs.choose_rows(size, None)
    assert 1 <= rows < SHAPE[1]
    smaller = estimate_memory_bytes(RunSize("sirt", len(TILTS), SHAPE[1], SHAPE[2], SHAPE[0],
                                            SHAPE[2], slab_rows=rows)).total_bytes
    assert smaller <= whole - 1 < estimate_memory_bytes(
        RunSize("sirt", len(TILTS), SHAPE[1], SHAPE[2], SHAPE[0], SHAPE[2],
                slab_rows=rows + 1)).total_bytes
    assert slabs.choose_rows(size, 5) == 5  # asked for: as asked
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: whole)
    assert slabs.choose_rows(size, None) == 0  # the whole fits: no slabs
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2 * 2**20)
    assert slabs.choose_rows(size, None) == 0  # not even a row: the check refuses it


def test_the_memory_estimate_falls_with_the_slab_size():
    big = dict(method="wbp", n_tilts=61, ny=1024, nx=1024, thickness=256, width=1024)
    whole = estimate_memory_bytes(RunSize(**big)).total_bytes
    parts = [estimate_memory_bytes(RunSize(**big, slab_rows=r)).total_bytes
             for r in (512, 128, 32)]
    assert whole > parts[0] > parts[1] > parts[2]


def test_a_failure_leaves_nothing_behind(stack_file, tmp_path, monkeypatch):
    calls = []
    original = slabs.reconstruct_rows

    def failing(views, tilts, settings, progress=None):
        calls.append(views.shape)
        if len(calls) == 3:
            raise InputError("a failure in the third slab")
        return original(views, tilts, settings, progress)

    monkeypatch.setattr(slabs, "reconstruct_rows", failing)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(InputError, match="third slab"):
        run_wbp(StackSource(str(stack_file)),
                VolumeTarget(SHAPE[0], output=str(folder / "t.mrc")), slab_rows=8)
    assert list(folder.iterdir()) == []  # no tomogram, no temporary file, no views


def test_scratch_stack_reads_what_was_written_and_removes_itself(tmp_path):
    data = np.arange(3 * 5 * 4, dtype=np.float32).reshape(3, 5, 4)
    with ScratchStack(data.shape, tmp_path) as stack:
        for t in range(3):
            stack[t] = data[t]
        np.testing.assert_array_equal(stack[1], data[1])
        np.testing.assert_array_equal(stack.rows(1, 4), data[:, 1:4])
        assert [v.sum() for v in stack] == [v.sum() for v in data]
        with pytest.raises(IndexError):
            stack[3]
    assert list(tmp_path.iterdir()) == []
