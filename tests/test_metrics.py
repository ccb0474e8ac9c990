"""Metrics on cases with known answers; evaluate's refusals; JSON and figure output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from taichi_etgs.errors import InputError
from taichi_etgs.metrics import (
    affine_fit,
    correlation,
    evaluate,
    fsc,
    metrics_to_json,
    normalise_to_reference,
    psnr,
    resolution_at,
    ssim3d,
    wedge_fsc,
    write_metrics_json,
)

KEYS = ("psnr", "ssim", "correlation", "fsc05_resolution_A", "fsc0143_resolution_A",
        "wedge_fsc", "curves")


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
    from taichi_etgs import metrics

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
    from taichi_etgs.figures import evaluation_figure

    figure = evaluation_figure(0.5 * volume + 1.0, volume, m, tmp_path / "eval.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="--force"):
        evaluation_figure(volume, volume, m, figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.png", "metrics.json"]


def test_comparison_figure(volume, tmp_path):
    pytest.importorskip("matplotlib")
    from taichi_etgs.figures import comparison_figure

    volumes = {"a": 2.0 * volume, "b": -volume + 0.1}
    metrics = {k: evaluate(v, volume, voxel_size_A=10.0) for k, v in volumes.items()}
    path = comparison_figure(volumes, volume, metrics, tmp_path / "cmp.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="--force"):
        comparison_figure(volumes, volume, metrics, path)
    with pytest.raises(InputError, match="does not match"):
        comparison_figure({"c": volume[:-1]}, volume, {}, tmp_path / "x.png")
