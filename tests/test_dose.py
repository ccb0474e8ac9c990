"""Per-view exposure (issue 10, item 2): the readers, the acquisition orders, the exposure
filter of the views against a numpy reference, and the dose in the Gaussian view filter."""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.io.dose import DoseSeries, match_views, read_dose, write_dose
from taichi_etgs.simulation.simulate import SimulationConfig, acquisition_sequence, tilt_scheme

MDOC_HEAD = """PixelSpacing = 2.7
ImageFile = TS_01.mrc
ImageSize = 4096 4096

[T = SerialEM: Digitized on EMBL Krios   30-Nov-26  10:00:00    ]

[T =     Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0]
"""


def _mdoc(path, tilts, exposure=None, prior=None, times=None):
    text = MDOC_HEAD
    for z, t in enumerate(tilts):
        text += f"\n[ZValue = {z}]\nTiltAngle = {t}\nStagePosition = 0 0\n"
        if exposure is not None:
            text += f"ExposureDose = {exposure[z]}\n"
        if prior is not None:
            text += f"PriorRecordDose = {prior[z]}\n"
        if times is not None:
            text += f"DateTime = {times[z]}\n"
        text += "RotationAngle = -94.7\n"
    path.write_text(text)
    return path


# --- acquisition orders -----------------------------------------------------------------

def test_sequential_goes_from_the_lowest_tilt_or_from_the_start_end():
    angles = np.array([0.0, -6.0, 6.0, -3.0, 3.0])  # any stack order
    assert angles[acquisition_sequence(angles)].tolist() == [-6, -3, 0, 3, 6]
    assert angles[acquisition_sequence(angles, start_deg=5.0)].tolist() == [6, 3, 0, -3, -6]


def test_bidirectional_starts_at_the_start_and_goes_to_the_far_end_first():
    angles = np.arange(-60.0, 61.0, 20.0)  # -60 -40 -20 0 20 40 60
    seq = angles[acquisition_sequence(angles, "bidirectional", start_deg=20.0)]
    assert seq.tolist() == [20, 0, -20, -40, -60, 40, 60]
    seq = angles[acquisition_sequence(angles, "bidirectional", start_deg=-20.0)]
    assert seq.tolist() == [-20, 0, 20, 40, 60, -40, -60]
    seq = angles[acquisition_sequence(angles, "bidirectional")]  # tie: negative first
    assert seq.tolist() == [0, -20, -40, -60, 20, 40, 60]


def test_dose_symmetric_is_hagens_scheme_and_the_simulators():
    angles = np.arange(-9.0, 10.0, 3.0)
    seq = angles[acquisition_sequence(angles, "dose-symmetric", group=2)]
    assert seq.tolist() == [0, 3, -3, -6, 6, 9, -9]
    seq = angles[acquisition_sequence(angles, "dose-symmetric", group=1)]
    assert seq.tolist() == [0, 3, -3, 6, -6, 9, -9]
    seq = angles[acquisition_sequence(angles, "dose-symmetric", group=2, start_deg=3.0)]
    assert seq[0] == 3
    # the simulator takes its doses from the same order
    scheme = tilt_scheme(SimulationConfig(tilt_min_deg=-9, tilt_max_deg=9, tilt_step_deg=3,
                                          dose_symmetric=True, total_dose_e_per_A2=70))
    order = acquisition_sequence(scheme.tilts_deg, "dose-symmetric", group=2)
    expected = DoseSeries.from_order(10.0, order)
    np.testing.assert_allclose(scheme.prior_dose_e_per_A2, expected.prior_dose_e_per_A2)
    bidir = tilt_scheme(SimulationConfig(tilt_min_deg=-9, tilt_max_deg=9, tilt_step_deg=3,
                                         tilt_order="bidirectional", tilt_start_deg=3.0,
                                         total_dose_e_per_A2=70))
    # 3 0 -3 -6 -9 6 9
    np.testing.assert_allclose(bidir.prior_dose_e_per_A2, [40, 30, 20, 10, 0, 50, 60])


def test_unknown_order_is_refused():
    with pytest.raises(InputError, match="unknown tilt order"):
        acquisition_sequence([0.0, 3.0], "zigzag")
    with pytest.raises(InputError, match="unknown tilt order"):
        SimulationConfig(tilt_order="zigzag")


# --- readers ------------------------------------------------------------------------------

