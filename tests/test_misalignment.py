"""Residual misalignment in the simulator, its sign convention against IMOD's .xf, and
the .xf/.tlt writers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.io import read_tilt_angles, read_xf
from taichi_etgs.io.angles import write_tilt_angles
from taichi_etgs.io.transforms import (
    apply_xf,
    apply_xf_image,
    compose_xf,
    invert_xf,
    rotation_xf,
    write_xf,
    xf_rotation_deg,
)
from taichi_etgs.simulation.misalignment import Misalignment, draw_misalignment, misalign_views
from taichi_etgs.simulation.simulate import (
    SimulationConfig,
    simulate_tilt_series,
    write_simulation,
)

SMALL = {"shape_zyx": (16, 40, 40), "tilt_min_deg": -30, "tilt_max_deg": 30,
         "tilt_step_deg": 15, "n_particles": 3, "n_vesicles": 0, "n_filaments": 1, "seed": 3}


def _spot(shape_yx, x0, y0, sigma=1.5):
    """A point phantom: a Gaussian spot centred on pixel coordinates (x0, y0)."""
    y, x = np.mgrid[0:shape_yx[0], 0:shape_yx[1]]
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _peak(image):
    """Sub-pixel (x, y) of the spot: the centroid within 8 px of the brightest pixel, above
    the background (the fill of pixels from outside the view)."""
    iy, ix = np.unravel_index(np.argmax(image), image.shape)
    y, x = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    near = (np.abs(x - ix) <= 8) & (np.abs(y - iy) <= 8)
    w = np.where(near, image - np.median(image), 0.0).astype(np.float64)
    return np.array([(w * x).sum() / w.sum(), (w * y).sum() / w.sum()])


# -- the convention, on a point phantom --


def test_a_shift_moves_the_point_by_its_amount_and_the_xf_puts_it_back():
    ny, nx = 40, 48
    p = np.array([20.0, 17.0])  # (x, y), off the centre (24, 20)
    perfect = _spot((ny, nx), *p)
    bad = Misalignment(np.array([[1.0, 0.0], [0.0, 2.0], [-1.5, 0.75]]), 0.0, np.zeros(3))
    moved = misalign_views(np.stack([perfect] * 3), bad)
    # +1 px in X: the point one column further right; +2 in Y: two rows further down
    for k, shift in enumerate(bad.shifts_xy_px):
        assert _peak(moved[k]) == pytest.approx(p + shift, abs=0.02)
    # The .xf a refinement writes: DX = -shift_x, DY = -shift_y for a pure shift.
    xf = bad.correcting_xf()
    assert xf[:, :, :2] == pytest.approx(np.broadcast_to(np.eye(2), (3, 2, 2)))
    assert xf[:, :, 2] == pytest.approx(-bad.shifts_xy_px)
    back = apply_xf(moved, xf)
    for k in range(3):
        assert _peak(back[k]) == pytest.approx(p, abs=0.03)


def test_an_axis_error_turns_counter_clockwise_about_imods_centre_and_the_xf_undoes_it():
    ny, nx = 48, 48
    c = np.array([nx / 2, ny / 2])
    p = np.array([34.0, 24.0])  # 10 px right of the centre
    eps = 5.0
    bad = Misalignment(np.array([[0.5, -0.25]]), eps, np.zeros(1))
    moved = misalign_views(_spot((ny, nx), *p)[None], bad)[0]
    a = np.deg2rad(eps)
    expected = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ (p - c) + c \
        + bad.shifts_xy_px[0]
    # From +x towards +y: a point right of the centre moves to a higher row.
    assert expected[1] > p[1]
    assert _peak(moved) == pytest.approx(expected, abs=0.03)
    xf = bad.correcting_xf()
    assert xf_rotation_deg(xf) == pytest.approx([-eps])
    assert _peak(apply_xf_image(moved, xf[0])) == pytest.approx(p, abs=0.05)


def test_shifts_on_the_fine_detector_are_in_output_pixels():
    """The simulator moves views on its fine grid: a point of the fine grid, binned, moves
    by the shift in output pixels and turns about the output's IMOD centre."""
    f, ny, nx = 2, 24, 28
    p = np.array([9.0, 14.0])  # output pixels (x, y)
    fine_p = f * (p + 0.5) - 0.5
    fine = _spot((ny * f, nx * f), *fine_p, sigma=3.0)
    bad = Misalignment(np.array([[1.25, -0.5]]), 3.0, np.zeros(1))
    moved = misalign_views(fine[None], bad, oversampling=f)[0]
    binned = moved.reshape(ny, f, nx, f).mean(axis=(1, 3))
    c = np.array([nx / 2, ny / 2])
    expected = rotation_xf(3.0)[:, :2] @ (p - c) + c + bad.shifts_xy_px[0]
    assert _peak(binned) == pytest.approx(expected, abs=0.05)


