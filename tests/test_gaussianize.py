"""gaussianize (fit Gaussians to a volume: gaussian/gaussianize.py) and export_gaussians
(CSV / 3DGS-style PLY: io/export.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.gaussian.gaussianize import GaussianizeResult, gaussianize
from taichi_etgs.gaussian.params import GaussianParams, quats_to_rotmats
from taichi_etgs.io.export import CSV_COLUMNS, export_gaussians, ply_properties

SHAPE = (24, 32, 32)
FLOOR = 2.0  # the phantom's background level


def blob_phantom(shape=SHAPE, n_blobs: int = 30, seed: int = 0) -> np.ndarray:
    """Anisotropic Gaussian blobs (std 1.5-3.5 voxels) on a constant floor. [nz, ny, nx]"""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) + 0.5 - n / 2 for n in shape), indexing="ij")
    vol = np.full(shape, FLOOR)
    for _ in range(n_blobs):
        c = [rng.uniform(-n / 2 + 3, n / 2 - 3) for n in shape]
        s = rng.uniform(1.5, 3.5, 3)
        vol += rng.uniform(0.5, 2.0) * np.exp(-0.5 * (((z - c[0]) / s[0]) ** 2
                                                     + ((y - c[1]) / s[1]) ** 2
                                                     + ((x - c[2]) / s[2]) ** 2))
    return vol


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - ref) ** 2))
    return 10 * np.log10((ref.max() - ref.min()) ** 2 / mse)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def fitted():
    """One default fit of the phantom, shared by the tests that only read it."""
    from taichi_etgs import runtime

    cfg = runtime.current()
    if cfg is None or cfg.arch != "cpu" or cfg.precision != "f32":
        runtime.init("cpu", threads=int(os.environ.get("TAICHI_ETGS_TEST_THREADS", "2")),
                     precision="f32")
    vol = blob_phantom()
    calls = []
    result = gaussianize(vol, max_gaussians=1500, iterations=60,
                         progress=lambda it, loss: calls.append((it, loss)))
    return vol, result, calls


# ------------------------------------------------------------------------------------------
# gaussianize
# ------------------------------------------------------------------------------------------

def test_gaussianize_reproduces_the_volume(fitted):
    from taichi_etgs.gaussian.render import voxelize_gaussians

    vol, result, _ = fitted
    assert isinstance(result, GaussianizeResult)
    assert 1 <= result.params.n <= 1500
    assert result.background == pytest.approx(np.median(vol))
    model = voxelize_gaussians(result.params, SHAPE) + result.background
    # Measured 0.997; below-median voxels (the floor under the blobs' tails) are the error.
    assert corr(model, vol) > 0.99
    # Measured 35.8 dB; the cap is the 50 % of voxels between the floor (2.0) and the
    # median (2.10) that the model, sitting on the median, cannot go below.
    assert result.psnr_db > 33.0
    # The reported PSNR is the model's (voxeliser in float32: 0.01 dB is ample).
    assert result.psnr_db == pytest.approx(psnr(model, vol), abs=0.01)
    assert result.final_loss * vol.var() == pytest.approx(np.mean((model - vol) ** 2),
                                                          rel=1e-3)


def test_gaussianize_loss_decreases(fitted):
    _, result, calls = fitted
    losses = np.array(result.losses)
    assert losses.shape == (60,)
    # Measured 0.031 -> 0.016 (normalised MSE); the initial model is already close.
    assert result.final_loss < 0.6 * losses[0]
    assert losses[-1] < losses[0] and losses[-1] <= losses[:10].min()
    # After the warm-up the decayed steps keep it nearly monotone (0.1 % float32 slack).
    assert np.all(np.diff(losses[20:]) <= 1e-3 * losses[20:-1])
    assert [c[0] for c in calls] == list(range(1, 61))
    np.testing.assert_allclose([c[1] for c in calls], losses)


def test_gaussianize_model_is_in_volume_units(fitted):
    vol, result, _ = fitted
    p = result.params
    assert np.all(p.densities() > 0)
    # Peak densities are of the order of the blobs' amplitudes above the median (<= ~4).
    assert np.median(p.densities()) < vol.max() - result.background
    half_xyz = np.array(SHAPE[::-1]) / 2
    assert np.all(np.abs(p.means_xyz) <= half_xyz + 3)


def test_gaussianize_with_the_true_floor_as_background(taichi_cpu):
    vol = blob_phantom()
    result = gaussianize(vol, max_gaussians=1000, iterations=40, background=FLOOR)
    assert result.background == FLOOR
    # Measured 50 dB: with nothing below the background, the fit is limited only by the
    # count and the iterations (the default median background gives ~35 dB here).
    assert result.psnr_db > 45.0


def test_gaussianize_does_not_depend_on_the_volume_units(taichi_cpu):
    """gain * volume + offset gives the same fit, densities times gain."""
    vol = blob_phantom((12, 16, 16), n_blobs=6, seed=3)
    a = gaussianize(vol, max_gaussians=200, iterations=8)
    b = gaussianize(1000.0 * vol - 7.0, max_gaussians=200, iterations=8)
    assert b.background == pytest.approx(1000.0 * a.background - 7.0)
    # float32 arithmetic on normalised values: relative agreement to ~1e-5 expected.
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-4)
    assert b.psnr_db == pytest.approx(a.psnr_db, abs=1e-3)
    np.testing.assert_allclose(b.params.means_xyz, a.params.means_xyz, atol=1e-4)
    np.testing.assert_allclose(b.params.densities(), 1000.0 * a.params.densities(),
                               rtol=1e-4)


def test_gaussianize_zero_iterations_returns_the_initial_model(taichi_cpu):
    vol = blob_phantom((12, 16, 16), n_blobs=6, seed=1)
    result = gaussianize(vol, max_gaussians=100, iterations=0)
    assert result.losses == [] and 1 <= result.params.n <= 100
    assert np.isfinite(result.psnr_db) and np.isfinite(result.final_loss)


@pytest.mark.parametrize("volume, kwargs, message", [
    (np.zeros((8, 8)), {}, "3-D"),
    (np.full((4, 4, 4), 3.0), {}, "constant"),
    (np.where(np.eye(4, dtype=bool)[None], np.nan, 1.0) * np.ones((4, 4, 4)), {}, "NaN"),
    (np.arange(64.0).reshape(4, 4, 4), {"iterations": -1}, "iterations"),
    (np.arange(64.0).reshape(4, 4, 4), {"max_gaussians": 0}, "max_gaussians"),
    (np.arange(64.0).reshape(4, 4, 4), {"lr_scale": 0.0}, "lr_scale"),
], ids=["2d", "constant", "nan", "negative-iterations", "no-gaussians", "zero-lr"])
def test_gaussianize_rejects_bad_input(volume, kwargs, message):
    with pytest.raises(InputError, match=message):
        gaussianize(volume, **kwargs)


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------

@pytest.fixture
def model(rng) -> GaussianParams:
    """Five rotated anisotropic Gaussians; quaternions unnormalised, some with w < 0."""
    n = 5
    quats = rng.normal(size=(n, 4))
    quats[0, 0] = -abs(quats[0, 0]) - 0.1  # w < 0: exported as -q
    quats *= rng.uniform(0.5, 3.0, (n, 1))
    return GaussianParams.from_activated(
        means_xyz=rng.uniform(-10, 10, (n, 3)), scales=rng.uniform(0.5, 4.0, (n, 3)),
        densities=np.array([0.01, 0.3, 1.0, 2.0, 7.5]), quats_wxyz=quats)


def _unit_quats(p: GaussianParams) -> np.ndarray:
    q = p.quats_wxyz / np.linalg.norm(p.quats_wxyz, axis=1, keepdims=True)
    return q * np.sign(q[:, :1])


def read_ply(path) -> tuple[list[str], np.ndarray]:
    """Header lines and the vertex records of a binary little-endian float PLY."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    names = [line.split()[2] for line in header if line.startswith("property ")]
    assert all(line.split()[1] == "float" for line in header if line.startswith("property "))
    n = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    dtype = np.dtype([(name, "<f4") for name in names])
    assert len(raw) - end == n * dtype.itemsize  # nothing missing, nothing extra
    return header, np.frombuffer(raw, dtype=dtype, offset=end, count=n)


