"""The pipeline layer (taichi_etgs.pipeline): the one output guard, the one JSON encoder,
views at unit scale, progress lines, the MRC origin, the compute device started once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.pipeline import jsonio
from taichi_etgs.pipeline.inputs import StackSource, index_ranges, rescaled, unit_views
from taichi_etgs.pipeline.outputs import EXISTS_MESSAGE, check_writable
from taichi_etgs.pipeline.progress import ProgressReport
from taichi_etgs.pipeline.session import Session
from taichi_etgs.pipeline.tomograms import mrc_origin

# -- the one output guard --


def test_check_writable_messages(tmp_path):
    existing = tmp_path / "a.mrc"
    existing.write_bytes(b"x")
    with pytest.raises(InputError, match="a.mrc: exists; use --force to overwrite"):
        check_writable(existing)
    assert check_writable(existing, force=True) == existing
    with pytest.raises(InputError, match="is a folder; give a file name for the state"):
        check_writable(tmp_path, True, what="state")
    with pytest.raises(InputError, match="the folder .*missing does not exist"):
        check_writable(tmp_path / "missing" / "b.mrc")
    # Writers that create their folder only refuse what is really in the way.
    assert check_writable(tmp_path / "missing" / "b.mrc", folder_must_exist=False)
    with pytest.raises(InputError, match="does not exist"):
        check_writable(existing / "c.mrc", folder_must_exist=False)  # a file, not a folder


def _writers(tmp_path):
    """Every writer of the package that refuses an existing file, with one call each."""
    from taichi_etgs.evaluation.figures import evaluation_figure
    from taichi_etgs.evaluation.metrics import write_metrics_json
    from taichi_etgs.gaussian.params import GaussianParams
    from taichi_etgs.gaussian.state import save_state
    from taichi_etgs.io import write_stack, write_volume
    from taichi_etgs.io.export import export_gaussians

    params = GaussianParams.from_activated(means_xyz=np.zeros((1, 3)), scales=np.ones((1, 3)),
                                           densities=np.ones(1),
                                           quats_wxyz=np.array([[1.0, 0, 0, 0]]))
    rng_state = np.random.default_rng(0).bit_generator.state
    volume = np.ones((2, 3, 4), np.float32)
    return {
        "volume.mrc": lambda p: write_volume(p, volume, 1.0),
        "stack.mrc": lambda p: write_stack(p, volume, 1.0),
        "model.state.h5": lambda p: save_state(p, params, None, 0, rng_state, {}, {}, "",
                                               force=False),
        "model.csv": lambda p: export_gaussians(params, p),
        "figure.png": lambda p: evaluation_figure(volume, volume, {}, p),
        "metrics.json": lambda p: write_metrics_json({"psnr": float("inf")}, p),
    }


def test_every_writer_refuses_an_existing_file_with_the_same_words(tmp_path):
    for name, write in _writers(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(b"keep")
        with pytest.raises(InputError) as info:
            write(path)
        assert str(info.value) == f"{path}: {EXISTS_MESSAGE}", name
        assert path.read_bytes() == b"keep"
        with pytest.raises(InputError, match="the folder .* does not exist"):
            write(tmp_path / "nowhere" / name)


# -- the one JSON encoder --


def test_strict_json_of_numpy_paths_and_non_finite_numbers():
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": float("inf"), "d": float("nan"),
             "e": Path("x/y.mrc"), "f": (1, np.int64(2)), "g": np.array([1.0, -np.inf]),
             "h": np.bool_(True), 3: {"nested": [np.float64(0.25)]}}
    text = jsonio.dumps(value)
    assert json.loads(text) == {"a": 1.5, "b": [0, 1, 2], "c": "inf", "d": None,
                                "e": "x/y.mrc", "f": [1, 2], "g": [1.0, "-inf"], "h": True,
                                "3": {"nested": [0.25]}}


def test_metrics_json_is_the_encoders_strict_json():
    from taichi_etgs.evaluation import metrics

    value = {"psnr": np.float64(np.inf), "fsc": np.array([1.0, np.nan]), "n": np.int64(3)}
    assert metrics.metrics_to_json(value) == jsonio.dumps(value, indent=1) + "\n"
    assert not hasattr(metrics, "json_safe")  # one encoder: pipeline.jsonio


def test_exact_json_round_trips_arrays_and_refuses_other_objects():
    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "big": 2**100,
             "x": float("nan"), "f": np.float32(0.1)}
    back = jsonio.loads(jsonio.dumps(value, exact=True))
    assert back["a"].dtype == np.float32 and back["a"].shape == (2, 3)
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["big"] == 2**100 and np.isnan(back["x"]) and back["f"] == float(np.float32(0.1))
    with pytest.raises(TypeError, match="cannot store"):
        jsonio.dumps({"o": object()}, exact=True)


def test_sidecars_spell_infinite_resolutions_out(tmp_path):
    from taichi_etgs.provenance import Provenance, read_sidecar

    prov = Provenance("evaluate", ["taichi-etgs", "evaluate"], {}, "0")
    out = tmp_path / "a.mrc"
    out.write_bytes(b"")
    prov.write(out, {"fsc05_resolution_A": float("inf"), "nan": float("nan")})
    assert read_sidecar(out)["result"] == {"fsc05_resolution_A": "inf", "nan": None}


# -- views at unit scale --


def _source(data, contrast="dark", tilts=(-30.0, 0.0, 30.0)):
    return StackSource.from_arrays(data, tilts, 5.0, contrast)


def _unit_views(data, contrast):
    source = _source(data, contrast)
    return unit_views(source.stack, source)


def test_unit_views_and_rescaled_work_at_any_magnitude():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 4, 5))
    for factor in (1e-30, 1.0, 1e30):
        views, scale = _unit_views((base * factor).astype(np.float32), "bright")
        assert np.isfinite(views).all()
        assert np.sqrt(np.mean(views.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-5)
        assert scale == pytest.approx(factor * np.sqrt(np.mean(
            (base - base.mean(axis=(1, 2), keepdims=True)) ** 2)), rel=1e-4)
        back = rescaled(views.copy(), scale, "x")
        assert np.isfinite(back).all()


def test_views_without_signal_or_beyond_float32_are_refused():
    with pytest.raises(InputError, match="no signal"):
        _unit_views(np.full((3, 4, 5), 2.0, np.float32), "dark")
    data = np.full((3, 4, 5), 3.3e38, np.float32)
    data[:, 0, 0] = -3.3e38
    with pytest.raises(InputError, match="overflow"):
        _unit_views(data, "dark")
    with pytest.raises(InputError, match="NaN or Inf"):
        rescaled(np.ones((2, 2, 2), np.float32), 1e39, "x")


def test_index_ranges():
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert index_ranges([]) == ""


# -- progress --


def test_progress_without_a_terminal_is_a_line_every_ten_percent(caplog):
    lines = []
    session = Session(note=lines.append, bars=True)  # capsys/pytest: stderr is no terminal
    with ProgressReport(session, 20, "SIRT") as bar:
        for i in range(1, 21):
            bar.update(i, residual=f"{1.0 / i:.3g}")
    assert len(lines) == 10
    assert lines[4].startswith("SIRT: 50 % (10/20 it), residual 0.1; ")
    assert "s left" in lines[4] and "left" not in lines[-1]
    # A resumed step reports from where it starts.
    lines.clear()
    with ProgressReport(session, 100, "Gaussians", initial=45) as bar:
        for i in range(46, 101):
            bar.update(i)
    assert lines[0].startswith("Gaussians: 50 % (50/100 it)") and len(lines) == 6


def test_progress_under_a_visible_bar_goes_to_the_log_only(caplog, monkeypatch):
    lines = []
    session = Session(note=lines.append, bars=True)
    monkeypatch.setattr(ProgressReport, "bar_shows", property(lambda self: True))  # a terminal
    with caplog.at_level(logging.INFO, logger="taichi_etgs.pipeline"), \
            ProgressReport(session, 10, "fit") as bar:
        bar.update(5)
    assert lines == []
    assert any(r.getMessage().startswith("fit: 50 %") and getattr(r, "echoed", False)
               for r in caplog.records)


# -- the MRC origin --


def test_mrc_origin_places_crops_and_other_grids_over_the_full_tomogram():
    frame = (40 * 5.0, 64 * 5.0, 100 * 5.0)  # thickness 40, images 100 x 64, 5 A
    assert mrc_origin((40, 64, 100), 5.0, frame) == (0.0, 0.0, 0.0)
    # --width 60: the central 60 columns start at column 20: origin -20 voxels (IMOD).
    assert mrc_origin((40, 64, 60), 5.0, frame) == (-100.0, 0.0, 0.0)
    # binned 2 (or --voxel-size 10): the same extent, the same corner.
    assert mrc_origin((20, 32, 50), 10.0, frame) == (0.0, 0.0, 0.0)
    # a coarser voxel that does not divide the sizes: the centres stay, the corners move.
    assert mrc_origin((13, 21, 33), 15.0, frame) == (-2.5, -2.5, -2.5)


# -- the compute device --


def test_the_device_starts_once_per_session_and_only_when_asked(monkeypatch):
    from taichi_etgs import runtime

    calls = []
    monkeypatch.setattr(runtime, "init", lambda arch, threads=None: calls.append(arch) or
                        runtime.RuntimeConfig(arch="cpu", threads=threads, precision="f32"))
    notes = []
    session = Session(note=notes.append, arch="cpu", threads=1)
    assert calls == []
    session.start_compute()
    session.start_compute()
    assert calls == ["cpu"] and notes == ["compute: cpu"]