def test_mdoc_with_prior_record_dose(tmp_path):
    path = _mdoc(tmp_path / "TS.mdoc", [0.0, 3.0, -3.0], exposure=[3.1, 3.0, 2.9],
                 prior=[0.0, 3.1, 6.1])
    d = read_dose(path)
    assert d.format == "mdoc" and d.n_views == 3
    np.testing.assert_allclose(d.dose_e_per_A2, [3.1, 3.0, 2.9])
    np.testing.assert_allclose(d.prior_dose_e_per_A2, [0.0, 3.1, 6.1])
    np.testing.assert_allclose(d.exposure_e_per_A2, [1.55, 4.6, 7.55])
    assert d.lines[0] > 0


def test_mdoc_prior_dose_from_datetime_or_from_the_order(tmp_path):
    times = ["30-Nov-26  10:02:00", "30-Nov-26  10:00:00", "30-Nov-26  10:01:00"]
    path = _mdoc(tmp_path / "TS.mdoc", [3.0, 0.0, -3.0], exposure=[2.0, 2.0, 2.0],
                 times=times)
    np.testing.assert_allclose(read_dose(path).prior_dose_e_per_A2, [4.0, 0.0, 2.0])
    bare = _mdoc(tmp_path / "bare.mdoc", [3.0, 0.0, -3.0], exposure=[2.0, 2.0, 2.0])
    with pytest.raises(InputError, match="PriorRecordDose or DateTime.*--tilt-order"):
        read_dose(bare)
    seq = acquisition_sequence([3.0, 0.0, -3.0], "sequential")
    np.testing.assert_allclose(read_dose(bare, seq).prior_dose_e_per_A2, [4.0, 2.0, 0.0])


@pytest.mark.parametrize("field, bad, message", [
    ("ExposureDose", "abc", "ExposureDose 'abc' is not a number >= 0"),
    ("ExposureDose", "-1", "ExposureDose '-1' is not a number >= 0"),
    ("ExposureDose", "5000", "implausible"),
    ("PriorRecordDose", "nan", "PriorRecordDose 'nan' is not a number >= 0"),
    ("DateTime", "yesterday", "DateTime 'yesterday' is not a date"),
])
def test_malformed_mdoc_values_name_the_file_and_line(tmp_path, field, bad, message):
    exposure, prior = [3.0, 3.0], [0.0, 3.0]
    times = ["30-Nov-26  10:00:00", "30-Nov-26  10:01:00"]
    if field == "ExposureDose":
        exposure[1] = bad
    elif field == "PriorRecordDose":
        prior[1] = bad
    else:
        times[1], prior = bad, None
    path = _mdoc(tmp_path / "TS.mdoc", [0.0, 3.0], exposure, prior, times)
    lines = path.read_text().splitlines()
    line = next(i for i, s in enumerate(lines, 1) if s.startswith(f"{field} = {bad}"))
    with pytest.raises(InputError) as info:
        read_dose(path)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}, line {line}: ")


def test_mdoc_without_doses_or_uncalibrated(tmp_path):
    with pytest.raises(InputError, match="no ExposureDose.*--dose-per-tilt"):
        read_dose(_mdoc(tmp_path / "a.mdoc", [0.0, 3.0]))
    with pytest.raises(InputError, match="ExposureDose is 0 in every section"):
        read_dose(_mdoc(tmp_path / "b.mdoc", [0.0, 3.0], exposure=[0, 0], prior=[0, 0]))
    path = _mdoc(tmp_path / "c.mdoc", [0.0, 3.0], exposure=[3.0, 3.0])
    path.write_text(path.read_text().replace("ExposureDose = 3.0\n", "", 1))
    with pytest.raises(InputError, match=r"\[ZValue = 0\] has no ExposureDose"):
        read_dose(path)