def test_csv_round_trip(tmp_path, model):
    path = export_gaussians(model, tmp_path / "g.csv", voxel_size_A=2.5)
    assert path == tmp_path / "g.csv"
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    assert table.shape == (5, 11)
    # 9 significant digits: relative 1e-8 is the format's precision.
    np.testing.assert_allclose(table[:, 0:3], model.means_xyz * 2.5, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(table[:, 3:6], model.scales() * 2.5, rtol=1e-8)
    np.testing.assert_allclose(table[:, 6:10], _unit_quats(model), rtol=1e-8, atol=1e-9)
    assert np.all(table[:, 6] >= 0)
    np.testing.assert_allclose(table[:, 10], model.densities(), rtol=1e-8)
    # The exported quaternion is the model's rotation (q and -q agree).
    np.testing.assert_allclose(quats_to_rotmats(table[:, 6:10]), model.rotations(),
                               atol=1e-7)


@pytest.mark.parametrize("origin, shift_vox", [("centre", 0.0), ("center", 0.0),
                                               ("corner", 0.5), ("index", 0.0)])
def test_export_origins(tmp_path, model, origin, shift_vox):
    shape_zyx = (10, 20, 40)
    export_gaussians(model, tmp_path / "g.csv", voxel_size_A=3.0, origin=origin,
                     shape_zyx=shape_zyx)
    xyz = np.loadtxt(tmp_path / "g.csv", delimiter=",", skiprows=1)[:, :3]
    if origin in ("centre", "center"):
        expected = model.means_xyz * 3.0
    else:
        # Voxel index of a centred coordinate: i = x + n/2 - 0.5; "index" puts voxel i at
        # i * voxel_size, "corner" at (i + 0.5) * voxel_size.
        index = model.means_xyz + np.array([40, 20, 10]) / 2 - 0.5
        expected = (index + shift_vox) * 3.0
    np.testing.assert_allclose(xyz, expected, rtol=1e-8, atol=1e-9)


def test_export_origin_needs_shape_and_a_known_name(tmp_path, model):
    with pytest.raises(InputError, match="shape_zyx"):
        export_gaussians(model, tmp_path / "g.csv", origin="corner")
    with pytest.raises(InputError, match="origin"):
        export_gaussians(model, tmp_path / "g.csv", origin="middle")
    assert not (tmp_path / "g.csv").exists()


@pytest.mark.parametrize("sh_rest", [False, True], ids=["sh0", "sh3"])
def test_ply_layout_and_values(tmp_path, model, sh_rest):
    export_gaussians(model, tmp_path / "g.ply", voxel_size_A=2.0, sh_rest=sh_rest)
    header, v = read_ply(tmp_path / "g.ply")
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    assert "element vertex 5" in header
    names = list(v.dtype.names)
    assert names == list(ply_properties(sh_rest))
    # The 3DGS reference layout, in its order, then ours.
    rest = [f"f_rest_{i}" for i in range(45)] if sh_rest else []
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + rest
                     + ["opacity", "scale_0", "scale_1", "scale_2",
                        "rot_0", "rot_1", "rot_2", "rot_3", "sx", "sy", "sz", "density"])
    f32 = {"rtol": 2e-7 * 4, "atol": 1e-6}  # float32 storage
    xyz = np.column_stack([v["x"], v["y"], v["z"]])
    np.testing.assert_allclose(xyz, model.means_xyz * 2.0, **f32)
    sxyz = np.column_stack([v["sx"], v["sy"], v["sz"]])
    np.testing.assert_allclose(sxyz, model.scales() * 2.0, **f32)
    log_s = np.column_stack([v[f"scale_{k}"] for k in range(3)])
    np.testing.assert_allclose(log_s, np.log(model.scales() * 2.0), **f32)
    rot = np.column_stack([v[f"rot_{k}"] for k in range(4)])
    np.testing.assert_allclose(rot, _unit_quats(model), **f32)
    np.testing.assert_allclose(v["density"], model.densities(), **f32)
    for k in ("nx", "ny", "nz", *rest):
        assert np.all(v[k] == 0)
    # opacity = logit(a), grey f_dc = (a - 0.5) / C0, a = density / its 99th percentile
    # clipped to [1e-4, 1 - 1e-4].
    a = np.clip(model.densities() / np.quantile(model.densities(), 0.99), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"].astype(np.float64))), a,
                               rtol=1e-5)
    for c in range(3):
        np.testing.assert_allclose(0.5 + 0.28209479177387814 * v[f"f_dc_{c}"], a, atol=1e-6)
    assert v["opacity"][np.argmax(model.densities())] > 5  # the densest: nearly opaque


