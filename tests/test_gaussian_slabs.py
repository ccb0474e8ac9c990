"""The Gaussian reconstruction in slabs along Y (taichi_etgs.pipeline.gaussian_slabs,
``reconstruct --slab-rows``): as good as the whole, no seam, the options it refuses."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.evaluation.metrics import evaluate
from taichi_etgs.pipeline import gaussian_slabs
from taichi_etgs.pipeline.gaussian import GaussianSettings, run_reconstruct
from taichi_etgs.pipeline.inputs import StackSource
from taichi_etgs.pipeline.session import Session
from taichi_etgs.pipeline.tomograms import VolumeTarget
from taichi_etgs.resources import RunSize, estimate_memory_bytes

SHAPE = (16, 48, 48)
PIXEL = 10.0
ROWS = 16
FIT = dict(iterations=120, max_gaussians=3000, save_state=False)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small noisy simulated series written to files, and its ground truth."""
    from taichi_etgs.simulation.simulate import (
        SimulationConfig,
        simulate_tilt_series,
        write_simulation,
    )

    from .conftest import _init

    _init("cpu", "f32")
    sim = simulate_tilt_series(SimulationConfig(
        shape_zyx=SHAPE, pixel_size_A=PIXEL, tilt_min_deg=-60, tilt_max_deg=60,
        tilt_step_deg=4, n_particles=6, n_vesicles=0, n_filaments=1, noise="gaussian",
        snr=2.0, seed=3))
    paths = write_simulation(sim, tmp_path_factory.mktemp("gslabs") / "sim")
    return paths["tilts.mrc"], sim.ground_truth


def _run(stack, output, slab_rows, **settings):
    return run_reconstruct(StackSource(str(stack)), VolumeTarget(SHAPE[0], output=str(output)),
                           GaussianSettings(**FIT, slab_rows=slab_rows, **settings),
                           session=Session.for_python("reconstruct", {}))


@pytest.fixture(scope="module")
def pair(series, tmp_path_factory):
    """The tomogram fitted whole and in slabs of ROWS rows, and the slabbed run's result."""
    stack, _ = series
    folder = tmp_path_factory.mktemp("pair")
    # Slabs never refine the alignment, so neither does the whole they are compared with
    # (by default it would: here the refinement moves the views by 0.07 px rms).
    _run(stack, folder / "whole.mrc", None, refine_alignment=False)
    result = _run(stack, folder / "slabs.mrc", ROWS)
    return mrcfile.read(folder / "whole.mrc"), mrcfile.read(folder / "slabs.mrc"), result, \
        folder


def _row_steps(volume: np.ndarray) -> np.ndarray:
    """Mean absolute difference between each row and the one before. [ny - 1]"""
    return np.abs(np.diff(volume.astype(np.float64), axis=1)).mean(axis=(0, 2))


