"""HDF5 state files: round trips, RNG resume, atomic writes, every error path, checksum."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from taichi_etgs import __version__
from taichi_etgs.errors import InputError
from taichi_etgs.gaussian import state as state_mod
from taichi_etgs.gaussian.optim import GROUPS, AdamState
from taichi_etgs.gaussian.params import GaussianParams
from taichi_etgs.gaussian.state import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModelGeometry,
    input_checksum,
    load_state,
    restore_rng,
    save_state,
)


def _match(*parts: str) -> str:
    return ".*".join(re.escape(p) for p in parts)


def _params(rng, n=9, dtype=np.float64) -> GaussianParams:
    return GaussianParams(rng.standard_normal((n, 3)), rng.standard_normal((n, 3)),
                          rng.standard_normal((n, 4)), rng.standard_normal(n)).astype(dtype)


def _adam(rng, n=9, dtype=np.float64) -> AdamState:
    return AdamState(step=17, exp_avg=_params(rng, n, dtype),
                     exp_avg_sq=GaussianParams(*(np.abs(getattr(_params(rng, n, dtype), g))
                                                 for g in GROUPS)),
                     lr={"means_xyz": 0.0512, "log_scales": 0.01, "quats_wxyz": 0.01,
                         "density_raw": 0.05}, beta1=0.9, beta2=0.999, eps=1e-15)


CONFIG = {"iterations": 20000, "lambda_dssim": 0.2, "tilt_weights": "cos",
          "densify": {"every": 200, "from": 300, "grad_threshold": 2.5e-7, "max": None},
          "flags": [True, False], "name": "run \u00e5", "big": 2 ** 70,
          "third": 1.0 / 3.0, "views_per_step": np.int64(10)}
GEOMETRY = {"tilts_deg": np.arange(-60.0, 61.0, 3.0), "shape_zyx": (64, 128, 128),
            "pixel_size_A": 13.48, "excluded_views": np.array([0, 40], dtype=np.int32)}


def _save(path, rng, dtype=np.float64, adam=True, **kw):
    params = _params(rng, dtype=dtype)
    adam_state = _adam(rng, dtype=dtype) if adam else None
    gen = np.random.default_rng(2024)
    save_state(path, params, adam_state, 1234, gen.bit_generator.state, CONFIG, GEOMETRY,
               "sha256:abc", **kw)
    return params, adam_state


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_round_trip_is_bit_for_bit(tmp_path, rng, dtype):
    path = tmp_path / "run.state.h5"
    params, adam = _save(path, rng, dtype)
    st = load_state(path)
    for g in GROUPS:
        for saved, loaded in [(params, st.params), (adam.exp_avg, st.adam.exp_avg),
                              (adam.exp_avg_sq, st.adam.exp_avg_sq)]:
            a, b = getattr(saved, g), getattr(loaded, g)
            assert b.dtype == dtype and b.shape == a.shape
            assert a.tobytes() == b.tobytes()  # bit for bit
    assert st.adam.step == 17 and st.adam.lr == adam.lr
    assert (st.adam.beta1, st.adam.beta2, st.adam.eps) == (0.9, 0.999, 1e-15)
    assert st.iteration == 1234 and st.input_checksum == "sha256:abc"
    assert st.format_version == FORMAT_VERSION and st.package_version == __version__
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["format_version"] == 1


def test_config_and_geometry_round_trip(tmp_path, rng):
    path = tmp_path / "s.h5"
    _save(path, rng)
    st = load_state(path)
    c = st.config
    assert c["densify"] == CONFIG["densify"] and c["flags"] == [True, False]
    assert c["name"] == "run \u00e5" and c["big"] == 2 ** 70
    assert c["third"] == 1.0 / 3.0  # exact float round trip
    assert c["views_per_step"] == 10 and type(c["views_per_step"]) is int
    g = st.geometry
    assert isinstance(g, ModelGeometry)
    assert g.tilts_deg.dtype == np.float64
    np.testing.assert_array_equal(g.tilts_deg, GEOMETRY["tilts_deg"])
    assert g.shape_zyx == (64, 128, 128) and g.pixel_size_A == 13.48
    # A key this version does not know is kept as it was, and written back.
    assert g.extra["excluded_views"].dtype == np.int32
    np.testing.assert_array_equal(g.extra["excluded_views"], [0, 40])
    assert set(g.to_dict()) == set(GEOMETRY)


def test_model_geometry_reads_older_files_and_names_bad_values_in_words(tmp_path, rng):
    # What taichi-etgs wrote before the geometry was typed (no contrast, no run record).
    old = {"tilts_deg": [-60.0, 0.0, 60.0], "shape_zyx": [12, 10, 24],
           "model_shape_zyx": [12, 10, 40], "view_scale": 2.5, "n_views": 3,
           "detector_yx": [10, 24], "pixel_size_A": 0.0, "source": "/data/ts.mrc",
           "background": 0.5}
    path = tmp_path / "old.h5"
    save_state(path, _params(rng), None, 0, np.random.default_rng(0).bit_generator.state,
               {}, old, "x")
    with h5py.File(path, "r") as f:  # the file holds what was given (defaults left out)
        assert set(json.loads(f["meta/geometry"].asstr()[()])) == set(old) - {"pixel_size_A"}
    g = load_state(path).geometry
    assert (g.shape_zyx, g.model_shape_zyx, g.detector_yx) == ((12, 10, 24), (12, 10, 40),
                                                               (10, 24))
    assert g.view_scale == 2.5 and g.n_views == 3 and g.contrast is None and g.run is None
    assert g.voxel_size_A == 1.0  # no pixel size: 1 A assumed
    assert g.frame_A() == (12.0, 10.0, 24.0)
    assert ModelGeometry.from_dict(g.to_dict()).shape_zyx == g.shape_zyx
    for bad, words in (({"shape_zyx": [12, "ten", 24]}, "tomogram size"),
                       ({"shape_zyx": [12, 10]}, "tomogram size"),
                       ({"contrast": "grey"}, "image contrast"),
                       ({"view_scale": "big"}, "density units")):
        with pytest.raises(InputError, match=f"unreadable {words}") as info:
            ModelGeometry.from_dict(bad)
        assert "shape_zyx" not in str(info.value) and "view_scale" not in str(info.value)


def test_nan_and_inf_survive(tmp_path, rng):
    path = tmp_path / "s.h5"
    save_state(path, _params(rng), None, 0, np.random.default_rng(0).bit_generator.state,
               {"a": float("nan"), "b": float("-inf")}, {}, "x")
    c = load_state(path).config
    assert np.isnan(c["a"]) and c["b"] == float("-inf")


def test_model_only_state(tmp_path, rng):
    path = tmp_path / "model.h5"
    params, _ = _save(path, rng, adam=False)
    st = load_state(path)
    assert st.adam is None
    np.testing.assert_array_equal(st.params.means_xyz, params.means_xyz)


@pytest.mark.parametrize("bit_generator", ["PCG64", "MT19937", "Philox", "SFC64"])
def test_rng_state_resumes_the_same_stream(tmp_path, rng, bit_generator):
    gen = np.random.Generator(getattr(np.random, bit_generator)(99))
    gen.normal(size=7)  # mid-run
    path = tmp_path / "s.h5"
    save_state(path, _params(rng), None, 3, gen.bit_generator.state, {}, {}, "x")
    expected = (gen.random(5), gen.normal(size=3), gen.integers(0, 1000, 4))
    resumed = load_state(path).rng()
    assert type(resumed.bit_generator).__name__ == bit_generator
    got = (resumed.random(5), resumed.normal(size=3), resumed.integers(0, 1000, 4))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_rng_rejects_unknown_generators():
    with pytest.raises(InputError, match="unknown bit generator"):
        restore_rng({"bit_generator": "Nope", "state": {}})
    with pytest.raises(InputError, match="unknown bit generator"):
        restore_rng({"bit_generator": "Generator"})
    with pytest.raises(InputError, match="invalid"):
        restore_rng({"bit_generator": "PCG64", "state": {"oops": 1}})


# ----------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------

def _failing_create_dataset(monkeypatch, exc_type, after: int):
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def fake(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc_type("simulated failure mid-write")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fake)
    return calls


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_interrupted_write_keeps_previous_state(tmp_path, rng, monkeypatch, exc_type):
    path = tmp_path / "run.state.h5"
    params, _ = _save(path, rng)
    before = path.read_bytes()
    calls = _failing_create_dataset(monkeypatch, exc_type, after=5)
    with pytest.raises(exc_type, match="simulated"):
        _save(path, np.random.default_rng(1))
    assert calls["n"] == 6  # it did fail midway, after writing some datasets
    monkeypatch.undo()
    assert path.read_bytes() == before
    np.testing.assert_array_equal(load_state(path).params.means_xyz, params.means_xyz)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.state.h5"]  # no temp left


def test_failed_first_write_leaves_nothing(tmp_path, rng, monkeypatch):
    _failing_create_dataset(monkeypatch, RuntimeError, after=0)
    with pytest.raises(RuntimeError):
        _save(tmp_path / "new.h5", rng)
    assert list(tmp_path.iterdir()) == []


def test_unserialisable_config_fails_before_writing(tmp_path, rng):
    with pytest.raises(TypeError, match="cannot store a value of type object"):
        save_state(tmp_path / "s.h5", _params(rng), None, 0, {}, {"x": object()}, {}, "x")
    assert list(tmp_path.iterdir()) == []


def test_write_refusals(tmp_path, rng):
    path = tmp_path / "s.h5"
    _save(path, rng)
    with pytest.raises(InputError, match=_match(str(path), "exists; use --force")):
        _save(path, rng, force=False)
    _save(path, rng, force=True)
    with pytest.raises(InputError, match="does not exist"):
        _save(tmp_path / "nowhere" / "s.h5", rng)
    with pytest.raises(InputError, match="is a folder"):
        _save(tmp_path, rng)
    with pytest.raises(ValueError, match="moments are for 4 Gaussians"):
        save_state(path, _params(rng), _adam(rng, n=4), 0, {}, {}, {}, "x")


# ----------------------------------------------------------------------------------------
# Reading errors
# ----------------------------------------------------------------------------------------

def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match=_match("missing.h5", "state file not found")):
        load_state(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="is a folder"):
        load_state(tmp_path)


def test_mrc_given_instead_of_state(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")  # a package dependency; absent on bare machines

    path = tmp_path / "tomo.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 5, 6), dtype=np.float32))
    with pytest.raises(InputError, match=_match("tomo.mrc", "is an MRC file", "HDF5")):
        load_state(path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"hello, this is a text file\n" * 40, "is not an HDF5 file"),
], ids=["empty", "text"])
def test_not_hdf5(tmp_path, content, message):
    path = tmp_path / "state.h5"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_state(path)


@pytest.mark.parametrize("damage", ["truncated", "superblock", "object_headers", "tail"])
def test_truncated_or_corrupted(tmp_path, rng, damage):
    path = tmp_path / "s.h5"
    _save(path, rng)
    data = path.read_bytes()
    if damage == "truncated":  # e.g. a copy that stopped halfway
        data = data[: len(data) // 2]
    elif damage == "superblock":
        data = data[:8] + bytes(56) + data[64:]
    elif damage == "object_headers":
        data = data[:800] + bytes(1000) + data[1800:]
    else:
        data = data[:-2000] + bytes(2000)
    path.write_bytes(data)
    with pytest.raises(InputError, match=_match("s.h5", "truncated or corrupted")):
        load_state(path)


def test_wrong_format_name(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(InputError, match=_match("not a taichi-etgs state (no 'format' attribute")):
        load_state(path)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(InputError,
                       match=_match("not a taichi-etgs state (format 'something-else'")):
        load_state(path)


def _set_attr(path: Path, name: str, value) -> None:
    with h5py.File(path, "a") as f:
        f.attrs[name] = value


def test_newer_format_version_is_refused(tmp_path, rng):
    path = tmp_path / "s.h5"
    _save(path, rng)
    _set_attr(path, "format_version", 2)
    _set_attr(path, "package_version", "9.0.0")
    with pytest.raises(InputError, match=_match("written by a newer taichi-etgs",
                                                "format_version 2", "9.0.0", "upgrade")):
        load_state(path)


@pytest.mark.parametrize("value", [0, -1, "one", 1.5], ids=["0", "-1", "str", "float"])
def test_unknown_format_version_is_refused(tmp_path, rng, value):
    path = tmp_path / "s.h5"
    _save(path, rng)
    _set_attr(path, "format_version", value)
    with pytest.raises(InputError, match="unknown format_version"):
        load_state(path)


def test_missing_format_version(tmp_path, rng):
    path = tmp_path / "s.h5"
    _save(path, rng)
    with h5py.File(path, "a") as f:
        del f.attrs["format_version"]
    with pytest.raises(InputError, match="missing attribute 'format_version'"):
        load_state(path)


@pytest.mark.parametrize("name", ["params/log_scales", "adam/exp_avg_sq/density_raw",
                                  "meta/rng_state", "meta/config", "meta/geometry",
                                  "adam/lr"])
def test_missing_dataset(tmp_path, rng, name):
    path = tmp_path / "s.h5"
    _save(path, rng)
    with h5py.File(path, "a") as f:
        del f[name]
    with pytest.raises(InputError, match=_match(f"missing dataset '{name}'", "incomplete")):
        load_state(path)


def test_inconsistent_shapes(tmp_path, rng):
    path = tmp_path / "s.h5"
    _save(path, rng)
    with h5py.File(path, "a") as f:
        del f["params/density_raw"]
        f.create_dataset("params/density_raw", data=np.zeros(4))
    with pytest.raises(InputError, match="inconsistent 'params'"):
        load_state(path)


def test_bad_json(tmp_path, rng):
    path = tmp_path / "s.h5"
    _save(path, rng)
    with h5py.File(path, "a") as f:
        del f["meta/config"]
        f.create_dataset("meta/config", data="{not json", dtype=h5py.string_dtype())
    with pytest.raises(InputError, match="unreadable 'meta/config'"):
        load_state(path)


# ----------------------------------------------------------------------------------------
# Checksum
# ----------------------------------------------------------------------------------------

def test_input_checksum(tmp_path, rng, monkeypatch):
    stack = rng.standard_normal((6, 5, 7)).astype(np.float32)
    c = input_checksum(stack)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", c)
    # Definition: shape, then the little-endian float32 bytes.
    want = hashlib.sha256(b"float32<(6, 5, 7)" + stack.astype("<f4").tobytes()).hexdigest()
    assert c == "sha256:" + want
    # Same values in another dtype, byte order or layout: same checksum.
    assert input_checksum(stack.astype(np.float64)) == c
    assert input_checksum(stack.astype(">f4")) == c
    assert input_checksum(np.asfortranarray(stack)) == c
    # A memmap, streamed in blocks of one section: same checksum.
    mm_path = tmp_path / "stack.raw"
    stack.tofile(mm_path)
    mm = np.memmap(mm_path, dtype=np.float32, mode="r", shape=stack.shape)
    monkeypatch.setattr(state_mod, "_CHECKSUM_BLOCK_BYTES", 1)
    assert input_checksum(mm) == c
    monkeypatch.setattr(state_mod, "_CHECKSUM_BLOCK_BYTES", 2 * 5 * 7 * 4)  # 2 sections
    assert input_checksum(mm) == c
    del mm
    # Any change of one value or of the shape changes it.
    other = stack.copy()
    other[3, 2, 1] = np.nextafter(other[3, 2, 1], np.float32(np.inf))
    assert input_checksum(other) != c
    assert input_checksum(stack.reshape(6, 7, 5)) != c
    assert input_checksum(np.float32(1.5)) != input_checksum(np.array([1.5], np.float32))
