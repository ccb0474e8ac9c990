"""Simulator: projection against analytic integrals, determinism, noise models, output files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtr

from taichi_etgs.errors import InputError
from taichi_etgs.simulation.phantom import make_phantom
from taichi_etgs.simulation.simulate import (
    SimulationConfig,
    project_specimen,
    simulate_tilt_series,
    specimen_grid_shape,
    tilt_scheme,
    write_simulation,
)
from taichi_etgs.simulation.specimen import ICE_POTENTIAL_V, GaussianCloud, Specimen, load_structure

STRUCTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
APOFERRITIN = STRUCTURES / "4v1w.cif.gz"

# Tiny but complete: 11 tilts -60..60, every kind of object.
TINY = {"shape_zyx": (32, 48, 48), "tilt_step_deg": 12.0, "seed": 7}


def _blob_specimen(centre_vox_zyx, sigma_vox, peak_V, pixel_A):
    sigma_A = sigma_vox * pixel_A
    integral = peak_V * (2 * np.pi) ** 1.5 * sigma_A ** 3
    cloud = GaussianCloud(np.zeros((1, 3)), np.array([sigma_A]), np.array([integral]),
                          np.zeros(1), np.array([sigma_A]),
                          poses=[(np.eye(3), np.asarray(centre_vox_zyx) * pixel_A)])
    return Specimen(clouds=[cloud])


@pytest.mark.parametrize("isolated", [True, False])
@pytest.mark.parametrize("centre", [(0.0, 0.0, 0.0), (6.3, -5.2, 9.7)])
def test_blob_projection_matches_analytic_line_integral(taichi_cpu, centre, isolated):
    # One isotropic Gaussian of peak rho and width sigma (output voxels) at (z0, y0, x0)
    # projects to rho sqrt(2 pi) sigma exp(-d^2 / 2 sigma^2) around
    # (u0, v0) = (x0 cos + z0 sin, y0); a detector pixel averages it over its area
    # (erf differences). The off-centre blob pins the sign of the z sin term.
    pixel_A, sigma, rho = 10.0, 2.0, 3.0
    shape = (32, 40, 48)
    tilts = np.array([-60.0, -33.0, 0.0, 21.0, 45.0, 60.0])
    views, truth = project_specimen(_blob_specimen(centre, sigma, rho, pixel_A), shape,
                                    pixel_A, tilts, oversampling=2, isolated=isolated)
    assert views.shape == (tilts.size, 40, 48)
    z0, y0, x0 = centre
    u = np.arange(48) + 0.5 - 24
    v = np.arange(40) + 0.5 - 20
    for k, theta in enumerate(np.deg2rad(tilts)):
        u0 = x0 * np.cos(theta) + z0 * np.sin(theta)
        pu = ndtr((u + 0.5 - u0) / sigma) - ndtr((u - 0.5 - u0) / sigma)
        pv = ndtr((v + 0.5 - y0) / sigma) - ndtr((v - 0.5 - y0) / sigma)
        expected = rho * np.sqrt(2 * np.pi) * sigma * 2 * np.pi * sigma ** 2 * np.outer(pv, pu)
        # 1% of the peak: Joseph's linear interpolation on the 2x grid slightly widens
        # the blob (measured 0.45%).
        np.testing.assert_allclose(views[k], expected, rtol=0, atol=0.01 * expected.max())
    # The ground truth holds the blob's mass (volume integral / voxel volume).
    mass_vox = rho * (2 * np.pi) ** 1.5 * sigma ** 3
    assert truth.sum() == pytest.approx(mass_vox, rel=1e-3)


def test_extended_ice_slab_is_seen_through_at_every_pixel(taichi_cpu):
    # A laterally extended slab of thickness T projects to T / cos(theta) at every pixel,
    # edges included: the specimen region reaches beyond what any ray sees.
    shape, pixel_A, thickness_vox = (24, 8, 40), 10.0, 20
    tilts = np.array([-60.0, -30.0, 0.0, 45.0, 60.0])
    slab = Specimen(ice_thickness_A=thickness_vox * pixel_A)
    views, truth = project_specimen(slab, shape, pixel_A, tilts, oversampling=2)
    expected = ICE_POTENTIAL_V * thickness_vox / np.cos(np.deg2rad(tilts))
    # Every pixel of a view sees the same path (edges included): uniform to float32
    # rounding.
    spread = views.max(axis=(1, 2)) - views.min(axis=(1, 2))
    assert np.all(spread < 1e-4 * expected)
    # 0.5%: Joseph's interpolation across the slab's sharp faces (measured 0.16% at 60 deg).
    np.testing.assert_allclose(views.mean(axis=(1, 2)), expected, rtol=5e-3)
    # Ground truth: ice over the 20 central voxels of 24, vacuum above and below.
    np.testing.assert_allclose(truth[2:22], ICE_POTENTIAL_V, rtol=1e-6)
    np.testing.assert_allclose(truth[:2], 0.0, atol=1e-6)
    # Isolated: the slab is cut to the box, so high-tilt edge pixels see less.
    iso, _ = project_specimen(slab, shape, pixel_A, tilts, oversampling=2, isolated=True)
    assert iso[0, :, 0].max() < 0.9 * expected[0]
    np.testing.assert_allclose(iso[2], expected[2], rtol=1e-5)


def test_specimen_grid_covers_every_ray():
    nz, nx = specimen_grid_shape((64, 128, 128), 10.0, 60.0, 640.0, isolated=False)
    # nx/2 / cos 60 + nz/2 tan 60 = 128 + 55.4 -> 184 each side
    assert (nz, nx) == (64, 368)
    assert specimen_grid_shape((64, 128, 128), 10.0, 60.0, 640.0, isolated=True) == (64, 128)
    # Ice thicker than the box: the specimen grid grows in Z (same parity as the box).
    nz, _ = specimen_grid_shape((64, 128, 128), 10.0, 60.0, 701.0, isolated=False)
    assert nz == 72


def test_same_seed_same_series_other_seed_differs(taichi_cpu):
    a = simulate_tilt_series(SimulationConfig(**TINY))
    b = simulate_tilt_series(SimulationConfig(**TINY))
    np.testing.assert_array_equal(a.tilts, b.tilts)
    np.testing.assert_array_equal(a.ground_truth, b.ground_truth)
    assert a.info == b.info
    c = simulate_tilt_series(SimulationConfig(**{**TINY, "seed": 8}))
    assert not np.array_equal(a.ground_truth, c.ground_truth)
    assert not np.array_equal(a.tilts, c.tilts)


def test_physical_noise_is_deterministic(taichi_cpu):
    cfg = SimulationConfig(**TINY, noise="physical", dose_symmetric=True)
    a = simulate_tilt_series(cfg)
    b = simulate_tilt_series(cfg)
    np.testing.assert_array_equal(a.tilts, b.tilts)


def test_result_shapes_units_and_dark_contrast(taichi_cpu):
    clean = simulate_tilt_series(SimulationConfig(**TINY, noise="none"))
    assert clean.tilts.shape == (11, 48, 48) and clean.tilts.dtype == np.float32
    assert clean.ground_truth.shape == (32, 48, 48)
    assert clean.ground_truth.dtype == np.float32
    np.testing.assert_allclose(clean.tilts_deg, np.arange(-60, 61, 12))
    assert clean.pixel_size_A == 10.0
    # Positive density in the ground truth (ice fills the box), dark views.
    assert clean.ground_truth.min() > 0
    assert np.median(clean.ground_truth) == pytest.approx(ICE_POTENTIAL_V, abs=1e-3)
    assert clean.tilts.max() < 0
    # Resolved configuration: automatic counts and ice thickness are recorded.
    assert clean.config["ice_thickness_A"] == 320.0
    assert clean.config["n_particles"] >= 1
    assert clean.config["seed"] == 7


def test_gaussian_noise_has_the_requested_snr(taichi_cpu):
    # Specimen and noise come from separate streams: the same seed gives the same
    # specimen with any noise model, so the difference is the noise alone.
    clean = simulate_tilt_series(SimulationConfig(**TINY, noise="none"))
    noisy = simulate_tilt_series(SimulationConfig(**TINY, noise="gaussian", snr=0.25))
    np.testing.assert_array_equal(clean.ground_truth, noisy.ground_truth)
    noise = noisy.tilts - clean.tilts
    signal_var = np.var(clean.tilts[5], dtype=np.float64)  # the 0 deg view
    # 11 x 48 x 48 samples: the variance estimate is good to ~1%.
    assert signal_var / np.var(noise, dtype=np.float64) == pytest.approx(0.25, rel=0.03)
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())


def test_physical_noise_counts_and_contrast(taichi_cpu):
    from scipy.ndimage import gaussian_filter

    dose = 2000.0
    cfg = SimulationConfig(**TINY, noise="physical", total_dose_e_per_A2=dose)
    phys = simulate_tilt_series(cfg)
    clean = simulate_tilt_series(SimulationConfig(**TINY, noise="none"))
    counts = phys.tilts
    assert counts.min() >= 0 and np.array_equal(counts, np.round(counts))
    # Mean counts: dose per view x pixel area x zero-loss fraction (weak phase: the
    # contrast averages out).
    per_view = dose / 11 * 10.0 ** 2 * np.asarray(phys.info["noise"]["zero_loss_fraction"])
    np.testing.assert_allclose(counts.mean(axis=(1, 2)), per_view, rtol=0.03)
    # Zero-loss attenuation grows with the path: 1/cos(theta) thicker at high tilt.
    frac = np.asarray(phys.info["noise"]["zero_loss_fraction"])
    assert frac[0] < frac[5] and frac[-1] < frac[5]
    # Dark contrast at low frequency: counts follow the negated projection.
    r = np.corrcoef(gaussian_filter(counts[5], 2).ravel(),
                    gaussian_filter(clean.tilts[5], 2).ravel())[0, 1]
    assert r > 0.5


def test_ctf_and_constants():
    from taichi_etgs.simulation.imaging import ctf_2d, electron_wavelength_A, interaction_constant

    assert electron_wavelength_A(300) == pytest.approx(0.019687, rel=1e-4)
    assert interaction_constant(300) == pytest.approx(6.526e-4, rel=2e-3)
    ctf = ctf_2d((64, 64), 5.0, 3.0, amplitude_contrast=0.07)
    assert ctf[0, 0] == pytest.approx(-0.07)  # dark at k = 0
    # First zero of -sin(chi) (ignoring Cs, small at this k): k = 1 / sqrt(lambda df).
    k0 = 1 / np.sqrt(electron_wavelength_A(300) * 3e4)
    k = np.fft.rfftfreq(4096, d=0.5)
    line = ctf_2d((1, 4096), 0.5, 3.0, amplitude_contrast=0.0)[0]
    first_zero = k[1:][np.argmax(np.diff(np.sign(line[1:])) != 0)]
    assert first_zero == pytest.approx(k0, rel=0.02)


def test_tilt_schemes():
    default = tilt_scheme(SimulationConfig())
    assert default.tilts_deg.size == 41
    np.testing.assert_allclose(default.tilts_deg[[0, 1, -1]], [-60, -57, 60])
    np.testing.assert_allclose(default.dose_e_per_A2.sum(), 120.0)
    np.testing.assert_array_equal(default.acquisition_rank, np.arange(41))
    # Hagen's dose-symmetric order: 0, +3, -3, -6, +6, +9, -9, -12, ...
    sym = tilt_scheme(SimulationConfig(dose_symmetric=True, stack_order="acquisition"))
    np.testing.assert_allclose(sym.tilts_deg[:8], [0, 3, -3, -6, 6, 9, -9, -12])
    np.testing.assert_array_equal(sym.acquisition_rank, np.arange(41))
    np.testing.assert_allclose(sym.prior_dose_e_per_A2[:3], [0, 120 / 41, 240 / 41])
    # Sorted stack, same doses: each view keeps its place in the acquisition.
    sorted_ = tilt_scheme(SimulationConfig(dose_symmetric=True))
    np.testing.assert_allclose(sorted_.tilts_deg, default.tilts_deg)
    assert sorted_.acquisition_rank[20] == 0 and sorted_.acquisition_rank[21] == 1
    # Groups of two alternate: -60 is the 40th view taken and +60 the last.
    assert sorted_.acquisition_rank[0] == 39 and sorted_.acquisition_rank[-1] == 40
    assert sorted_.prior_dose_e_per_A2[-1] == pytest.approx(120 - 120 / 41)
    explicit = tilt_scheme(SimulationConfig(tilts_deg=(10, -20, 0)))
    np.testing.assert_allclose(explicit.tilts_deg, [-20, 0, 10])


@pytest.mark.parametrize("bad", [
    {"oversampling": 1}, {"noise": "poisson"}, {"snr": 0}, {"shape_zyx": (0, 8, 8)},
    {"tilt_min_deg": 10, "tilt_max_deg": -10}, {"n_particles": -1},
    {"tilts_deg": (0, 95)},
])
def test_impossible_settings_raise_input_error(bad):
    with pytest.raises(InputError):
        tilt_scheme(SimulationConfig(**bad))


def test_missing_atomic_model_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        simulate_tilt_series(SimulationConfig(**TINY, structures=(str(tmp_path / "x.cif"),)))
    not_a_model = tmp_path / "notes.pdb"
    not_a_model.write_text("this is not a PDB file\n")
    with pytest.raises(InputError):
        load_structure(not_a_model)


def test_write_simulation_files(taichi_cpu, tmp_path):
    import mrcfile

    from taichi_etgs.io.angles import read_tilt_angles

    result = simulate_tilt_series(SimulationConfig(**TINY))
    paths = write_simulation(result, tmp_path / "sim")
    assert sorted(p.name for p in paths.values()) == sorted(
        ["tilts.mrc", "tilts.tlt", "ground_truth.mrc", "simulation.json"])
    with mrcfile.open(paths["tilts.mrc"], permissive=False) as mrc:
        np.testing.assert_array_equal(mrc.data, result.tilts)
        assert float(mrc.voxel_size.x) == pytest.approx(10.0)
    with mrcfile.open(paths["ground_truth.mrc"]) as mrc:
        np.testing.assert_array_equal(mrc.data, result.ground_truth)
    np.testing.assert_allclose(read_tilt_angles(paths["tilts.tlt"]), result.tilts_deg)
    doc = json.loads(paths["simulation.json"].read_text())
    assert doc["seed"] == 7 and doc["config"]["seed"] == 7
    assert doc["config"]["shape_zyx"] == [32, 48, 48]
    assert doc["derived"]["contrast"] == "dark"
    # A second write refuses to overwrite, and writes nothing; force overwrites.
    with pytest.raises(InputError, match="--force"):
        write_simulation(result, tmp_path / "sim")
    write_simulation(result, tmp_path / "sim", force=True)


def test_phantom_is_fast_positive_and_deterministic():
    a = make_phantom((32, 64, 64), seed=3)
    b = make_phantom((32, 64, 64), seed=3)
    c = make_phantom((32, 64, 64), seed=4)
    assert a.shape == (32, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0
    assert np.median(a) == pytest.approx(ICE_POTENTIAL_V, abs=1e-3)  # mostly ice
    assert a.max() > ICE_POTENTIAL_V + 1.0  # and particles / membrane heads
    thin = make_phantom((32, 64, 64), seed=3, ice_thickness_A=160.0)
    assert thin[0].max() == 0.0  # vacuum above a thinner slab


@pytest.mark.skipif(not APOFERRITIN.is_file(), reason=f"{APOFERRITIN} not present")
def test_apoferritin_from_atomic_model(taichi_cpu):
    cloud = load_structure(APOFERRITIN)
    assert cloud.sigma_A.size > 30000  # 24 chains, waters removed
    assert 60 < cloud.radius_A < 80  # 12 nm cage
    # Potential integral ~ C f_e(0) per atom: ~115 V A^3 per heavy atom of protein.
    per_atom = cloud.potential_VA3.sum() / cloud.sigma_A.size
    assert 100 < per_atom < 130
    cfg = SimulationConfig(shape_zyx=(32, 48, 48), tilt_step_deg=12.0, noise="none",
                           structures=(str(APOFERRITIN),), n_particles=1, n_vesicles=0,
                           n_filaments=0, isolated=True, seed=1)
    result = simulate_tilt_series(cfg)
    (particle,) = result.info["objects"]["particles"]
    assert particle["name"] == "4v1w"
    centre = np.asarray(particle["centre_zyx_A"]) / 10.0 + np.array([16, 24, 24]) - 0.5
    z, y, x = np.round(centre).astype(int)
    gt = result.ground_truth
    # A hollow protein shell: ice in the cavity, protein (denser than ice) at ~5 nm.
    assert gt[z, y, x] == pytest.approx(ICE_POTENTIAL_V, abs=0.3)
    shell = max(gt[z, y - 6:y - 3, x].max(), gt[z, y + 4:y + 7, x].max())
    assert shell > ICE_POTENTIAL_V + 1.0


def test_objects_that_do_not_fit_are_left_out_with_a_warning():
    from taichi_etgs.simulation.specimen import PlacementWarning

    with pytest.warns(PlacementWarning, match="particles"):
        volume = make_phantom((16, 32, 32), seed=0, n_particles=200, n_vesicles=0,
                              n_filaments=0)
    assert volume.shape == (16, 32, 32)
