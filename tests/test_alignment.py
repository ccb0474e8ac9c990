"""Residual alignment refinement (issue 10, item 3): projection matching of the views to a
prediction, inside the Gaussian fit, and ``reconstruct --refine-alignment``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taichi_etgs.alignment import ViewAlignment, match_views
from taichi_etgs.alignment.matching import _gauge, without_gauge
from taichi_etgs.classical.projector import forward_project
from taichi_etgs.gaussian.fit import GaussianReconstruction, ReconstructConfig
from taichi_etgs.preprocess import density_views
from taichi_etgs.simulation.phantom import make_phantom
from taichi_etgs.simulation.simulate import SimulationConfig, simulate_tilt_series

TILTS = np.arange(-60.0, 61.0, 6.0)


@pytest.fixture(scope="module")
def projections():
    return forward_project(make_phantom((16, 64, 64), seed=1), TILTS)


def _rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_a_correction_moves_content_by_its_shift_and_is_an_xf():
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 16, 10] = 1.0
    moved = ViewAlignment(np.array([[3.0, -2.0]])).apply(image)[0]
    assert np.unravel_index(np.argmax(moved), moved.shape) == (14, 13)  # (y - 2, x + 3)
    xf = ViewAlignment(np.array([[3.0, -2.0]]), 90.0).xf()[0]
    assert xf == pytest.approx(np.array([[0.0, -1.0, 3.0], [1.0, 0.0, -2.0]]), abs=1e-12)


def test_shifts_are_recovered_from_a_perfect_prediction(projections):
    rng = np.random.default_rng(0)
    error = rng.normal(0, 1.5, (len(TILTS), 2))
    misaligned = ViewAlignment(error).apply(projections)
    found = match_views(misaligned, projections, TILTS, steps=4, fit_axis=False)
    # The correction undoes the error, up to the motions a specimen translation makes,
    # which no refinement can see; 0.1 px: cubic resampling of a 64-pixel phantom.
    assert _rms(found.shifts_px, without_gauge(-error, TILTS)) < 0.1
    assert _rms(np.zeros_like(error), without_gauge(-error, TILTS)) > 1.0
    # ... and the found shifts hold none of those motions.
    flat = np.concatenate([[0.0], found.shifts_px.ravel()])
    assert np.abs(_gauge(TILTS) @ flat).max() < 1e-9


def test_the_axis_is_recovered_from_a_perfect_prediction(projections):
    misaligned = ViewAlignment(np.zeros((len(TILTS), 2)), 1.0).apply(projections)
    found = match_views(misaligned, projections, TILTS, steps=4)
    assert found.axis_deg == pytest.approx(-1.0, abs=0.05)
    # Why a start's axis was left stays with it while the shifts alone are matched, and
    # goes once the axis is estimated.
    start = ViewAlignment(np.zeros((len(TILTS), 2)), 0.0, "not searched")
    shifts_only = match_views(misaligned, projections, TILTS, start, steps=1, fit_axis=False)
    assert (shifts_only.axis_deg, shifts_only.axis_left) == (0.0, "not searched")
    assert match_views(misaligned, projections, TILTS, start, steps=1).axis_left == ""


def test_the_axis_is_found_against_a_model_that_took_up_part_of_it(projections):
    # A model fitted to views turned by a wrong axis shears the specimen to take up what
    # of the turn it can (x += a y, y += b x); the match fits those deformations besides
    # the axis and still finds the views' turn.
    from scipy import ndimage

    phantom = make_phantom((16, 64, 64), seed=1)
    misaligned = ViewAlignment(np.zeros((len(TILTS), 2)), 1.0).apply(projections)
    turn = np.radians(1.0)
    centre = (np.array(phantom.shape) - 1) / 2
    for a, b in ((-turn, turn), (-1.3 * turn, 0.8 * turn)):
        inverse = np.eye(3)
        inverse[2, 1], inverse[1, 2] = -a, -b  # affine_transform samples at M p
        sheared = ndimage.affine_transform(phantom, inverse, offset=centre - inverse @ centre,
                                           order=3, mode="nearest")
        found = match_views(misaligned, forward_project(sheared, TILTS), TILTS, steps=4)
        # 0.15 degree: the deformations are those of the specimen's mid-plane, and the
        # 16-voxel-thick phantom's Z extent is not modelled (measured 0.08-0.11).
        assert found.axis_deg == pytest.approx(-1.0, abs=0.15)


def test_two_short_fits_give_the_axis_from_the_share_each_keeps():
    from taichi_etgs.gaussian.fit import _axis_from_two_fits

    # Each estimate is a + k (axis - a): at a = 0 and at the probe.
    axis, kept, probe = -1.0, 0.6, -2.0
    first, second = kept * axis, probe + kept * (axis - probe)
    assert _axis_from_two_fits(first, second, probe) == pytest.approx(axis, abs=1e-12)
    # A second estimate that moved with the probe, or away from it, says nothing.
    assert _axis_from_two_fits(first, first + probe, probe) is None
    assert _axis_from_two_fits(first, first - probe, probe) is None


@pytest.mark.parametrize("first, second, probe, expected", [
    (-0.2, -0.3, -0.5, "second"),  # -0.25 degree found: left, the second fit's shifts kept
    (-0.2, -0.6, -0.5, "second"),  # -1.0 found, nearer the probe: applied with its shifts
    (-0.4, -0.286, -0.8, "first"),  # -0.35 found, nearer the views as given: the first's
])
def test_the_short_fit_whose_shifts_are_kept(monkeypatch, first, second, probe, expected):
    from types import SimpleNamespace

    from taichi_etgs.alignment import other_views
    from taichi_etgs.gaussian import background, fit

    n = 5
    tilts = np.linspace(-60, 60, n)
    shifts = {"first": np.full((n, 2), 0.3), "second": np.full((n, 2), -0.2)}
    slab = SimpleNamespace(density=0.0, ends_within=lambda width: True)
    monkeypatch.setattr(background, "fit_slab", lambda *a, **k: (slab, 0.0))
    monkeypatch.setattr(other_views, "match_to_other_views",
                        lambda *a, **k: ViewAlignment(np.ones((n, 2))))
    probes, slabs = [], []

    def short_fit(views, tilts_deg, thickness, config, width, start, find_axis, ice):
        probes.append(start.axis_deg)
        slabs.append(ice)
        if len(probes) == 1:
            return ViewAlignment(shifts["first"]), first, (slab, 0.5)
        return ViewAlignment(shifts["second"], start.axis_deg), second, (slab, 0.5)

    monkeypatch.setattr(fit, "_short_fit", short_fit)
    found = fit.prealign_views(np.zeros((n, 8, 8), np.float32), tilts, 4)
    assert probes == [0.0, probe]  # past the first estimate, at least 0.5 degree
    assert slabs == [None, (slab, 0.5)]  # the first fit finds the ice slab, the second takes it
    np.testing.assert_array_equal(found.shifts_px, shifts[expected])
    kept = 1 - (second - first) / probe
    axis = first / kept
    assert found.axis_deg == (pytest.approx(axis) if abs(axis) >= 0.3 else 0.0)
    assert found.axis_left == ""  # an angle under 0.3 degree is found, not left unknown


@pytest.mark.parametrize("kept, probe, why", [
    (0.0, -0.5, "did not agree"),  # the second estimate moved with the probe: no angle
    (0.3, -3.0, "beyond the 3 degree"),  # -5 degree found, beyond the search
])
def test_the_user_is_told_why_the_axis_is_left(monkeypatch, kept, probe, why):
    from types import SimpleNamespace

    from taichi_etgs.alignment import other_views
    from taichi_etgs.gaussian import background, fit

    n = 5
    first = probe * 0.5  # the probe is twice the first estimate
    second = first + (1 - kept) * probe  # each estimate a + kept (axis - a)
    slab = SimpleNamespace(density=0.0, ends_within=lambda width: True)
    monkeypatch.setattr(background, "fit_slab", lambda *a, **k: (slab, 0.0))
    monkeypatch.setattr(other_views, "match_to_other_views",
                        lambda *a, **k: ViewAlignment(np.ones((n, 2))))
    estimates = iter([first, second])
    monkeypatch.setattr(fit, "_short_fit", lambda *a, **k: (
        ViewAlignment(np.full((n, 2), 0.3)), next(estimates), (slab, 0.5)))
    found = fit.prealign_views(np.zeros((n, 8, 8), np.float32), np.linspace(-60, 60, n), 4)
    assert found.axis_deg == 0.0 and why in found.axis_left


def test_no_turn_for_a_first_estimate_within_the_search_bias(monkeypatch):
    from types import SimpleNamespace

    from taichi_etgs.alignment import other_views
    from taichi_etgs.gaussian import background, fit

    n = 5
    slab = SimpleNamespace(density=0.0, ends_within=lambda width: True)
    monkeypatch.setattr(background, "fit_slab", lambda *a, **k: (slab, 0.0))
    monkeypatch.setattr(other_views, "match_to_other_views",
                        lambda *a, **k: ViewAlignment(np.ones((n, 2))))
    calls = []

    def short_fit(views, tilts_deg, thickness, config, width, start, find_axis, ice):
        calls.append((start.axis_deg, float(start.shifts_px[0, 0]), find_axis, ice))
        shifts = np.full((n, 2), 0.3 * len(calls))
        return ViewAlignment(shifts), -0.123 if find_axis else None, (slab, 0.5)

    monkeypatch.setattr(fit, "_short_fit", short_fit)
    # -0.123: the first estimate on the sweep's isolated views at SNR 1 without axis
    # error, which two fits took to -0.23 degree. The second fit starts from the first
    # one's shifts, without a turn, and finds no axis.
    found = fit.prealign_views(np.zeros((n, 8, 8), np.float32), np.linspace(-60, 60, n), 4)
    assert calls == [(0.0, 1.0, True, None), (0.0, 0.3, False, (slab, 0.5))]
    assert found.axis_deg == 0.0 and np.all(found.shifts_px == 0.6)


def _views_off_axis(shape, isolated: bool, axis_deg: float):
    result = simulate_tilt_series(SimulationConfig(
        shape_zyx=shape, tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=3, n_particles=6,
        n_vesicles=0, n_filaments=1, noise="none", seed=2, isolated=isolated,
        shift_sd_px=1.5, axis_error_deg=axis_deg))
    return density_views(result.tilts, "dark"), result.tilts_deg


def test_the_short_fits_find_the_axis_of_an_isolated_specimen():
    from taichi_etgs.gaussian.fit import prealign_views

    # 96 x 96 views, noise-free, 1.5 px shifts and the axis 1 degree off: the correction
    # turns them back by 1 degree. 0.2 degree: issue 10's bound (measured -1.077).
    views, tilts = _views_off_axis((32, 96, 96), True, 1.0)
    found = prealign_views(views, tilts, 32, ReconstructConfig(max_gaussians=4000))
    assert found.axis_deg == pytest.approx(-1.0, abs=0.2)
    assert found.axis_left == ""


def test_the_axis_is_left_alone_where_the_specimen_runs_past_the_field_of_view():
    from taichi_etgs.gaussian.fit import prealign_views

    # There the estimate is biased (+0.77 degree on such views without axis error), so
    # the views are never turned; their shifts are still refined.
    views, tilts = _views_off_axis((24, 64, 64), False, 1.0)
    found = prealign_views(views, tilts, 24, ReconstructConfig(max_gaussians=2000))
    assert found.axis_deg == 0.0 and np.any(found.shifts_px)
    # ... and the user is told why (pipeline/alignment.py's report).
    assert "runs past the field of view" in found.axis_left


def test_a_refined_run_fits_the_ice_slab_once_for_itself_and_its_short_fits(monkeypatch):
    from taichi_etgs.gaussian import background, fit

    # The slab is fitted to the views as given, which no alignment changes: one fit for
    # the run and every short fit (about 2 s each at 64 x 128 x 128), besides the first
    # stage's own (all views, before any CTF).
    fits, short_fits = [], []
    real_fit, real_short = background.fit_slab, fit._short_fit
    monkeypatch.setattr(background, "fit_slab",
                        lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    monkeypatch.setattr(fit, "_short_fit",
                        lambda *a: short_fits.append(a[-1]) or real_short(*a))
    monkeypatch.setattr(fit, "_AXIS_FIT_ITERATIONS", 4)
    monkeypatch.setattr(fit, "_PREALIGN_EVERY", 2)
    views, tilts = _views_off_axis((32, 96, 96), True, 1.0)
    run = fit.GaussianReconstruction(views, tilts, 32, ReconstructConfig(
        max_gaussians=2000, iterations=2, refine_alignment=True))
    assert short_fits and run.slab.density > 0
    assert len(fits) == 2
    # The run's own copy is in its units; the fit it shared stays in the views'.
    assert run.slab_fit[0].density == pytest.approx(run.slab.density * run.scale)


def test_matching_aligned_views_moves_nothing(projections):
    found = match_views(projections, projections, TILTS, steps=3)
    assert np.abs(found.shifts_px).max() < 0.01 and abs(found.axis_deg) < 0.01


def test_tiny_views_are_matched_on_all_their_pixels(projections):
    # 4 x 6 views (a binned test stack): the borders left unscored must not take them all.
    tiny = projections[:, 30:34, 29:35]
    found = match_views(np.roll(tiny, 1, axis=2), tiny, TILTS, steps=2, fit_axis=False)
    assert np.all(np.isfinite(found.shifts_px))


@pytest.fixture(scope="module")
def misaligned_series():
    common = dict(shape_zyx=(24, 48, 48), tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=4,
                  n_particles=4, n_vesicles=0, n_filaments=1, noise="none", seed=2)
    good = simulate_tilt_series(SimulationConfig(**common))
    bad = simulate_tilt_series(SimulationConfig(**common, shift_sd_px=1.5))
    return good, bad


def _fit(result, refine: bool) -> GaussianReconstruction:
    config = ReconstructConfig(iterations=200, max_gaussians=4000, refine_alignment=refine)
    run = GaussianReconstruction(density_views(result.tilts, "dark"), result.tilts_deg,
                                 result.ground_truth.shape[0], config)
    run.run()
    return run


def test_the_model_carries_a_known_correction_and_the_views_stay_as_given(misaligned_series):
    _, bad = misaligned_series
    views = density_views(bad.tilts, "dark")
    n = len(bad.tilts_deg)
    shifts = np.zeros((n, 2))
    shifts[::3] = [2.0, -1.0]
    shifts[1::3] = [-3.0, 0.0]
    run = GaussianReconstruction(views, bad.tilts_deg, bad.ground_truth.shape[0],
                                 ReconstructConfig(iterations=10, max_gaussians=2000),
                                 alignment=ViewAlignment(shifts))
    # Fitted as given: no resampling, no made-up border pixels.
    assert np.array_equal(run.measured, (views / run.scale).astype(np.float32))
    every = np.arange(n)
    given, corrected = run.predict(every), run.predict(every, as_given=False)
    for t in range(n):
        # The correction moves content by +shift: the views as given hold the corrected
        # prediction moved back, exactly for whole pixels (the rendering is moved, not
        # interpolated; float32 round-off of the sums).
        dx, dy = shifts[t].astype(int)
        inner = corrected[t, 4 + dy:44 + dy, 4 + dx:44 + dx]
        np.testing.assert_allclose(given[t, 4:44, 4:44], inner, rtol=0,
                                   atol=1e-5 * np.abs(corrected).max())
    assert not np.allclose(given[0], corrected[0])
    run.run()
    assert np.isfinite(run.losses).all()


def test_the_fit_refines_residual_shifts_and_leaves_aligned_views_alone(misaligned_series):
    good, bad = misaligned_series
    run = _fit(bad, refine=True)
    truth = np.asarray(bad.info["misalignment"]["shifts_xy_px"])
    target = without_gauge(-truth, bad.tilts_deg)
    # Issue 10 asks for 0.3 px rms; the views start 1.5 px rms off.
    assert _rms(run.alignment.shifts_px, target) < 0.3 < _rms(0 * target, target)
    assert "alignment" in run.validation_report()
    # No drift: on aligned views the refinement finds (almost) nothing to correct.
    still = _fit(good, refine=True)
    assert _rms(still.alignment.shifts_px, 0.0) < 0.1


def test_reconstruct_writes_the_refined_alignment(tmp_path, misaligned_series, capsys):
    from taichi_etgs.cli import main
    from taichi_etgs.io import read_tilt_angles, read_xf
    from taichi_etgs.simulation.simulate import write_simulation

    _, bad = misaligned_series
    paths = write_simulation(bad, tmp_path / "sim")
    out = tmp_path / "rec.mrc"
    args = ["reconstruct", str(paths["tilts.mrc"]), "--angles", str(paths["tilts.tlt"]),
            "--thickness", "24", "--iterations", "20", "--max-gaussians", "2000",
            "--refine-alignment", "-o", str(out), "--arch", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    xf = read_xf(tmp_path / "rec.xf", n_expected=len(bad.tilts_deg))
    assert np.abs(xf[:, :, 2]).max() > 0.1  # the shifts found in the first fit
    assert read_tilt_angles(tmp_path / "rec.tlt") == pytest.approx(bad.tilts_deg, abs=1e-4)
    # Views left out: still one line and one angle per section of the stack (tiltalign's
    # layout), the left-out views' transforms the identity.
    capsys.readouterr()
    assert main([*args, "--exclude-views", "0,5", "--force"]) == 0, capsys.readouterr().err
    xf = read_xf(tmp_path / "rec.xf", n_expected=len(bad.tilts_deg))
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert np.array_equal(xf[0], identity) and np.array_equal(xf[5], identity)
    assert np.abs(xf[1:5, :, 2]).max() > 0.1
    assert read_tilt_angles(tmp_path / "rec.tlt") == pytest.approx(bad.tilts_deg, abs=1e-4)
    # Never over the input's own angle file.
    capsys.readouterr()
    (tmp_path / "sim" / "tilts_rec.tlt").write_text(paths["tilts.tlt"].read_text())
    clash = main([*args[:-4], "-o", str(tmp_path / "sim" / "tilts_rec.mrc"), "--arch", "cpu",
                  "--angles", str(tmp_path / "sim" / "tilts_rec.tlt")])
    assert clash == 2 and "over the input's angle file" in capsys.readouterr().err


def _reconstruct(stack, out, *extra) -> list[str]:
    return ["reconstruct", str(stack), "--thickness", "24", "--iterations", "20",
            "--max-gaussians", "2000", "-o", str(out), "--arch", "cpu", *extra]


def _alignment_record(out) -> dict:
    return json.loads(out.with_name(out.name + ".json").read_text())["result"]["alignment"]


def test_by_default_aligned_views_are_used_as_given(tmp_path, misaligned_series, capsys,
                                                    monkeypatch):
    import mrcfile

    from taichi_etgs.cli import main
    from taichi_etgs.gaussian import fit
    from taichi_etgs.simulation.simulate import write_simulation

    good, _ = misaligned_series
    stack = write_simulation(good, tmp_path / "sim")["tilts.mrc"]

    def refuse(*args, **kwargs):
        raise AssertionError("prealign_views called with --no-refine-alignment")

    # --no-refine-alignment does not even start the refinement.
    monkeypatch.setattr(fit, "prealign_views", refuse)
    off_path = tmp_path / "off.mrc"
    assert main(_reconstruct(stack, off_path, "--no-refine-alignment")) == 0, \
        capsys.readouterr().err
    assert _alignment_record(off_path) == {"mode": "off", "refined": False}
    monkeypatch.undo()
    auto_path = tmp_path / "auto.mrc"
    assert main(_reconstruct(stack, auto_path)) == 0, capsys.readouterr().err
    # Auto on aligned views: the significance gate moves no view, so no correction is
    # written beside the tomogram ...
    assert not auto_path.with_suffix(".xf").exists()
    assert not auto_path.with_suffix(".tlt").exists()
    record = _alignment_record(auto_path)
    assert record["mode"] == "auto" and record["refined"] and not record["moved"]
    assert record["not_written"] == "no view moved" and record["rms_shift_px"] == 0.0
    # ... and the tomogram is the one without refinement: a correction of zero shifts
    # neither resamples the views nor moves the model's projections (what differs is the
    # order of the voxeliser's parallel float32 sums: 4e-7 against a std of 0.18).
    off, auto = mrcfile.read(off_path), mrcfile.read(auto_path)
    np.testing.assert_allclose(auto, off, rtol=0, atol=1e-5 * float(np.std(off)))


def test_by_default_misaligned_views_are_refined_and_written(tmp_path, misaligned_series,
                                                             capsys):
    from taichi_etgs.cli import main
    from taichi_etgs.io import read_tilt_angles, read_xf
    from taichi_etgs.simulation.simulate import write_simulation

    _, bad = misaligned_series
    stack = write_simulation(bad, tmp_path / "sim")["tilts.mrc"]
    out = tmp_path / "rec.mrc"
    assert main(_reconstruct(stack, out)) == 0, capsys.readouterr().err
    # Views 1.5 px off are moved, and auto writes the correction as --refine-alignment does.
    xf = read_xf(tmp_path / "rec.xf", n_expected=len(bad.tilts_deg))
    assert np.abs(xf[:, :, 2]).max() > 0.1
    assert read_tilt_angles(tmp_path / "rec.tlt") == pytest.approx(bad.tilts_deg, abs=1e-4)
    record = _alignment_record(out)
    assert record["mode"] == "auto" and record["moved"]
    assert record["xf"] == str(tmp_path / "rec.xf") and "not_written" not in record
    # The specimen runs past the field of view: the axis is the user's, and they are told.
    assert "runs past the field of view" in record["axis_left"]
    assert "tilt-axis angle left as given" in " ".join(capsys.readouterr())


def test_by_default_the_input_angle_file_is_never_written_over(tmp_path, misaligned_series,
                                                               capsys):
    import shutil

    from taichi_etgs.cli import main
    from taichi_etgs.simulation.simulate import write_simulation

    _, bad = misaligned_series
    paths = write_simulation(bad, tmp_path / "sim")
    # The common layout: TS_01.ali with its TS_01.tlt (found beside it), output TS_01.mrc,
    # whose correction would go to TS_01.tlt.
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(paths["tilts.mrc"], folder / "TS_01.ali")
    shutil.copy(paths["tilts.tlt"], folder / "TS_01.tlt")
    angles = (folder / "TS_01.tlt").read_bytes()
    out = folder / "TS_01.mrc"
    # Asked for explicitly, that is refused before any work, as it always was.
    assert main(_reconstruct(folder / "TS_01.ali", out, "--refine-alignment")) == 2
    assert "TS_01.tlt" in capsys.readouterr().err and not out.exists()
    # Auto: the run goes on, the views are refined, and one warning says why the
    # correction is not written and where its shifts are instead.
    code = main(_reconstruct(folder / "TS_01.ali", out))
    err = capsys.readouterr().err
    assert code == 0, err
    said = [line for line in err.splitlines() if "refined alignment" in line]
    assert len(said) == 1 and said[0].startswith(f"warning: {folder / 'TS_01.tlt'} is the "
                                                 f"input's angle file")
    assert str(folder / "TS_01.mrc.json") in said[0]
    assert (folder / "TS_01.tlt").read_bytes() == angles
    assert not (folder / "TS_01.xf").exists()  # the pair is written together or not at all
    record = _alignment_record(out)
    assert record["moved"] and "input's angle file" in record["not_written"]
    assert np.abs(record["shifts_px"]).max() > 0.1  # the refined shifts, kept in the sidecar
    # The input's .xf is the input's too: asked for explicitly, refused before any work,
    # even with --force.
    from taichi_etgs.io.transforms import write_xf

    given_xf = write_xf(folder / "rec.xf", np.tile([[1.0, 0, 0], [0, 1.0, 0]],
                                                   (len(bad.tilts_deg), 1, 1)))
    before = given_xf.read_bytes()
    assert main(_reconstruct(folder / "TS_01.ali", folder / "rec.mrc", "--refine-alignment",
                             "--xf", given_xf, "--force")) == 2
    assert "input's .xf" in capsys.readouterr().err and given_xf.read_bytes() == before
    assert not (folder / "rec.mrc").exists()


def test_a_resumed_run_keeps_its_alignment(tmp_path, misaligned_series):
    from taichi_etgs.gaussian.state import load_state

    _, bad = misaligned_series
    views = density_views(bad.tilts, "dark")
    config = ReconstructConfig(iterations=20, max_gaussians=2000, refine_alignment=True)
    run = GaussianReconstruction(views, bad.tilts_deg, 24, config)
    run.run()
    run.save_state(tmp_path / "s.h5", "checksum")
    state = load_state(tmp_path / "s.h5")
    again = GaussianReconstruction(views, bad.tilts_deg, 24, config, params=state.params)
    again.restore(state)
    assert again.alignment.shifts_px == pytest.approx(run.alignment.shifts_px, abs=1e-6)
    assert again.alignment.axis_left == run.alignment.axis_left != ""  # past the FOV
    assert np.array_equal(again.measured, run.measured)  # the same views are fitted on


def test_a_model_seed_is_refined_only_when_asked(tmp_path, misaligned_series, capsys):
    from taichi_etgs.cli import main
    from taichi_etgs.io import read_xf
    from taichi_etgs.simulation.simulate import write_simulation

    _, bad = misaligned_series
    stack = write_simulation(bad, tmp_path / "sim")["tilts.mrc"]
    seed = tmp_path / "seed.mrc"
    assert main(_reconstruct(stack, seed, "--no-refine-alignment")) == 0, \
        capsys.readouterr().err
    state = seed.with_suffix(".state.h5")
    assert state.exists()
    # Auto leaves a model seed as fitted: it was fitted to the views as given.
    auto = tmp_path / "auto.mrc"
    assert main(_reconstruct(stack, auto, "--init", str(state))) == 0, capsys.readouterr().err
    record = _alignment_record(auto)
    assert record["mode"] == "auto" and not record["refined"] and "model seed" in record["why"]
    # Asked for, the views are aligned first, as for a seed from the views (1.5 px rms).
    asked = tmp_path / "asked.mrc"
    assert main(_reconstruct(stack, asked, "--init", str(state), "--refine-alignment")) == 0, \
        capsys.readouterr().err
    assert _alignment_record(asked)["refined"]
    assert np.abs(read_xf(asked.with_suffix(".xf"), n_expected=len(bad.tilts_deg))[:, :, 2]
                  ).max() > 0.5


@pytest.mark.parametrize("method", ["wbp", "sirt"])
def test_wbp_and_sirt_refine_the_alignment_first(tmp_path, misaligned_series, capsys, method):
    from taichi_etgs.cli import main
    from taichi_etgs.io import read_xf
    from taichi_etgs.simulation.simulate import write_simulation

    good, bad = misaligned_series
    truth = np.asarray(bad.info["misalignment"]["shifts_xy_px"])
    target = without_gauge(-truth, bad.tilts_deg)
    paths = write_simulation(bad, tmp_path / "sim")
    out = tmp_path / f"{method}.mrc"
    args = [method, str(paths["tilts.mrc"]), "--thickness", "24", "--refine-alignment",
            "-o", str(out), "--arch", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    xf = read_xf(tmp_path / f"{method}.xf", n_expected=len(bad.tilts_deg))
    # The same bound as the Gaussian run's (issue 10: 0.3 px rms from 1.5 px sd).
    assert _rms(xf[:, :, 2], target) < 0.3 < _rms(0 * target, target)
    sidecar = json.loads((tmp_path / f"{method}.mrc.json").read_text())
    assert sidecar["result"]["alignment"]["xf"] == str(tmp_path / f"{method}.xf")
    assert "past the field of view" in sidecar["result"]["alignment"]["axis_left"]
    # Whole views only: slabs are refused with one line, before any work.
    capsys.readouterr()
    code = main([*args[:-4], "-o", str(tmp_path / "slabbed.mrc"), "--slab-rows", "16",
                 "--arch", "cpu"])
    assert code == 2 and "not with slabs" in capsys.readouterr().err
    assert not (tmp_path / "slabbed.mrc").exists()



def test_noisy_aligned_views_are_left_exactly_as_they_are():
    # SNR 0.5: the first stage finds no shifts beyond the noise of their measurement, so
    # neither the short fit nor the densifications move the views (issue 10: no drift).
    result = simulate_tilt_series(SimulationConfig(
        shape_zyx=(24, 48, 48), tilt_min_deg=-60, tilt_max_deg=60, tilt_step_deg=4,
        n_particles=4, n_vesicles=0, n_filaments=1, noise="gaussian", snr=0.5, seed=2))
    config = ReconstructConfig(iterations=60, max_gaussians=2000, refine_alignment=True)
    run = GaussianReconstruction(density_views(result.tilts, "dark"), result.tilts_deg, 24,
                                 config)
    run.run()
    assert not np.any(run.alignment.shifts_px) and run.alignment.axis_deg == 0.0