def test_two_column_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "tilts.dose"
    write_dose(path, [3.0, 3.0, 3.0], [3.0, 0.0, 6.0])
    d = read_dose(path)
    assert d.format == "columns"
    np.testing.assert_allclose(d.dose_e_per_A2, 3.0)
    np.testing.assert_allclose(d.prior_dose_e_per_A2, [3.0, 0.0, 6.0])
    bad = tmp_path / "bad.dose"
    bad.write_text("# dose prior\n3 0\n3\n")
    with pytest.raises(InputError, match=r"bad.dose, line 3: has 1 values; expected two"):
        read_dose(bad)
    bad.write_text("3 0\n3 x\n")
    with pytest.raises(InputError, match=r"line 2: 'x' is not a number; expected the prior"):
        read_dose(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(InputError, match="has no lines"):
        read_dose(bad)


def test_match_views_like_the_angles(tmp_path):
    d = DoseSeries(np.arange(5.0), np.arange(5.0) * 2, "f.dose", "columns")
    kept = [0, 2, 3]
    np.testing.assert_allclose(match_views(d, 5, kept).dose_e_per_A2, [0, 2, 3])
    np.testing.assert_allclose(match_views(d.select(kept), 5, kept).prior_dose_e_per_A2,
                               [0, 4, 6])
    with pytest.raises(InputError, match="f.dose: gives the dose of 5 views but the stack "
                                         "has 7 sections"):
        match_views(d, 7, range(6))


def test_simulator_writes_a_dose_file_our_reader_reads(taichi_cpu, tmp_path):
    from taichi_etgs.simulation.simulate import simulate_tilt_series, write_simulation

    config = SimulationConfig(shape_zyx=(16, 32, 32), tilt_min_deg=-30, tilt_max_deg=30,
                              tilt_step_deg=10, noise="physical", dose_symmetric=True,
                              total_dose_e_per_A2=70, seed=3, n_particles=1, n_vesicles=0,
                              n_filaments=0)
    result = simulate_tilt_series(config)
    paths = write_simulation(result, tmp_path / "sim")
    d = read_dose(paths["tilts.dose"])
    np.testing.assert_allclose(d.dose_e_per_A2, result.info["dose_e_per_A2"])
    np.testing.assert_allclose(d.prior_dose_e_per_A2, result.info["prior_dose_e_per_A2"])
    order = acquisition_sequence(result.tilts_deg, "dose-symmetric", group=2)
    np.testing.assert_allclose(d.prior_dose_e_per_A2,
                               DoseSeries.from_order(10.0, order).prior_dose_e_per_A2)


# --- the exposure filter of the views (WBP, SIRT) -------------------------------------------

def _reference_filter(views, pixel, exposure, voltage, pad, normalise):
    """Exposure filtering restated: Grant & Grigorieff's curve per view, normalised per
    frequency over the series, applied by an explicit 2D DFT to mirror-padded views."""
    n, ny, nx = views.shape
    shape = (ny + 2 * pad, nx + 2 * pad)
    fy = np.fft.fftfreq(shape[0], d=pixel)
    fx = np.fft.fftfreq(shape[1], d=pixel)
    k = np.maximum(np.hypot(fy[:, None], fx[None, :]), 1e-12)
    scale = 0.8 + 0.2 * (voltage - 200.0) / 100.0
    ne = (0.245 * k ** -1.665 + 2.81) * scale
    q = np.exp(-np.asarray(exposure)[:, None, None] / (2 * ne[None]))
    if normalise == "max":
        q = q / q.max(axis=0)
    elif normalise == "rms":
        q = q / np.sqrt((q ** 2).mean(axis=0))
    ey = np.exp(-2j * np.pi * np.outer(np.arange(shape[0]), np.arange(shape[0])) / shape[0])
    ex = np.exp(-2j * np.pi * np.outer(np.arange(shape[1]), np.arange(shape[1])) / shape[1])
    out = np.empty(views.shape)
    for t in range(n):
        v = views[t] - views[t].mean()
        padded = np.pad(v, pad, mode="reflect")
        spectrum = ey @ padded @ ex.T
        image = (ey.conj() @ (spectrum * q[t]) @ ex.conj().T).real / padded.size
        out[t] = image[pad:pad + ny, pad:pad + nx] + views[t].mean()
    return out


@pytest.mark.parametrize("normalise", ["max", "rms", "none"])
def test_exposure_filter_of_views_matches_a_numpy_reference(normalise):
    from taichi_etgs.classical.doseweight import exposure_filter_views

    rng = np.random.default_rng(0)
    views = rng.standard_normal((4, 12, 18)) + 5.0
    exposure = [1.5, 40.0, 80.0, 118.5]
    got = exposure_filter_views(views, 4.0, exposure, 200.0, pad=5, normalise=normalise)
    want = _reference_filter(views, 4.0, exposure, 200.0, 5, normalise)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_exposure_filter_uses_the_simulators_curve_and_keeps_the_least_exposed_view():
    from taichi_etgs.classical.doseweight import dose_weights
    from taichi_etgs.simulation.imaging import exposure_filter

    q = dose_weights((16, 16), 5.0, [2.0, 60.0], normalise="none")
    k = np.hypot(np.fft.fftfreq(16, 5.0)[:, None], np.fft.rfftfreq(16, 5.0)[None])
    np.testing.assert_allclose(q[1], exposure_filter(k, 60.0))
    q = dose_weights((16, 16), 5.0, [2.0, 60.0])
    np.testing.assert_allclose(q[0], 1.0)
    assert q[1, 0, 8] < 0.5 and np.all(q[1] <= 1.0)


# --- wbp / sirt with --dose ------------------------------------------------------------------

def _simulated(tmp_path, order, pixel, shape):
    from taichi_etgs.simulation.simulate import simulate_tilt_series, write_simulation

    config = SimulationConfig(shape_zyx=shape, pixel_size_A=pixel, tilt_min_deg=-60,
                              tilt_max_deg=60, tilt_step_deg=3, noise="physical",
                              total_dose_e_per_A2=120, tilt_order=order, seed=1,
                              defocus_um=3.0)
    result = simulate_tilt_series(config)
    return write_simulation(result, tmp_path / order), result.ground_truth


def _band(path, truth, pixel):
    import mrcfile

    from taichi_etgs.evaluation.metrics import evaluate

    with mrcfile.open(path) as mrc:
        volume = -mrc.data.astype(np.float64)
    m = evaluate(volume, truth, pixel)
    return m["specimen_band_fsc"], m["correlation"]


@pytest.mark.parametrize("order, pixel, shape", [("dose-symmetric", 8.0, (24, 64, 64)),
                                                 ("bidirectional", 5.0, (32, 96, 96))])
def test_exposure_filtered_wbp_of_damaged_views_is_closer_to_the_truth(
        taichi_cpu, tmp_path, capsys, order, pixel, shape):
    import json

    from taichi_etgs.cli import main

    paths, truth = _simulated(tmp_path, order, pixel, shape)
    args = ["wbp", paths["tilts.mrc"], "--thickness", shape[0], "--defocus", 3, "--arch", "cpu"]
    runs = {"plain": [], "file": ["--dose", paths["tilts.dose"]],
            "order": ["--dose-per-tilt", 120 / 41, "--tilt-order", order]}
    scores = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.mrc"
        code = main([str(a) for a in [*args, *extra, "-o", out]])
        _, err = capsys.readouterr()
        assert code == 0, err
        scores[name] = _band(out, truth, pixel)
    print(order, scores)
    # Measured (band FSC, correlation): dose-symmetric 8 A: (0.403, 0.078) -> (0.408, 0.123);
    # bidirectional 5 A: (0.431, 0.038) -> (0.433, 0.076).
    assert scores["file"][0] >= scores["plain"][0] + 0.002
    assert scores["file"][1] >= scores["plain"][1] + 0.02
    # the same doses from --dose-per-tilt and the order as from the simulator's file
    assert scores["order"] == pytest.approx(scores["file"], abs=1e-6)
    sidecar = json.loads((tmp_path / "file.mrc.json").read_text())
    dose = sidecar["result"]["dose"]
    assert dose["exposure_filtered"] and dose["normalisation"] == "max"
    assert dose["prior_dose_e_per_A2"] == pytest.approx(
        np.loadtxt(paths["tilts.dose"])[:, 1], abs=1e-4)
    assert any(i["role"] == "dose" for i in sidecar["inputs"])
    assert "ctf" in sidecar["result"]


def test_bad_dose_inputs_give_one_error_line(taichi_cpu, tmp_path, capsys):
    from taichi_etgs.cli import main

    paths, _ = _simulated(tmp_path, "dose-symmetric", 8.0, (24, 64, 64))
    stack = paths["tilts.mrc"]
    bad = _mdoc(tmp_path / "bad.mdoc", np.arange(-60.0, 61.0, 3.0),
                exposure=["2.9"] * 40 + ["lots"], prior=[0.0] * 41)
    cases = [(["--dose", bad], r"bad.mdoc, line \d+: ExposureDose 'lots' is not a number"),
             (["--dose", paths["tilts.dose"], "--dose-per-tilt", 3],
              "--dose FILE and --dose-per-tilt both given"),
             (["--dose", tmp_path / "short.dose"], "short.dose: gives the dose of 2 views but "
                                                   "the stack has 41 sections")]
    write_dose(tmp_path / "short.dose", [3, 3], [0, 3])
    for extra, message in cases:
        code = main([str(a) for a in ["wbp", stack, "--thickness", 24, "--arch", "cpu", "-o",
                                      tmp_path / "never.mrc", *extra]])
        _, err = capsys.readouterr()
        lines = [s for s in err.splitlines() if s.startswith("error:")]
        assert code == 2 and len(lines) == 1, err
        import re
        assert re.search(message, lines[0]), err
        assert not (tmp_path / "never.mrc").exists()


# --- the exposure filter in the Gaussian forward model ---------------------------------------

def _scopes():
    from taichi_etgs.gaussian.transfer import Microscope

    return {"ctf+dose": Microscope((2.0, 3.0, 4.5), 8.0, exposure_e_per_A2=(1.5, 45.0, 110.0)),
            "dose only": Microscope(0.0, 8.0, exposure_e_per_A2=(1.5, 45.0, 110.0), ctf=False)}


@pytest.mark.parametrize("name", ["ctf+dose", "dose only"])
def test_view_filter_with_dose_keeps_an_exact_adjoint(name):
    from taichi_etgs.gaussian.transfer import ViewFilter

    rng = np.random.default_rng(1)
    f = ViewFilter(_scopes()[name], (20, 24))
    index = np.array([2, 0, 1, 2])
    x = rng.normal(size=(4, 20, 24))
    y = rng.normal(size=(4, 20, 24))
    lhs, rhs = np.vdot(f.apply(x, index), y), np.vdot(x, f.adjoint(y, index))
    assert abs(lhs) > 1e-3
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)  # float64 FFT round-off
    rows = f.apply_rows(x[:, 0, :], index)
    views = np.repeat(x[:, :1, :], 20, axis=1)
    np.testing.assert_allclose(f.apply(views, index).mean(axis=1), rows, rtol=0,
                               atol=1e-12 * np.abs(rows).max())