# -- the simulator --


def test_the_streams_of_existing_simulations_are_unchanged():
    # The misalignment draws from a third child of the seed; the first two are the same
    # whether two or three are spawned.
    two = np.random.SeedSequence(5).spawn(2)
    three = np.random.SeedSequence(5).spawn(3)
    for a, b in zip(two, three):
        assert (a.generate_state(4) == b.generate_state(4)).all()
    base = simulate_tilt_series(SimulationConfig(**SMALL))
    zeros = simulate_tilt_series(SimulationConfig(**SMALL, shift_sd_px=0.0, axis_error_deg=0.0,
                                                  tilt_offset_sd_deg=0.0))
    assert np.array_equal(base.tilts, zeros.tilts)
    truth = base.info["misalignment"]
    assert truth["axis_error_deg"] == 0 and not np.any(truth["shifts_xy_px"])
    # Misaligned: the same specimen and the same noise draws.
    bad = simulate_tilt_series(SimulationConfig(**SMALL, shift_sd_px=1.5, axis_error_deg=1.0))
    assert np.array_equal(base.ground_truth, bad.ground_truth)
    clean = simulate_tilt_series(SimulationConfig(**SMALL, noise="none"))
    clean_bad = simulate_tilt_series(SimulationConfig(**SMALL, noise="none", shift_sd_px=1.5,
                                                      axis_error_deg=1.0))

    def unit_noise(noisy, noiseless):
        sigma = np.asarray(noisy.info["noise"]["sigma_per_view"])[:, None, None]
        return (noisy.tilts - noiseless.tilts) / sigma

    assert unit_noise(bad, clean_bad) == pytest.approx(unit_noise(base, clean), abs=1e-3)
    # ... at the same noise level: the SNR is the aligned specimen's, whatever a shift
    # brings into a view.
    assert bad.info["noise"]["sigma_per_view"] == pytest.approx(
        base.info["noise"]["sigma_per_view"], rel=1e-6)


def test_misaligned_views_carry_the_recorded_errors(tmp_path):
    cfg = SimulationConfig(**SMALL, noise="none", shift_sd_px=1.5, axis_error_deg=1.0)
    aligned = simulate_tilt_series(SimulationConfig(**SMALL, noise="none"))
    bad = simulate_tilt_series(cfg)
    truth = bad.info["misalignment"]
    shifts = np.asarray(truth["shifts_xy_px"])
    assert shifts.shape == (5, 2) and 0.3 < shifts.std() < 4
    assert truth["axis_error_deg"] == 1.0
    # Same seed, same errors; another seed, others.
    again = draw_misalignment(5, np.random.default_rng(np.random.SeedSequence(3).spawn(3)[2]),
                              shift_sd_px=1.5)
    assert again.shifts_xy_px == pytest.approx(shifts)
    rows = np.asarray(truth["correcting_xf"])  # A11 A12 A21 A22 DX DY
    xf = np.stack([rows[:, [0, 1, 4]], rows[:, [2, 3, 5]]], axis=1)
    # The recorded .xf brings the views back onto the aligned ones (inside the edges,
    # which repeat the border).
    back = apply_xf(bad.tilts, xf)
    inner = (slice(None), slice(6, -6), slice(6, -6))
    err = np.abs(back[inner] - aligned.tilts[inner]).max()
    before = np.abs(bad.tilts[inner] - aligned.tilts[inner]).max()
    scale = np.abs(aligned.tilts[inner]).max()
    assert err < 0.05 * scale < before
    # Written into simulation.json, with the config's settings.
    paths = write_simulation(bad, tmp_path / "sim")
    doc = json.loads(paths["simulation.json"].read_text())
    assert doc["config"]["shift_sd_px"] == 1.5 and doc["config"]["axis_error_deg"] == 1.0
    assert np.asarray(doc["derived"]["misalignment"]["shifts_xy_px"]) == pytest.approx(shifts)
    assert read_tilt_angles(paths["tilts.tlt"]) == pytest.approx(bad.tilts_deg)


