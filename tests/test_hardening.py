"""Hardening: bad input, extreme values, resources, faults and interruptions, provenance.

Every bad input must end in one ``error: ...`` line and exit code 2 (or a documented
warning), never a traceback, another exit code or a silent garbage tomogram; a run must
not start when it cannot fit in memory or on disk; a hard kill must never leave a broken
state or a partial tomogram under the final name.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taichi_etgs import __version__, resources
from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.gaussian.state import load_state
from taichi_etgs.io import write_stack
from taichi_etgs.provenance import mrc_labels, read_sidecar, sidecar_path

TILTS = np.arange(-60.0, 61.0, 20.0)  # 7 views: small and quick
REPO = Path(__file__).resolve().parents[1]
# Hypothesis runs each example in the same tmp folder (files are overwritten), so the
# function-scoped fixture is fine.
HYPOTHESIS = settings(max_examples=40, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_error(code: int, err: str, *, allow_success: bool = False) -> None:
    """Exit 2 with exactly one ``error:`` line as the last line (warnings before it are
    fine), or 0 when ``allow_success``; never a traceback or another exit code."""
    assert "Traceback" not in err
    assert code in ((0, 2) if allow_success else (2,)), err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: "), err
        assert sum(line.startswith("error:") for line in lines) == 1, err
        assert "internal error" not in err


def _blob_stack(n_tilts: int = TILTS.size, ny: int = 8, nx: int = 12,
                seed: int = 0) -> np.ndarray:
    """Dark-contrast views of a smooth blob plus a little noise (no Taichi needed)."""
    rng = np.random.default_rng(seed)
    u = np.arange(nx) + 0.5 - nx / 2
    v = np.arange(ny) + 0.5 - ny / 2
    views = 10.0 - 3.0 * np.exp(-(u[None, None, :] ** 2 / 8.0 + v[None, :, None] ** 2 / 6.0))
    views = np.broadcast_to(views, (n_tilts, ny, nx)).copy()
    return (views + 0.2 * rng.normal(size=views.shape)).astype(np.float32)


@pytest.fixture
def stack(tmp_path):
    """A 7-view 8 x 12 stack with a sibling .tlt."""
    path = tmp_path / "ts.mrc"
    write_stack(path, _blob_stack(), 5.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS, fmt="%.2f")
    return path


def _valid_mrc_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "template.mrc"
    write_stack(path, _blob_stack(n_tilts=3, ny=4, nx=6), 5.0, force=True)
    return path.read_bytes()


# ---------------------------------------------------------------------- garbage stacks


@HYPOTHESIS
@given(data=st.binary(max_size=3000))
@example(data=b"")
@example(data=b"\0" * 1024)
@example(data=b"\x89HDF\r\n\x1a\n" + b"\0" * 2000)
@example(data=b"hello\n" * 400)
def test_random_bytes_as_a_stack_give_one_clean_error(tmp_path, capsys, data):
    path = tmp_path / "garbage.mrc"
    path.write_bytes(data)
    np.savetxt(tmp_path / "garbage.tlt", [-3.0, 0.0, 3.0])
    code, _, err = _run(["info", path], capsys)
    _assert_clean_error(code, err, allow_success=True)


@HYPOTHESIS
@given(edits=st.lists(st.tuples(st.integers(0, 1023 + 3 * 4 * 6 * 4 - 1), st.integers(0, 255)),
                      min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 1024 + 3 * 4 * 6 * 4)),
       word=st.one_of(st.none(), st.tuples(st.sampled_from([0, 4, 8, 12, 16, 20, 24, 28, 92]),
                                           st.integers(-2**31, 2**31 - 1))))
def test_damaged_mrc_headers_and_truncation_give_one_clean_error(tmp_path, capsys, edits, cut,
                                                                   word):
    """A real stack with bytes changed (sizes, mode, axis order, extended header...) or
    cut short: it reads, or fails with one line."""
    data = bytearray(_valid_mrc_bytes(tmp_path))
    for offset, value in edits:
        data[offset] = value
    if word is not None:  # a whole header field: nx, ny, nz, mode, ..., nsymbt
        offset, value = word
        data[offset:offset + 4] = int(value).to_bytes(4, "little", signed=True)
    if cut is not None:
        data = data[:cut]
    path = tmp_path / "damaged.mrc"
    path.write_bytes(bytes(data))
    np.savetxt(tmp_path / "damaged.tlt", [-3.0, 0.0, 3.0])
    code, out, err = _run(["info", path], capsys)
    _assert_clean_error(code, err, allow_success=True)
    if code == 0:
        assert "pixels" in out


@pytest.mark.parametrize("content", [b"", b"\0" * 4096, b"text\n" * 500, "hdf5"])
def test_garbage_stack_for_a_reconstruction_is_refused_before_work(tmp_path, capsys, content):
    path = tmp_path / "bad.mrc"
    if content == "hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(1000)
    else:
        path.write_bytes(content)
    np.savetxt(tmp_path / "bad.tlt", TILTS)
    out = tmp_path / "out.mrc"
    code, _, err = _run(["wbp", path, "--thickness", 4, "-o", out, "--arch", "cpu"], capsys)
    _assert_clean_error(code, err)
    assert not out.exists() and not sidecar_path(out).exists()
    if content == "hdf5":
        assert "HDF5" in err


# ---------------------------------------------------------------------- junk angle files

_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.sampled_from([1e30, -1e30, 5e-324, -0.0, 89.999, 90.0, -90.0]))
_TOKEN = st.one_of(_NUMBER.map(repr), st.sampled_from(["", " ", "nan", "inf", "1e400", "0x10",
                                                       "1_0", "deg", "#", "\t", "١٢", "\ufeff"]),
                   st.text(max_size=6))


@HYPOTHESIS
@given(lines=st.lists(st.lists(_TOKEN, max_size=3).map(" ".join), max_size=10),
       raw=st.one_of(st.none(), st.binary(max_size=200)))
@example(lines=["0", "1", "2"], raw=None)
@example(lines=[repr(a) for a in np.deg2rad(TILTS)], raw=None)
def test_junk_angle_files_give_one_clean_error(stack, capsys, lines, raw):
    path = stack.with_name("junk.tlt")
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(lines), encoding="utf-8")
    code, out, err = _run(["info", stack, "--angles", path], capsys)
    _assert_clean_error(code, err, allow_success=True)
    if code == 0:
        assert "tilt range" in out


_MDOC_LINE = st.one_of(
    st.integers(-2, 9).map(lambda z: f"[ZValue = {z}]"),
    _TOKEN.map(lambda t: f"TiltAngle = {t}"),
    _TOKEN.map(lambda t: f"PixelSpacing = {t}"),
    st.sampled_from(["[T = SerialEM]", "[ZValue = x]", "ZValue = 3", "TiltAngle", "= 4", ""]),
    st.text(max_size=12))
_XF_LINE = st.lists(_TOKEN, min_size=0, max_size=8).map(" ".join)
_ALN_LINE = st.one_of(
    st.sampled_from(["# RawSize = 12 8 7", "# RawSize = 0 0 0", "# RawSize = x",
                     "# DarkFrame = 0 0 -60.0", "# Local Alignment", "# SEC ROT GMAG"]),
    st.lists(_TOKEN, min_size=0, max_size=11).map(" ".join),
    st.tuples(st.integers(-1, 9), st.floats(-100, 100)).map(
        lambda r: f"{r[0]} 85.0 1.0 0.0 0.0 1.0 1.0 1.0 0.0 {r[1]:.2f}"))


@HYPOTHESIS
@given(kind=st.sampled_from(["mdoc", "xf", "aln"]), data=st.data())
def test_junk_mdoc_xf_and_aln_give_one_clean_error(stack, capsys, kind, data):
    strategy = {"mdoc": _MDOC_LINE, "xf": _XF_LINE, "aln": _ALN_LINE}[kind]
    lines = data.draw(st.lists(strategy, max_size=12))
    path = stack.with_name(f"junk.{kind}")
    path.write_text("\n".join(lines), encoding="utf-8")
    option = {"mdoc": "--angles", "xf": "--xf", "aln": "--aln"}[kind]
    code, _, err = _run(["info", stack, option, path], capsys)
    _assert_clean_error(code, err, allow_success=True)


def test_named_bad_angle_and_transform_files(stack, capsys):
    folder = stack.parent
    mdoc = folder / "no_tilt.mdoc"
    mdoc.write_text("PixelSpacing = 5\n\n[ZValue = 0]\nExposureTime = 1\n")
    code, _, err = _run(["info", stack, "--angles", mdoc], capsys)
    _assert_clean_error(code, err)
    assert "no TiltAngle" in err and "no_tilt.mdoc" in err

    xf = folder / "bad.xf"
    xf.write_text("\n".join("1 0 0 1 0" for _ in TILTS) + "\n")  # 5 columns, not 6
    code, _, err = _run(["info", stack, "--xf", xf], capsys)
    _assert_clean_error(code, err)
    assert "expected 6" in err and "line 1" in err

    aln = folder / "short.aln"  # AreTomo rows for 3 of the 7 sections, RawSize says 7
    rows = [f"{s:5d}    85.0000    1.00000      0.000      0.000     1.00     1.00     1.00"
            f"     0.00  {t:8.2f}" for s, t in zip(range(3), TILTS[:3])]
    aln.write_text("\n".join(["# AreTomo Alignment / Priims bprmMn", "# RawSize = 12 8 7",
                              "# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT", *rows]) + "\n")
    code, out, err = _run(["info", stack, "--aln", aln], capsys)
    # AreTomo lists only the views it kept: 3 rows mean 3 views, said plainly.
    _assert_clean_error(code, err, allow_success=True)
    if code == 0:
        assert "views          3" in out


def test_radians_warn_and_duplicated_angles_warn_once(stack, capsys):
    radians = stack.with_name("rad.tlt")
    np.savetxt(radians, np.deg2rad(TILTS))
    code, _, err = _run(["info", stack, "--angles", radians], capsys)
    assert code == 0
    assert err.count("look like radians") == 1  # the loader's; info does not repeat it

    twice = stack.with_name("twice.tlt")
    np.savetxt(twice, [-60, -40, -20, 0, 0, 20, 40])
    code, out, err = _run(["info", stack, "--angles", twice], capsys)
    assert code == 0 and "more than once" in err
    assert "duplicated" not in out  # said once, not twice
    code, _, err = _run(["wbp", stack, "--angles", twice, "--thickness", 4, "-o",
                         stack.with_name("dup.mrc"), "--arch", "cpu"], capsys)
    assert code == 0 and "warning:" in err and "more than once" in err


# ---------------------------------------------------------------------- degenerate stacks


@pytest.mark.parametrize("kind", ["constant", "zeros", "single", "one_left"])
def test_degenerate_stacks_are_refused(tmp_path, capsys, kind):
    path = tmp_path / "ts.mrc"
    data = {"constant": np.full((7, 8, 12), 3.5, np.float32),
            "zeros": np.zeros((7, 8, 12), np.float32),
            "single": _blob_stack(n_tilts=1),
            "one_left": _blob_stack(n_tilts=2)}[kind]
    write_stack(path, data, 5.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS[:data.shape[0]])
    extra = ["--exclude-views", "1"] if kind == "one_left" else []
    out = tmp_path / "out.mrc"
    code, _, err = _run(["sirt", path, "--thickness", 4, "-o", out, "--iterations", 2,
                         "--arch", "cpu", *extra], capsys)
    _assert_clean_error(code, err)
    expected = {"constant": "no signal", "zeros": "no signal", "single": "single image",
                "one_left": "at least 2"}[kind]
    assert expected in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["wbp", "sirt"])
def test_huge_values_give_a_finite_tomogram(tmp_path, capsys, command):
    """1e30 pixel values: the tomogram is finite and 1e30 times the one at unit scale (the
    views are normalised before any float32 arithmetic)."""
    unit = _blob_stack()
    for name, data in (("big", unit.astype(np.float64) * 1e30), ("unit", unit)):
        write_stack(tmp_path / f"{name}.mrc", data.astype(np.float32), 5.0)
        np.savetxt(tmp_path / f"{name}.tlt", TILTS)
    results = []
    extra = ["--iterations", 3] if command == "sirt" else []
    for name in ("big", "unit"):
        out = tmp_path / f"{name}_tomo.mrc"
        code, _, err = _run([command, tmp_path / f"{name}.mrc", "--thickness", 6, "-o", out,
                             "--arch", "cpu", *extra], capsys)
        assert code == 0, err
        with mrcfile.open(out) as mrc:
            results.append(mrc.data.astype(np.float64))
            assert np.isfinite(mrc.header.rms)
    big, unit_volume = results
    assert np.isfinite(big).all()
    # float32 keeps 7 digits at any magnitude: the same tomogram, scaled.
    np.testing.assert_allclose(big / 1e30, unit_volume, rtol=1e-3,
                               atol=1e-4 * np.abs(unit_volume).max())


def test_denormal_values_are_refused_clearly(tmp_path, capsys):
    """Values below float32's normal range (1.2e-38): Taichi's CPU settings flush them to
    zero, so they are refused with the reason rather than reconstructed as nothing."""
    bits = np.random.default_rng(0).integers(1, 2**22, size=(TILTS.size, 8, 12))
    path = tmp_path / "tiny.mrc"
    with mrcfile.new(path) as mrc:  # from the bits: float arithmetic here may flush them
        mrc.set_data(bits.astype(np.uint32).view(np.float32))
    np.savetxt(tmp_path / "tiny.tlt", TILTS)
    for command in (["wbp"], ["reconstruct", "--iterations", 1, "--init", "wbp"]):
        out = tmp_path / "out.mrc"
        code, _, err = _run([*command, path, "--thickness", 4, "-o", out, "--arch", "cpu"],
                            capsys)
        _assert_clean_error(code, err)
        assert "denormal" in err and not out.exists()


def test_values_that_overflow_float32_are_refused_clearly(tmp_path, capsys):
    data = _blob_stack()
    data[:] = 3.3e38
    data[:, 0, 0] = -3.3e38  # the mean removal gives -6.6e38 there: beyond float32
    path = tmp_path / "ts.mrc"
    write_stack(path, data, 5.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS)
    out = tmp_path / "out.mrc"
    code, _, err = _run(["wbp", path, "--thickness", 4, "-o", out, "--arch", "cpu"], capsys)
    _assert_clean_error(code, err)
    assert "overflow" in err and not out.exists()


def test_non_square_odd_sizes_and_thickness_beyond_width(tmp_path, capsys):
    """9 x 13 images, thickness 5 (odd), and thickness 17 > width 13 (a warning)."""
    path = tmp_path / "odd.mrc"
    write_stack(path, _blob_stack(ny=9, nx=13), 5.0)
    np.savetxt(tmp_path / "odd.tlt", TILTS)
    runs = [(["wbp"], 5), (["sirt", "--iterations", 2], 5),
            (["reconstruct", "--iterations", 2, "--max-gaussians", 150, "--init", "wbp",
              "--save-every", 0], 5),
            (["wbp"], 17)]
    for k, (command, thickness) in enumerate(runs):
        out = tmp_path / f"t{k}.mrc"
        code, _, err = _run([*command, path, "--thickness", thickness, "-o", out,
                             "--arch", "cpu"], capsys)
        assert code == 0, err
        with mrcfile.open(out) as mrc:
            assert mrc.data.shape == (thickness, 9, 13)
            assert np.isfinite(mrc.data).all()
        assert ("larger than the tomogram width" in err) == (thickness > 13)
    code, _, err = _run(["wbp", path, "--thickness", 60, "-o", tmp_path / "x.mrc",
                         "--arch", "cpu"], capsys)
    _assert_clean_error(code, err)
    assert "4x the image width" in err


# ---------------------------------------------------------------------- state files


def test_bad_state_files_for_resume_and_commands(stack, capsys, tmp_path):
    out = tmp_path / "g.mrc"
    common = [stack, "--thickness", 4, "--iterations", 2, "--max-gaussians", 100,
              "--init", "wbp", "--arch", "cpu"]
    code, _, err = _run(["reconstruct", *common, "-o", out], capsys)
    assert code == 0, err
    state = tmp_path / "g.state.h5"
    good = state.read_bytes()

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good[: len(good) // 2])
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = np.int64(99)
    cases = [(truncated, "truncated or corrupted"), (newer, "newer taichi-etgs"),
             (stack, "MRC file")]
    for bad, message in cases:
        code, _, err = _run(["reconstruct", *common, "-o", tmp_path / "r.mrc", "--resume",
                             bad], capsys)
        _assert_clean_error(code, err)
        assert message in err
        for command in (["export", bad, "-o", tmp_path / "m.ply"],
                        ["voxelize", bad, "-o", tmp_path / "v.mrc", "--arch", "cpu"]):
            code, _, err = _run(command, capsys)
            _assert_clean_error(code, err)
            assert message in err
    # A state given where a stack is expected.
    code, _, err = _run(["wbp", state, "--angles", tmp_path / "ts.tlt", "--thickness", 4,
                         "-o", tmp_path / "w.mrc", "--arch", "cpu"], capsys)
    _assert_clean_error(code, err)
    assert "HDF5" in err
    # Settings this version does not know (a state from another version) are ignored,
    # said once, and the run continues.
    with h5py.File(state, "r+") as f:
        config = json.loads(f["meta/config"].asstr()[()])
        config["future_setting"] = 3
        del f["meta/config"]
        f["meta/config"] = json.dumps(config)
    code, _, err = _run(["reconstruct", *common, "-o", tmp_path / "g2.mrc", "--state", state,
                         "--resume", state], capsys)
    assert code == 0, err
    assert "future_setting" in err and "warning:" in err


def test_a_previous_runs_state_is_not_overwritten(stack, capsys, tmp_path):
    common = [stack, "--thickness", 4, "--iterations", 2, "--max-gaussians", 100,
              "--init", "wbp", "--arch", "cpu", "-o"]
    code, _, err = _run(["reconstruct", *common, tmp_path / "a.mrc"], capsys)
    assert code == 0, err
    (tmp_path / "a.mrc").unlink()
    before = (tmp_path / "a.state.h5").read_bytes()
    code, _, err = _run(["reconstruct", *common, tmp_path / "a.mrc"], capsys)
    _assert_clean_error(code, err)
    assert "--resume" in err and "a.state.h5" in err
    assert (tmp_path / "a.state.h5").read_bytes() == before


# ---------------------------------------------------------------------- resources


def test_a_run_that_does_not_fit_in_memory_is_refused_with_the_option(stack, capsys, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "big.mrc"
    size = resources.RunSize("sirt", TILTS.size, 8, 12, 8, 12)
    needed = resources.estimate_memory_bytes(size).total_bytes
    binned = resources.estimate_memory_bytes(size.rebinned(2)).total_bytes
    # Room for the run at --binning 2, not at 1: the refusal names the binning that fits.
    room = (needed + binned) // 2
    with pytest.raises(InputError, match="this run needs about .* available") as refused:
        resources.check_resources(size, available_memory=room)
    assert "--binning 2 --thickness 4" in str(refused.value)
    # SIRT and WBP no longer stop there: they go in slabs along Y that fit (docs/large.md).
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: room)
    code, _, err = _run(["sirt", stack, "--thickness", 8, "-o", out, "--arch", "cpu"], capsys)
    assert code == 0, err
    assert "reconstructing it in slabs of" in err and out.exists()
    out.unlink()

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2**20)
    code, _, err = _run(["reconstruct", stack, "--thickness", 8, "-o", out, "--arch", "cpu"],
                        capsys)
    _assert_clean_error(code, err)
    assert "smaller --thickness" in err
    assert not out.exists() and not (tmp_path / "big.state.h5").exists()

    monkeypatch.setenv(resources.SKIP_ENV, "1")
    code, _, err = _run(["wbp", stack, "--thickness", 8, "-o", out, "--arch", "cpu"], capsys)
    assert code == 0, err


def test_stacks_larger_than_memory_are_read_binned_from_the_memory_map(tmp_path, capsys,
                                                                      monkeypatch):
    """The raw stack is memory-mapped and binned one section at a time: only the binned
    stack counts. With less memory than the raw stack takes as float32, reading it whole
    is refused (with the binning that fits) and binned runs go through."""
    path = tmp_path / "big.mrc"
    write_stack(path, _blob_stack(ny=64, nx=96), 5.0)
    np.savetxt(tmp_path / "big.tlt", TILTS)
    raw_float32 = TILTS.size * 64 * 96 * 4
    monkeypatch.setattr(resources, "available_memory_bytes",
                        lambda: resources.BASE_BYTES + int(0.9 * raw_float32))
    code, _, err = _run(["info", path], capsys)
    _assert_clean_error(code, err)
    assert "--binning 2" in err
    code, out, err = _run(["info", path, "--binning", 2], capsys)
    assert code == 0, err
    assert "48 x 32 pixels" in out
    out_path = tmp_path / "binned.mrc"
    code, _, err = _run(["wbp", path, "--binning", 4, "--thickness", 4, "-o", out_path,
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    with mrcfile.open(out_path) as mrc:
        assert mrc.data.shape == (4, 16, 24) and mrc.voxel_size.x == pytest.approx(20.0)


def test_gaussians_dominate_so_max_gaussians_is_suggested():
    size = resources.RunSize("reconstruct", 41, 256, 256, 100, 256, max_gaussians=5_000_000,
                             init="wbp")
    need = resources.estimate_memory_bytes(size).total_bytes
    with pytest.raises(resources.InputError, match="--max-gaussians") as info:
        resources.check_resources(size, available_memory=need // 3)
    assert "\n" not in str(info.value)


def test_too_little_disk_is_refused_up_front(stack, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "free_disk_bytes", lambda folder: 1000)
    out = tmp_path / "t.mrc"
    code, _, err = _run(["wbp", stack, "--thickness", 8, "-o", out, "--arch", "cpu"], capsys)
    _assert_clean_error(code, err)
    assert "of disk" in err and str(tmp_path) in err
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_output_folder_is_refused_up_front(stack, capsys):
    # /proc refuses new files even to root (chmod would not stop root).
    code, _, err = _run(["wbp", stack, "--thickness", 4, "-o", "/proc/tomo.mrc",
                         "--arch", "cpu"], capsys)
    _assert_clean_error(code, err)
    assert "cannot be written in the folder /proc" in err
    assert "No such file" not in err  # the folder exists: not a contradictory reason


def test_disk_full_at_the_end_keeps_the_state_and_resume_writes(stack, capsys, tmp_path,
                                                                 monkeypatch):
    import taichi_etgs.io as io

    real_write = io.write_volume

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    out = tmp_path / "g.mrc"
    common = [stack, "--thickness", 4, "--iterations", 3, "--max-gaussians", 100,
              "--init", "wbp", "--arch", "cpu", "-o", out]
    monkeypatch.setattr(io, "write_volume", full)
    code, _, err = _run(["reconstruct", *common], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert "disk is full" in err and "--resume" in err
    state = tmp_path / "g.state.h5"
    assert load_state(state).iteration == 3
    assert not out.exists()

    monkeypatch.setattr(io, "write_volume", real_write)
    code, _, err = _run(["reconstruct", *common, "--resume", state], capsys)
    assert code == 0, err
    assert out.exists() and sidecar_path(out).exists()


def test_disk_full_during_a_save_keeps_the_previous_state(stack, capsys, tmp_path,
                                                          monkeypatch):
    import taichi_etgs.gaussian.state as state_module

    real_save = state_module.save_state
    calls = {"n": 0}

    def flaky(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(state_module, "save_state", flaky)
    out = tmp_path / "g.mrc"
    code, _, err = _run(["reconstruct", stack, "--thickness", 4, "--iterations", 5,
                         "--max-gaussians", 100, "--init", "wbp", "--save-every", 1,
                         "--arch", "cpu", "-o", out], capsys)
    assert code == 1 and "Traceback" not in err
    assert "previous state (iteration 2) is kept" in err
    assert load_state(tmp_path / "g.state.h5").iteration == 2
    assert not out.exists()


# ---------------------------------------------------------------------- hard kills

_SAVE_LOOP = """
import sys
import numpy as np
from taichi_etgs.gaussian.params import GaussianParams
from taichi_etgs.gaussian.state import save_state
rng = np.random.default_rng(0)
n = 3000
params = GaussianParams(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)),
                        rng.normal(size=(n, 4)), rng.normal(size=n)).astype(np.float32)