def test_view_filter_is_the_ctf_times_the_exposure_filter():
    from taichi_etgs.gaussian.transfer import Microscope, ViewFilter
    from taichi_etgs.simulation.imaging import _frequencies, exposure_filter

    scopes = _scopes()
    both, dose_only = ViewFilter(scopes["ctf+dose"], (16, 20)), ViewFilter(scopes["dose only"],
                                                                           (16, 20))
    for t, (df, e) in enumerate([(2.0, 1.5), (3.0, 45.0), (4.5, 110.0)]):
        q = exposure_filter(_frequencies(both.shape, 8.0), e)
        np.testing.assert_allclose(both.h_for(t), ViewFilter(Microscope(df, 8.0), (16, 20)).h
                                   * q, atol=1e-15)
        np.testing.assert_allclose(dose_only.h_for(t), q, atol=1e-15)
    # the damaged view loses its fine detail: its high frequencies are weaker
    assert dose_only.h_for(2)[0, -1] < 0.7 * dose_only.h_for(0)[0, -1]
    # phase flipping with the exposure alone changes nothing but the mean
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 16, 20)) + 3.0
    np.testing.assert_allclose(dose_only.phase_flip(x, [2, 1]),
                               x - x.mean(axis=(1, 2), keepdims=True), atol=1e-5)