def test_what_comes_in_past_an_isolated_box_is_vacuum():
    # The views are projected with a margin along X before they are moved: columns that
    # come in from beyond an isolated box show what is there (nothing), not the box's
    # edge repeated (its ice, at the ice's full contrast).
    iso = {**SMALL, "noise": "none", "isolated": True, "n_particles": 0}
    aligned = simulate_tilt_series(SimulationConfig(**iso))
    bad = simulate_tilt_series(SimulationConfig(**iso, shift_sd_px=1.5))
    shifts = np.asarray(bad.info["misalignment"]["shifts_xy_px"])
    t = int(np.argmax(np.abs(shifts[:, 0])))
    n = int(np.floor(abs(shifts[t, 0]))) - 1  # columns wholly from beyond the edge
    assert n >= 1  # seed 3 moves view 2 by -2.7 px
    side = slice(-n, None) if shifts[t, 0] < 0 else slice(0, n)
    edge = np.abs(aligned.tilts[t][:, side]).mean()
    # Cubic-spline spill from the last real column: 0.1 % of the ice's level here.
    assert np.abs(bad.tilts[t][:, side]).mean() < 0.02 * edge


def test_tilt_offsets_change_the_views_not_the_recorded_angles():
    base = simulate_tilt_series(SimulationConfig(**SMALL, noise="none"))
    off = simulate_tilt_series(SimulationConfig(**SMALL, noise="none", tilt_offset_sd_deg=0.5))
    offsets = np.asarray(off.info["misalignment"]["tilt_offsets_deg"])
    assert np.array_equal(off.tilts_deg, base.tilts_deg)
    assert 0.05 < np.abs(offsets).max() < 3
    assert not np.allclose(off.tilts, base.tilts)
    assert not np.any(off.info["misalignment"]["shifts_xy_px"])


@pytest.mark.parametrize("bad", [{"shift_sd_px": -1}, {"axis_error_deg": 50},
                                 {"tilt_offset_sd_deg": float("nan")}])
def test_impossible_misalignment_settings_are_refused(bad):
    with pytest.raises(InputError):
        SimulationConfig(**bad)


def test_simulate_command_options(tmp_path, capsys):
    from taichi_etgs.cli.app import main

    out = tmp_path / "sim"
    code = main(["simulate", "-o", str(out), "--shape", "8,24,24", "--tilt-range", "-30:30:30",
                 "--particles", "1", "--vesicles", "0", "--filaments", "0", "--noise", "none",
                 "--shift-sd", "1.5", "--axis-error", "-1", "--tilt-offset-sd", "0.2",
                 "--arch", "cpu"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "simulation.json").read_text())
    assert doc["config"]["axis_error_deg"] == -1.0
    assert doc["config"]["tilt_offset_sd_deg"] == 0.2
    assert len(doc["derived"]["misalignment"]["shifts_xy_px"]) == 3
    code = main(["simulate", "-o", str(tmp_path / "x"), "--shift-sd", "-1"])
    assert code == 2


# -- the writers --