def test_slabbed_gaussians_score_as_the_whole_without_seams(series, pair):
    _, truth = series
    whole, slabbed, result, folder = pair
    assert slabbed.shape == whole.shape == SHAPE
    scores = [evaluate(v, truth, PIXEL)["band_fsc"] for v in (whole, slabbed)]
    # Issue 11 asks for the slabbed band FSC within 0.01 of the whole's; measured here
    # 0.829 whole, 0.854 slabbed (the overlap rows are fitted twice). Two fits of a noisy
    # 120-step run differ by about 0.01 between seeds, hence 0.02 below as the bound.
    assert scores[1] >= scores[0] - 0.02
    # No seam: the rows on either side of a slab border (and of the edges of the bands
    # blended around it) differ no more than neighbouring rows do elsewhere. Factor 1.5:
    # the largest step between rows away from the borders varies by about that across
    # a 48-row tomogram of a few particles.
    steps = _row_steps(slabbed)
    overlap = gaussian_slabs.GAUSSIAN_OVERLAP_ROWS
    seams = sorted({b + d - 1 for b in range(ROWS, SHAPE[1], ROWS)
                    for d in (-overlap, 0, overlap) if 0 < b + d < SHAPE[1]})
    elsewhere = np.delete(steps, seams)
    assert steps[seams].max() <= 1.5 * elsewhere.max()
    assert steps[seams].mean() <= 1.5 * elsewhere.mean()
    # ... nor more than the whole's rows differ at the same places (factor 1.25: the two
    # fits differ by about 5 % in any row step here).
    assert np.all(steps[seams] <= 1.25 * _row_steps(whole)[seams])
    # The sidecar records each slab's validation; no state file is written.
    side = json.loads((folder / "slabs.mrc.json").read_text())["result"]
    assert side["slab_rows"] == ROWS and side["state"] is None
    reports = side["validation"]["slabs"]
    assert [r["rows"] for r in reports] == [[0, 24], [8, 40], [24, 48]]
    assert all(r["validation"]["best_iteration"] >= 0 and r["validation"]["heldout_views"]
               for r in reports)
    assert result.volume is None and result.validation["slabs"] == reports
    assert not list(folder.glob("*.state.h5")) and not list(folder.glob(".taichi-etgs*"))


def test_one_slab_of_every_row_is_the_whole_run(series, pair):
    """Each slab keeps the run's seed: a slab holding every row is the unslabbed fit."""
    stack, _ = series
    whole, _, _, folder = pair
    _run(stack, folder / "one.mrc", 1000)
    one = mrcfile.read(folder / "one.mrc")
    np.testing.assert_allclose(one, whole, atol=1e-5 * float(np.std(whole)))


@pytest.mark.parametrize("option, settings", [
    ("--halves", {"halves": True}),
    ("--resume", {"resume": "run.state.h5"}),
    ("--refine-alignment", {"refine_alignment": True}),
    ("--init FILE", {"init": "seed.mrc"}),
    ("--voxel-size", {"voxel_size": 20.0}),
])
def test_options_slabs_do_not_support_are_refused(series, tmp_path, option, settings):
    stack, _ = series
    (tmp_path / "seed.mrc").write_bytes(b"")
    with pytest.raises(InputError, match=f"--slab-rows cannot be combined with {option}"):
        _run(stack, tmp_path / "out.mrc", 8, **settings)
    assert not (tmp_path / "out.mrc").exists()


def test_reconstruct_slab_rows_on_the_command_line(series, tmp_path, capsys):
    stack, _ = series
    out = tmp_path / "rec.mrc"
    base = ["reconstruct", str(stack), "--thickness", "16", "--iterations", "20",
            "--max-gaussians", "800", "-o", str(out), "--arch", "cpu"]
    code = main([*base, "--slab-rows", "24", "--halves"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --slab-rows cannot be combined with "
                                        "--halves") and err.count("\n") == 1
    assert main([*base, "--slab-rows", "0"]) == 2
    assert main([*base, "--slab-rows", "24"]) == 0
    assert mrcfile.read(out).shape == SHAPE
    side = json.loads((tmp_path / "rec.mrc.json").read_text())["result"]
    assert len(side["validation"]["slabs"]) == 2 and not (tmp_path / "rec.state.h5").exists()
    # The default alignment refinement (auto) needs whole views: in slabs it is left off
    # without an error, and the sidecar says so.
    assert side["alignment"]["mode"] == "auto" and side["alignment"]["refined"] is False
    assert "slabs" in side["alignment"]["why"]


def test_the_reconstruct_estimate_falls_with_the_slab_size():
    big = dict(method="reconstruct", n_tilts=61, ny=1024, nx=1024, thickness=256,
               width=1024, max_gaussians=600_000)
    whole = estimate_memory_bytes(RunSize(**big)).total_bytes
    parts = [estimate_memory_bytes(RunSize(**big, slab_rows=r)).total_bytes
             for r in (512, 128, 32)]
    assert whole > parts[0] > parts[1] > parts[2]