def test_ply_of_an_empty_model(tmp_path):
    empty = GaussianParams(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0))
    export_gaussians(empty, tmp_path / "e.ply")
    header, v = read_ply(tmp_path / "e.ply")
    assert "element vertex 0" in header and v.shape == (0,)


def test_export_refuses_to_overwrite(tmp_path, model):
    path = tmp_path / "g.ply"
    export_gaussians(model, path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists; use --force to overwrite"):
        export_gaussians(model.subset(slice(0, 2)), path)
    assert path.read_bytes() == before
    export_gaussians(model.subset(slice(0, 2)), path, force=True)
    assert read_ply(path)[1].shape == (2,)
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ply"]


def test_export_format_from_argument_or_extension(tmp_path, model):
    export_gaussians(model, tmp_path / "g.txt", fmt="CSV")
    assert (tmp_path / "g.txt").read_text().startswith("x_A,")
    export_gaussians(model, tmp_path / "G.PLY")
    assert (tmp_path / "G.PLY").read_bytes().startswith(b"ply\n")
    with pytest.raises(InputError, match="unknown export format"):
        export_gaussians(model, tmp_path / "g.ply", fmt="obj")
    with pytest.raises(InputError, match="extension"):
        export_gaussians(model, tmp_path / "g.splat")
    assert not (tmp_path / "g.ply").exists() and not (tmp_path / "g.splat").exists()


def test_export_rejects_bad_values(tmp_path, model):
    with pytest.raises(InputError, match="folder"):
        export_gaussians(model, tmp_path / "missing" / "g.csv")
    with pytest.raises(InputError, match="voxel size"):
        export_gaussians(model, tmp_path / "g.csv", voxel_size_A=0.0)
    bad = model.copy()
    bad.means_xyz[1, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        export_gaussians(bad, tmp_path / "g.csv")
    assert list(tmp_path.iterdir()) == []