def test_xf_round_trip_and_imod_layout(tmp_path):
    rng = np.random.default_rng(0)
    xf = compose_xf(np.stack([rotation_xf(a) for a in rng.uniform(-95, 95, 6)]),
                    np.stack([rotation_xf(0.0)] * 6))
    xf[:, :, 2] = rng.uniform(-300, 300, (6, 2))
    xf[0, :, 2] = [123456.789, -0.0004]  # wide values stay separate columns
    path = write_xf(tmp_path / "out.xf", xf)
    back = read_xf(path, n_expected=6)
    assert back[:, :, :2] == pytest.approx(xf[:, :, :2], abs=1e-7)
    assert back[:, :, 2] == pytest.approx(xf[:, :, 2], abs=1e-3)
    first = path.read_text().splitlines()[1].split()
    assert [float(v) for v in first] == pytest.approx(
        [xf[1, 0, 0], xf[1, 0, 1], xf[1, 1, 0], xf[1, 1, 1], xf[1, 0, 2], xf[1, 1, 2]],
        abs=1e-3)
    with pytest.raises(InputError, match="exists"):
        write_xf(path, xf)
    write_xf(path, invert_xf(xf), force=True)
    assert compose_xf(xf, read_xf(path))[:, :, :2] == pytest.approx(
        np.broadcast_to(np.eye(2), (6, 2, 2)), abs=1e-5)


def test_tlt_round_trip(tmp_path):
    angles = np.array([-60.0, -1.23456, 0.0, 2.5, 59.99991])
    path = write_tilt_angles(tmp_path / "out.tlt", angles)
    assert read_tilt_angles(path, n_expected=5) == pytest.approx(angles, abs=1e-4)
    with pytest.raises(InputError, match="exists"):
        write_tilt_angles(path, angles)


def test_the_recorded_xf_given_to_wbp_restores_the_reconstruction(tmp_path):
    """End to end: the truth's correcting_xf, written with write_xf and read back by
    wbp --xf, undoes the misalignment (the sign conventions of the simulator, the writer
    and the loader agree)."""
    from taichi_etgs.cli.app import main
    from taichi_etgs.evaluation.metrics import evaluate
    from taichi_etgs.io import read_volume

    common = ["--shape", "16,48,48", "--tilt-range", "-60:60:6", "--noise", "none",
              "--particles", "4", "--vesicles", "1", "--filaments", "1", "--arch", "cpu"]
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    assert main(["simulate", "-o", str(ok), *common]) == 0
    assert main(["simulate", "-o", str(bad), *common, "--shift-sd", "1.5",
                 "--axis-error", "1"]) == 0
    doc = json.loads((bad / "simulation.json").read_text())
    rows = np.asarray(doc["derived"]["misalignment"]["correcting_xf"])
    xf = write_xf(bad / "true.xf", np.stack([rows[:, [0, 1, 4]], rows[:, [2, 3, 5]]], axis=1))
    truth = read_volume(ok / "ground_truth.mrc")[0]
    scores = {}
    for name, stack, extra in (("aligned", ok, []), ("misaligned", bad, []),
                               ("corrected", bad, ["--xf", str(xf)])):
        out = tmp_path / f"{name}.mrc"
        assert main(["wbp", str(stack / "tilts.mrc"), "--thickness", "16", "-o", str(out),
                     "--arch", "cpu", *extra]) == 0
        m = evaluate(read_volume(out)[0], truth, 10.0, 60)
        scores[name] = (m["correlation"], m["band_fsc"])
    (c_ok, b_ok), (c_bad, b_bad), (c_fix, b_fix) = (scores[k] for k in
                                                    ("aligned", "misaligned", "corrected"))
    # Seen: correlation 0.826 / 0.739 / 0.813, band FSC 0.852 / 0.598 / 0.785 (the rest is
    # the bilinear interpolation of the .xf and the edges).
    assert b_bad < 0.8 * b_ok
    assert b_fix > b_bad + 0.5 * (b_ok - b_bad) and c_fix > max(c_bad, 0.95 * c_ok)
