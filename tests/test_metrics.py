"""Metrics on cases with known answers; evaluate's refusals; JSON and figure output; the
``evaluate`` command (reference and half-map modes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.evaluation.metrics import (
    affine_fit,
    band_average,
    correlation,
    evaluate,
    fsc,
    half_map_fsc,
    metrics_to_json,
    normalise_to_reference,
    psnr,
    resolution_at,
    ssim3d,
    wedge_fsc,
    write_metrics_json,
)
from taichi_etgs.io import write_volume

KEYS = ("psnr", "ssim", "correlation", "fsc05_resolution_A", "fsc0143_resolution_A",
        "wedge_fsc", "band_fsc", "wedge_band_fsc", "specimen_band_fsc",
        "specimen_wedge_band_fsc", "curves")
HALF_KEYS = ("freq_per_A", "fsc", "fsc0143_resolution_A", "fsc05_resolution_A", "band_fsc")


@pytest.fixture
def volume(rng) -> np.ndarray:
    """Smooth positive structure on a slab, like a tomogram. [24, 32, 40]"""
    v = gaussian_filter(rng.standard_normal((24, 32, 40)), 1.5)
    return (4.5 + 3.0 * v / v.std()).astype(np.float32)


def test_identical_volumes(volume):
    m = evaluate(volume, volume, voxel_size_A=10.0, max_tilt_deg=60.0)
    assert set(KEYS) <= set(m)
    assert m["psnr"] == float("inf")
    assert m["ssim"] == pytest.approx(1.0)
    assert m["correlation"] == pytest.approx(1.0)
    curve = np.asarray(m["curves"]["fsc"]["fsc"])
    np.testing.assert_allclose(curve, 1.0, rtol=1e-9)
    wedge = np.asarray(m["curves"]["wedge_fsc"]["fsc"])
    np.testing.assert_allclose(wedge[np.isfinite(wedge)], 1.0, rtol=1e-9)
    assert m["wedge_fsc"] == pytest.approx(1.0)
    for key in ("band_fsc", "wedge_band_fsc", "specimen_band_fsc", "specimen_wedge_band_fsc"):
        assert m[key] == pytest.approx(1.0), key
    # Never crosses: the Nyquist resolution, 2 voxels.
    assert m["fsc05_resolution_A"] == pytest.approx(20.0)
    assert m["fsc0143_resolution_A"] == pytest.approx(20.0)
    assert m["contrast_inverted"] is False
    # inf is written as the string "inf" (strict JSON), and reads back with float().
    doc = json.loads(metrics_to_json(m))
    assert doc["psnr"] == "inf" and float(doc["psnr"]) == float("inf")


def test_psnr_of_known_noise(rng):
    # MSE = sigma^2, so PSNR = 10 log10(range^2 / sigma^2); 40^3 samples estimate the
    # variance to 0.2% (0.01 dB); 0.05 dB allows 5 standard errors.
    reference = rng.uniform(0.0, 8.0, size=(40, 40, 40))
    sigma = 0.3
    noisy = reference + rng.normal(0.0, sigma, size=reference.shape)
    predicted = 10 * np.log10(8.0 ** 2 / sigma ** 2)
    assert psnr(noisy, reference, data_range=8.0) == pytest.approx(predicted, abs=0.05)
    # evaluate first fits a*recon+b: with independent noise the fit shrinks the noise,
    # a = var(ref) / (var(ref) + sigma^2), leaving MSE = sigma^2 var / (var + sigma^2),
    # and uses the reference's own range.
    var = reference.var()
    shrunk = sigma ** 2 * var / (var + sigma ** 2)
    data_range = reference.max() - reference.min()
    m = evaluate(noisy, reference, voxel_size_A=1.0)
    assert m["psnr"] == pytest.approx(10 * np.log10(data_range ** 2 / shrunk), abs=0.05)


def test_negated_volume_is_fitted_and_flagged(volume):
    # Documented: the affine fit allows a negative gain, so an inverted reconstruction
    # scores like its positive and is flagged.
    assert correlation(-volume, volume) == pytest.approx(-1.0)
    m = evaluate(-volume, volume, voxel_size_A=10.0)
    assert m["contrast_inverted"] is True
    assert m["fit_gain"] == pytest.approx(-1.0)
    assert m["correlation"] == pytest.approx(1.0)
    assert m["psnr"] > 100  # exact up to rounding
    np.testing.assert_allclose(m["curves"]["fsc"]["fsc"], 1.0, rtol=1e-6)


def test_gain_and_offset_do_not_matter(volume):
    a, b = affine_fit(3.0 * volume + 7.0, volume)
    assert a == pytest.approx(1 / 3.0) and b == pytest.approx(-7.0 / 3.0, rel=1e-5)
    # float32 input: 1e-5 of the volume's scale.
    np.testing.assert_allclose(normalise_to_reference(3.0 * volume + 7.0, volume), volume,
                               rtol=0, atol=1e-5 * np.abs(volume).max())
    m = evaluate(3.0 * volume + 7.0, volume, voxel_size_A=10.0)
    assert m["psnr"] > 100 and m["contrast_inverted"] is False


def test_constant_reconstruction():
    reference = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    m = evaluate(np.ones_like(reference), reference, voxel_size_A=1.0)
    assert m["fit_gain"] == 0.0 and m["correlation"] == 0.0
    assert np.isfinite(m["psnr"])
    json.loads(metrics_to_json(m))  # NaN shells become null: strict JSON


@pytest.mark.parametrize("bad_shape", [(64, 128, 120), (63, 128, 128)])
def test_evaluate_refuses_mismatched_shapes(bad_shape):
    recon = np.zeros((64, 128, 128), np.float32)
    with pytest.raises(InputError) as err:
        evaluate(recon, np.zeros(bad_shape, np.float32), voxel_size_A=10.0)
    text = str(err.value)
    assert "reconstruction is 64x128128" not in text
    assert "reconstruction is 64x128x128 (z,y,x)" in text
    assert "x".join(map(str, bad_shape)) in text


def test_evaluate_refuses_bad_volumes(volume):
    with pytest.raises(InputError, match="3D"):
        evaluate(volume[0], volume[0], voxel_size_A=1.0)
    broken = volume.copy()
    broken[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate(broken, volume, voxel_size_A=1.0)
    with pytest.raises(InputError, match="constant"):
        evaluate(volume, np.ones_like(volume), voxel_size_A=1.0)


@pytest.mark.parametrize("band_voxels", [4_000_000, 1000])
def test_ssim_matches_scikit_image(rng, monkeypatch, band_voxels):
    # Also computed a few Z slices at a time (a band of 1000 voxels is 2 slices here):
    # the halo makes the banded result identical.
    from taichi_etgs.evaluation import metrics

    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    monkeypatch.setattr(metrics, "_SSIM_BAND_VOXELS", band_voxels)
    a = gaussian_filter(rng.standard_normal((16, 20, 24)), 1.0)
    b = a + 0.3 * rng.standard_normal(a.shape)
    for data_range in (None, 5.0):
        ours = ssim3d(b, a, data_range=data_range)
        theirs = structural_similarity(b, a, data_range=data_range or np.ptp(a))
        assert ours == pytest.approx(theirs, rel=1e-10)


def test_fsc_of_independent_noise_is_near_zero(rng):
    a = rng.standard_normal((32, 32, 32))
    b = rng.standard_normal((32, 32, 32))
    freq, curve = fsc(a, b, voxel_size_A=2.0)
    assert freq[-1] == pytest.approx(0.25)  # Nyquist of 2 A voxels
    assert freq.size == 17
    # Shell k holds ~4 pi k^2 independent coefficients: |FSC| ~ 1/sqrt(n); 4 sigma.
    n = 4 * np.pi * np.arange(4, 17) ** 2 / 2
    assert np.all(np.abs(curve[4:]) < 4 / np.sqrt(n))


def test_fsc_resolution_of_a_band_limited_copy(rng):
    # b keeps a's Fourier coefficients in shells 0-3 (|k| < 3.5/40 cycles/voxel) and
    # replaces the rest with independent noise of the same power: FSC ~1 up to shell 3
    # (0.075), ~0 from shell 4 (0.1) on.
    a = rng.standard_normal((40, 40, 40))
    k = np.sqrt(sum(f ** 2 for f in np.meshgrid(np.fft.fftfreq(40), np.fft.fftfreq(40),
                                                np.fft.fftfreq(40), indexing="ij")))
    keep = k < 3.5 / 40
    b = np.fft.ifftn(np.where(keep, np.fft.fftn(a),
                              np.fft.fftn(rng.standard_normal(a.shape)))).real
    freq, curve = fsc(a, b, voxel_size_A=1.0)
    # The crossing falls between the last kept shell and the first replaced one:
    # resolution between 10 and 13.3 A.
    assert 10.0 <= resolution_at(freq, curve, 0.5) <= 1 / (0.1 - 1 / 40)
    assert 10.0 <= resolution_at(freq, curve, 0.143) <= 1 / (0.1 - 1 / 40)


def test_resolution_at_interpolates_and_defaults_to_nyquist():
    freq = np.linspace(0, 0.05, 11)  # 10 A voxels
    line = 1 - freq / 0.05
    assert resolution_at(freq, line, 0.5) == pytest.approx(1 / 0.025)
    assert resolution_at(freq, line, 0.143) == pytest.approx(1 / (0.857 * 0.05))
    assert resolution_at(freq, np.ones(11), 0.143) == pytest.approx(20.0)
    with_gap = line.copy()
    with_gap[3] = np.nan
    assert resolution_at(freq, with_gap, 0.5) == pytest.approx(1 / 0.025)


def _wedge_mask(shape, max_tilt_deg):
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.fftfreq(shape[2])[None, None, :]
    return np.broadcast_to(np.abs(kz) > np.abs(kx) * np.tan(np.deg2rad(max_tilt_deg)),
                           shape)


def test_wedge_fsc_sees_only_the_missing_wedge(volume, rng):
    shape = volume.shape
    missing = _wedge_mask(shape, 60.0)
    spectrum = np.fft.fftn(volume)
    noise = np.fft.fftn(rng.standard_normal(shape)) * np.abs(spectrum).mean()
    # A reconstruction with nothing in the wedge: wedge FSC 0, full FSC high.
    no_wedge = np.fft.ifftn(np.where(missing, 0, spectrum)).real
    _, wcurve = wedge_fsc(no_wedge, volume, 60.0)
    finite = np.isfinite(wcurve)
    assert finite.sum() > 5
    np.testing.assert_allclose(wcurve[finite], 0.0, atol=1e-9)
    assert np.nanmean(fsc(no_wedge, volume)[1][1:8]) > 0.5
    # The wedge exact and everything measured replaced by noise: wedge FSC 1.
    only_wedge = np.fft.ifftn(np.where(missing, spectrum, noise)).real
    _, wcurve = wedge_fsc(only_wedge, volume, 60.0)
    np.testing.assert_allclose(wcurve[finite], 1.0, rtol=1e-9)
    # The scalar summary of evaluate follows.
    assert evaluate(only_wedge, volume, 1.0, 60.0)["wedge_fsc"] > 0.99


def test_json_and_figure_outputs(volume, tmp_path):
    m = evaluate(0.5 * volume + 1.0, volume, voxel_size_A=10.0)
    path = write_metrics_json(m, tmp_path / "metrics.json")
    doc = json.loads(path.read_text())
    for key in KEYS:
        assert key in doc
    assert doc["curves"]["fsc"]["freq_per_A"][-1] == pytest.approx(0.05)
    with pytest.raises(InputError, match="--force"):
        write_metrics_json(m, path)
    write_metrics_json(m, path, force=True)

    pytest.importorskip("matplotlib")
    from taichi_etgs.evaluation.figures import evaluation_figure

    figure = evaluation_figure(0.5 * volume + 1.0, volume, m, tmp_path / "eval.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="--force"):
        evaluation_figure(volume, volume, m, figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.png", "metrics.json"]


def test_comparison_figure(volume, tmp_path):
    pytest.importorskip("matplotlib")
    from taichi_etgs.evaluation.figures import comparison_figure

    volumes = {"a": 2.0 * volume, "b": -volume + 0.1}
    metrics = {k: evaluate(v, volume, voxel_size_A=10.0) for k, v in volumes.items()}
    path = comparison_figure(volumes, volume, metrics, tmp_path / "cmp.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="--force"):
        comparison_figure(volumes, volume, metrics, path)
    with pytest.raises(InputError, match="does not match"):
        comparison_figure({"c": volume[:-1]}, volume, {}, tmp_path / "x.png")


# -- resolution_at: never from DC, never coarser than the box --


def test_resolution_at_ignores_dc():
    # 32 shells of 1/320 per A (a 64-voxel box of 10 A, 640 A). DC is 1, as after the
    # affine fit. The old code interpolated between DC and shell 1 and reported 1/(f1/2)
    # = 1280 A here, twice the box.
    freq = np.arange(33) / 640.0
    curve = np.full(33, 0.0)
    curve[0] = 1.0
    assert resolution_at(freq, curve, 0.5) == pytest.approx(640.0)
    assert resolution_at(freq, curve, 0.143) == pytest.approx(640.0)
    # Shell 1 NaN (no power there) and shell 2 already below: still the box.
    curve[1] = np.nan
    assert resolution_at(freq, curve, 0.5) == pytest.approx(640.0)
    # A crossing between shells 1 and 2 is interpolated between them: 0.8 -> 0.2 crosses
    # 0.5 half-way, at 1.5 / 640 per A.
    curve[1], curve[2] = 0.8, 0.2
    assert resolution_at(freq, curve, 0.5) == pytest.approx(640.0 / 1.5)
    # Never below: Nyquist (2 voxels), even when the last shell is NaN.
    above = np.ones(33)
    above[-1] = np.nan
    assert resolution_at(freq, above, 0.143) == pytest.approx(20.0)
    assert np.isnan(resolution_at(freq, np.r_[1.0, np.full(32, np.nan)], 0.5))


def test_independent_noise_is_never_coarser_than_the_box(rng):
    # Two independent white-noise volumes share nothing: every shell from 1 on is ~0, so
    # the resolution is the box (32 A) or, where a noisy shell happens to reach the
    # threshold, finer; never coarser. The old code gave ~64 A at FSC 0.5 (interpolating
    # from DC = 1 down to shell 1 ~ 0).
    for _ in range(4):
        a = rng.standard_normal((32, 32, 32))
        b = rng.standard_normal((32, 32, 32))
        m = evaluate(a, b, voxel_size_A=1.0)
        for key in ("fsc05_resolution_A", "fsc0143_resolution_A"):
            assert 2.0 <= m[key] <= 32.0 + 1e-9, (key, m[key])
        half = half_map_fsc(a, b, voxel_size_A=1.0)
        for key in ("fsc05_resolution_A", "fsc0143_resolution_A"):
            assert 2.0 <= half[key] <= 32.0 + 1e-9, (key, half[key])


# -- band FSC --


def test_band_average_over_the_band_and_its_fallbacks():
    freq = np.arange(17) / 320.0  # 32-voxel box of 10 A: shells of 1/320 per A
    curve = np.linspace(1.0, 0.0, 17)
    # Band [1/400, 1/32]: shells 1..10 (1/32 = 10/320 exactly is included).
    assert band_average(freq, curve) == pytest.approx(curve[1:11].mean())
    # NaN shells are skipped, DC is never used.
    gappy = curve.copy()
    gappy[[0, 4]] = np.nan
    assert band_average(freq, gappy) == pytest.approx(np.delete(curve[1:11], 3).mean())
    # A band between two shells: the nearest shell on each side.
    assert band_average(freq, curve, (1.2 / 320, 1.8 / 320)) == pytest.approx(
        (curve[1] + curve[2]) / 2)
    # A band beyond Nyquist: the last shell; one below shell 1: shell 1.
    assert band_average(freq, curve, (1.0, 2.0)) == pytest.approx(curve[-1])
    assert band_average(freq, curve, (1e-5, 1e-4)) == pytest.approx(curve[1])
    assert np.isnan(band_average(freq, np.r_[1.0, np.full(16, np.nan)]))
    with pytest.raises(ValueError, match="band"):
        band_average(freq, curve, (0.1, 0.01))


def test_specimen_scores_remove_the_slab_profile(rng):
    # Two volumes that share only an ice slab (the same z-profile) and hold independent
    # noise inside: the plain band FSC is high (the slab's kx = ky = 0 line dominates the
    # low shells), the specimen scores, with each XY plane's mean removed, are ~0.
    z = np.linspace(-1.0, 1.0, 32)
    slab = 5.0 * (np.abs(z) < 0.6)[:, None, None] * np.ones((32, 32, 32))
    a = slab + rng.standard_normal(slab.shape)
    b = slab + rng.standard_normal(slab.shape)
    m = evaluate(a, b, voxel_size_A=10.0)
    assert m["band_fsc"] > 0.5
    assert m["wedge_band_fsc"] > 0.5
    # Band [1/400, 1/32] = shells 1-10 here; shell k holds ~2 pi k^2 independent
    # coefficients, so the mean of 10 noise shells has sd ~ sqrt(sum 1/(2 pi k^2)) / 10
    # ~ 0.05 (more in the wedge, a third of each shell or less): 0.25 is > 4 sd.
    assert abs(m["specimen_band_fsc"]) < 0.25
    assert abs(m["specimen_wedge_band_fsc"]) < 0.25
    assert m["band_per_A"] == pytest.approx([1 / 400, 1 / 32])
    # A specimen the two share scores 1 with or without its z-profile.
    same = evaluate(a, a, voxel_size_A=10.0)
    assert same["specimen_band_fsc"] == pytest.approx(1.0)


def test_wedge_band_fsc_follows_the_wedge(volume, rng):
    # As test_wedge_fsc_sees_only_the_missing_wedge: nothing in the wedge -> wedge band
    # FSC 0 (exactly, up to float64 rounding: 1e-9), the wedge exact and the rest noise
    # -> 1 (the affine fit only rescales, which the FSC ignores).
    missing = _wedge_mask(volume.shape, 60.0)
    spectrum = np.fft.fftn(volume)
    no_wedge = np.fft.ifftn(np.where(missing, 0, spectrum)).real
    m = evaluate(no_wedge, volume, voxel_size_A=10.0, max_tilt_deg=60.0)
    assert m["wedge_band_fsc"] == pytest.approx(0.0, abs=1e-9)
    assert m["band_fsc"] > 0.5
    noise = np.fft.fftn(rng.standard_normal(volume.shape)) * np.abs(spectrum).mean()
    only_wedge = np.fft.ifftn(np.where(missing, spectrum, noise)).real
    m = evaluate(only_wedge, volume, voxel_size_A=10.0, max_tilt_deg=60.0)
    assert m["wedge_band_fsc"] == pytest.approx(1.0, abs=1e-9)


def test_evaluate_band_argument(volume):
    # Another band averages other shells: (1/100, 1/40) per A at 10 A voxels are shells
    # 4-10 of 1/400 (a 40-voxel box).
    noisy = volume + np.random.default_rng(1).standard_normal(volume.shape).astype(np.float32)
    m = evaluate(noisy, volume, voxel_size_A=10.0, band_per_A=(1 / 100, 1 / 40))
    freq = np.asarray(m["curves"]["fsc"]["freq_per_A"])
    curve = np.asarray(m["curves"]["fsc"]["fsc"])
    assert m["band_fsc"] == pytest.approx(curve[4:11].mean())
    assert freq[4] == pytest.approx(1 / 100) and freq[10] == pytest.approx(1 / 40)
    with pytest.raises(InputError, match="band"):
        evaluate(noisy, volume, voxel_size_A=10.0, band_per_A=(0.0, 0.1))


# -- half-map FSC --


def test_half_map_fsc_is_gain_and_offset_invariant(volume, rng):
    h = half_map_fsc(3.0 * volume + 7.0, volume, voxel_size_A=10.0)
    assert set(HALF_KEYS) <= set(h)
    # float32 volumes: 1e-6 of relative rounding.
    np.testing.assert_allclose(h["fsc"][1:], 1.0, rtol=1e-6)
    assert h["fsc05_resolution_A"] == pytest.approx(20.0)  # Nyquist: never crosses
    assert h["fsc0143_resolution_A"] == pytest.approx(20.0)
    assert h["band_fsc"] == pytest.approx(1.0, rel=1e-6)
    # Signal plus independent noise in each half: the same curve as fsc() (no fit), and a
    # resolution between Nyquist and the box.
    h1 = volume + rng.standard_normal(volume.shape)
    h2 = volume + rng.standard_normal(volume.shape)
    h = half_map_fsc(h1, h2, voxel_size_A=10.0)
    np.testing.assert_allclose(h["fsc"], fsc(h1, h2, voxel_size_A=10.0)[1], rtol=1e-12)
    assert 20.0 <= h["fsc0143_resolution_A"] <= h["fsc05_resolution_A"] <= 400.0
    json.loads(metrics_to_json(h))


def test_half_map_fsc_refusals(volume):
    with pytest.raises(InputError, match="half map 1 is 24x32x40"):
        half_map_fsc(volume, volume[:-1], voxel_size_A=10.0)
    broken = volume.copy()
    broken[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        half_map_fsc(volume, broken, voxel_size_A=10.0)
    with pytest.raises(InputError, match="voxel size"):
        half_map_fsc(volume, volume, voxel_size_A=0.0)


# -- the evaluate command (in-process through main(), as tests/test_cli.py: the real exit
# codes and the one-line "error: ..." messages) --


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def mrc_pair(tmp_path, volume, rng):
    """Two half maps (signal plus independent noise) and the truth, MRC files at 10 A."""
    paths = {}
    for name, data in (("h1", volume + rng.standard_normal(volume.shape)),
                       ("h2", volume + rng.standard_normal(volume.shape)),
                       ("truth", volume)):
        paths[name] = write_volume(tmp_path / f"{name}.mrc", data, 10.0)
    return paths


def test_evaluate_command_half_maps(mrc_pair, tmp_path, capsys):
    out_json = tmp_path / "halves.json"
    code, out, err = _run(["evaluate", mrc_pair["h1"], "--half2", mrc_pair["h2"],
                           "--json", out_json], capsys)
    assert code == 0, err
    assert "FSC 0.143" in out and "FSC 0.5" in out and "band FSC" in out
    doc = json.loads(out_json.read_text())
    assert set(HALF_KEYS) <= set(doc)
    assert doc["voxel_size_A"] == 10.0  # from the header
    assert doc["freq_per_A"][-1] == pytest.approx(0.05)
    # --voxel-size overrides the header; --force to overwrite the JSON.
    code, _, err = _run(["evaluate", mrc_pair["h1"], "--half2", mrc_pair["h2"], "--json",
                         out_json, "--voxel-size", 5, "--force"], capsys)
    assert code == 0, err
    assert json.loads(out_json.read_text())["freq_per_A"][-1] == pytest.approx(0.1)


def test_evaluate_command_reference_mode_still_works(mrc_pair, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    code, out, err = _run(["evaluate", mrc_pair["h1"], "--reference", mrc_pair["truth"],
                           "--json", out_json], capsys)
    assert code == 0, err
    assert "PSNR" in out and "missing-wedge FSC" in out and "band FSC" in out
    doc = json.loads(out_json.read_text())
    assert set(KEYS) <= set(doc)


@pytest.mark.parametrize("extra, message", [
    (["--reference", "truth", "--half2", "h2"], "not both"),
    ([], "one of them"),
    (["--half2", "h2", "--max-tilt", 50], "need --reference"),
])
def test_evaluate_command_needs_reference_or_half2(mrc_pair, capsys, extra, message):
    args = ["evaluate", mrc_pair["h1"]] + [mrc_pair.get(a, a) for a in extra]
    code, out, err = _run(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1  # one line
    assert message in err
    assert out == ""


def test_evaluate_command_half_map_shape_mismatch(tmp_path, volume, capsys):
    a = write_volume(tmp_path / "a.mrc", volume, 10.0)
    b = write_volume(tmp_path / "b.mrc", volume[:-2], 10.0)
    code, _, err = _run(["evaluate", a, "--half2", b], capsys)
    assert code == 2
    assert "half map 1 is 24x32x40 (z,y,x) but the half map 2 is 22x32x40" in err