def test_config_keeps_the_exposure_through_a_state_file_and_picks_halves():
    import json

    from taichi_etgs.errors import InputError
    from taichi_etgs.gaussian.fit import ReconstructConfig

    cfg = ReconstructConfig(exposure_per_view_e_per_A2=[1.5, 4.5, 7.5], pixel_size_A=8.0)
    back = ReconstructConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.has_view_filter and not back.has_ctf
    scope = back.microscope()
    assert not scope.ctf and scope.exposure(2) == 7.5 and scope.n_views == 3
    assert back.select_views([2, 0]).exposure_per_view_e_per_A2 == [7.5, 1.5]
    with pytest.raises(InputError, match="pixel size"):
        ReconstructConfig(exposure_per_view_e_per_A2=[1.0])
    with pytest.raises(InputError, match=">= 0"):
        ReconstructConfig(exposure_per_view_e_per_A2=[-1.0], pixel_size_A=8.0)


def test_each_views_prediction_carries_its_own_exposure(taichi_cpu):
    import dataclasses

    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.gaussian.fit import GaussianReconstruction, ReconstructConfig

    from .phantoms import gaussian_blobs

    tilts = np.arange(-48.0, 49.0, 12.0)
    exposure = np.linspace(1.5, 110.0, tilts.size)
    volume = gaussian_blobs((8, 12, 24), 6, 1.2, (2.0, 4.0, 8.0))
    views = forward_project(volume, tilts)
    base = ReconstructConfig(iterations=1, max_gaussians=60, init="wbp", background="offset",
                             heldout_every=0, pixel_size_A=8.0, defocus_um=3.0)
    per_view = GaussianReconstruction(views, tilts, 8, dataclasses.replace(
        base, exposure_per_view_e_per_A2=exposure.tolist()))
    plain = GaussianReconstruction(views, tilts, 8, base, params=per_view.params)
    for t in (0, 8):
        single = GaussianReconstruction(views, tilts, 8, dataclasses.replace(
            base, exposure_per_view_e_per_A2=[float(exposure[t])] * tilts.size),
            params=per_view.params)
        index = np.array([t])
        np.testing.assert_allclose(per_view.predict(index), single.predict(index), atol=1e-5)
    # the last view is predicted with less fine detail than without the exposure
    last = np.array([8])
    assert not np.allclose(per_view.predict(last), plain.predict(last), atol=1e-4)