print("ready", flush=True)
i = int(sys.argv[2])  # continue the count of the previous (killed) process
while True:
    i += 1
    save_state(sys.argv[1], params, None, i, rng.bit_generator.state, {"i": i},
               {"shape_zyx": [4, 8, 12]}, "sha256:x")
"""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_during_state_saves_never_breaks_the_state(tmp_path):
    """A process that does nothing but save the state, killed at random moments: the
    state file always loads, and its iteration only grows."""
    path = tmp_path / "loop.state.h5"
    rng = np.random.default_rng(7)
    last = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(path), str(last)],
                                env=_env(),
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 30
            while _iteration(path) <= last and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        state = load_state(path)
        assert state.iteration >= last and state.config["i"] == state.iteration
        assert state.params.n == 3000
        last = state.iteration
    assert last > 0


def test_sigkill_of_reconstruct_leaves_a_valid_state_and_resume_finishes(stack, tmp_path,
                                                                          capsys):
    """``reconstruct --save-every 1`` killed (SIGKILL) while it saves: the state loads,
    no file under the final tomogram name, and --resume completes."""
    out = tmp_path / "k.mrc"
    state = tmp_path / "k.state.h5"
    args = [sys.executable, "-m", "taichi_etgs.cli", "reconstruct", str(stack), "--thickness",
            "4", "--iterations", "100000", "--max-gaussians", "100", "--init", "wbp",
            "--save-every", "1", "--arch", "cpu", "--threads", "1", "-o", str(out)]
    rng = np.random.default_rng(3)
    for attempt in range(2):
        start = load_state(state).iteration if attempt else 0
        proc = subprocess.Popen(args + (["--resume", str(state)] if attempt else []),
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            # Wait until the run saves (again), then kill it at a random moment.
            while (proc.poll() is None and time.monotonic() < deadline
                   and _iteration(state) <= start):
                time.sleep(0.01)
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(float(rng.uniform(0.0, 0.4)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stderr.close()
        assert load_state(state).iteration > start
        assert not out.exists()  # the tomogram is written only at the very end
    saved = load_state(state).iteration
    code, _, err = _run(["reconstruct", stack, "--thickness", 4, "--arch", "cpu", "-o", out,
                         "--resume", state, "--iterations", saved + 2], capsys)
    assert code == 0, err
    assert load_state(state).iteration == saved + 2
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (4, 8, 12) and np.isfinite(mrc.data).all()


def _iteration(path: Path) -> int:
    """The saved iteration, 0 while there is no state yet."""
    return load_state(path).iteration if path.exists() else 0


# ---------------------------------------------------------------------- logs, provenance


def test_verbose_log_file_and_sidecar_record_the_run(stack, capsys, tmp_path):
    out = tmp_path / "w.mrc"
    log_file = tmp_path / "run.log"
    args = ["-v", "--log", log_file, "wbp", stack, "--thickness", 4, "-o", out,
            "--arch", "cpu"]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert "memory: this run needs about" in err  # -v detail on stderr
    assert "read " in err and "settings:" in err
    text = log_file.read_text()
    assert f"taichi-etgs {__version__}" in text and "wrote" in text
    assert text.splitlines()[0][:4].isdigit()  # timestamped
    record = read_sidecar(out)
    assert sidecar_path(out).name == "w.mrc.json"
    assert record["command_line"] == ["taichi-etgs", *map(str, args)]
    assert record["version"] == __version__ and record["command"] == "wbp"
    assert record["parameters"]["thickness"] == 4 and record["parameters"]["radial"]
    roles = {r["role"]: r for r in record["inputs"]}
    assert roles["stack"]["sha256"] and roles["stack"]["bytes"] == stack.stat().st_size
    assert roles["angles"]["path"].endswith("ts.tlt")
    assert record["result"]["shape_zyx"] == [4, 8, 12]
    with mrcfile.open(out) as mrc:
        labels = [bytes(label).decode() for label in mrc.header.label[:mrc.header.nlabl]]
    assert labels[0].startswith(f"taichi-etgs {__version__} wbp")
    # The command line is split at spaces across 80-character labels: join them back.
    assert "--thickness 4" in " ".join(label.strip() for label in labels)

    # Options also work after the command; an error lands in the log too.
    code, _, err = _run(["wbp", stack, "--thickness", 4, "-o", out, "--log", log_file],
                        capsys)
    assert code == 2 and "exists" in err
    assert "error:" in log_file.read_text().splitlines()[-1]


def test_state_outputs_get_a_sidecar(stack, capsys, tmp_path):
    out = tmp_path / "g.mrc"
    code, _, err = _run(["reconstruct", stack, "--thickness", 4, "--iterations", 2,
                         "--max-gaussians", 100, "--init", "wbp", "--arch", "cpu", "-o", out],
                        capsys)
    assert code == 0, err
    state_record = read_sidecar(tmp_path / "g.state.h5")
    assert state_record["result"]["iteration"] == 2
    assert read_sidecar(out)["result"]["n_gaussians"] > 0


def test_mrc_labels_fit_the_header():
    line = ["taichi-etgs", "reconstruct", "a" * 900, "--thickness", "300"]
    labels = mrc_labels("0.1.0", "reconstruct", "gaussians 12", line)
    assert len(labels) == 10 and all(len(label) <= 80 for label in labels)
    assert labels[-1].endswith("...")


def test_log_file_that_cannot_be_opened_is_a_clean_error(stack, capsys, tmp_path):
    code, _, err = _run(["--log", tmp_path / "missing" / "x.log", "info", stack], capsys)
    _assert_clean_error(code, err)
    assert "log" in err


@pytest.mark.parametrize("command", ["demo", "info", "wbp", "sirt", "reconstruct", "project",
                                     "voxelize", "gaussianize", "export", "simulate",
                                     "evaluate"])
def test_every_command_has_help_with_an_example(capsys, command):
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0
    assert "--log" in out and "--verbose" in out
    if command not in ("demo",):
        assert "Example" in out


def test_info_shows_what_a_newcomer_checks_first(stack, capsys):
    code, out, _ = _run(["info", stack], capsys)
    assert code == 0
    for key in ("file", "7 sections of 12 x 8 pixels, float32", "tilt order", "ascending",
                "binning hint", "--binning 2 gives 10 A"):
        assert key in out