def test_reconstruct_with_a_dose_keeps_it_in_the_state_and_the_api_takes_it(taichi_cpu, tmp_path,
                                                                             capsys):
    from taichi_etgs.cli import main
    from taichi_etgs.gaussian.state import load_state

    paths, _ = _simulated(tmp_path, "dose-symmetric", 8.0, (24, 64, 64))
    out, state = tmp_path / "g.mrc", tmp_path / "g.state.h5"
    common = ["--thickness", 24, "--max-gaussians", 200, "--init", "wbp", "--arch", "cpu"]
    code = main([str(a) for a in ["reconstruct", paths["tilts.mrc"], *common, "-o", out,
                                  "--iterations", 2, "--dose", paths["tilts.dose"],
                                  "--exclude-views", 0]])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "exposure from" in err
    d = read_dose(paths["tilts.dose"])
    config = load_state(state).config
    assert config["exposure_per_view_e_per_A2"] == pytest.approx(
        d.exposure_e_per_A2[1:], abs=1e-6)
    assert config["defocus_um"] == 0 and config["pixel_size_A"] == pytest.approx(8.0)
    code = main([str(a) for a in ["reconstruct", "--resume", state, "--iterations", 3,
                                  "--force", "--dose-per-tilt", 3, "--arch", "cpu"]])
    _, err = capsys.readouterr()
    assert code == 0 and "dose options are not used" in err, err
    assert load_state(state).config["exposure_per_view_e_per_A2"] == \
        config["exposure_per_view_e_per_A2"]
    import taichi_etgs as te

    result = te.sirt(str(paths["tilts.mrc"]), thickness=24, iterations=2, dose_per_tilt=120 / 41,
                     tilt_order="dose-symmetric", arch="cpu")
    assert result.info["dose"]["prior_dose_e_per_A2"] == pytest.approx(
        d.prior_dose_e_per_A2, abs=1e-4)


def test_excluded_views_were_exposed_too(taichi_cpu, tmp_path, capsys):
    import json

    from taichi_etgs.cli import main

    paths, _ = _simulated(tmp_path, "bidirectional", 8.0, (24, 64, 64))
    full = read_dose(paths["tilts.dose"])
    for extra in (["--dose", paths["tilts.dose"]],
                  ["--dose-per-tilt", 120 / 41, "--tilt-order", "bidirectional"]):
        out = tmp_path / "x.mrc"
        code = main([str(a) for a in ["wbp", paths["tilts.mrc"], "--thickness", 24, "--arch",
                                      "cpu", "-o", out, "--force", "--exclude-views", "0-1,30",
                                      *extra]])
        _, err = capsys.readouterr()
        assert code == 0, err
        dose = json.loads((tmp_path / "x.mrc.json").read_text())["result"]["dose"]
        kept = [v for v in range(41) if v not in (0, 1, 30)]
        assert dose["prior_dose_e_per_A2"] == pytest.approx(full.prior_dose_e_per_A2[kept],
                                                            abs=1e-4)
