"""The command line, called in-process through ``main(args)``: exit codes, messages, files."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from taichi_etgs.classical.projector import forward_project
from taichi_etgs.cli import main
from taichi_etgs.io import write_stack

TILTS = np.arange(-60.0, 61.0, 5.0)


@pytest.fixture
def tilt_series(tmp_path, taichi_cpu):
    """A small dark-contrast stack with a sibling .tlt: a bright cube off-centre in x and z."""
    volume = np.zeros((16, 12, 40), np.float32)
    volume[10:14, 3:9, 26:32] = 1.0  # z = 10..14 (above the centre), x = 26..32 (right)
    views = 50.0 - forward_project(volume, TILTS)
    stack = tmp_path / "ts.mrc"
    write_stack(stack, views, 7.5)
    np.savetxt(tmp_path / "ts.tlt", TILTS, fmt="%.2f")
    return stack, volume


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["wbp"], ["sirt", "--iterations", "8"]])
def test_reconstruction_commands_write_a_tomogram(tilt_series, tmp_path, capsys, command):
    stack, volume = tilt_series
    out_path = tmp_path / "tomo.mrc"
    code, out, err = _run([*command, stack, "--thickness", 16, "-o", out_path,
                           "--arch", "cpu"], capsys)
    assert code == 0, err
    assert "wrote" in out
    with mrcfile.open(out_path) as mrc:
        tomo = mrc.data.copy()
        assert mrc.voxel_size.x == pytest.approx(7.5)
        assert "taichi-etgs" in mrc.header.label[0].decode()
    assert tomo.shape == volume.shape
    # Dark input -> dark output by default: the cube is the most negative region, and
    # it sits where it was (x 26..32, z 10..14), not mirrored in z.
    assert np.corrcoef(-tomo.ravel(), volume.ravel())[0, 1] > 0.7
    z, _, x = np.unravel_index(np.argmin(tomo), tomo.shape)
    assert 9 <= z <= 14 and 25 <= x <= 32


def test_output_contrast_bright_flips_the_polarity(tilt_series, tmp_path, capsys):
    stack, volume = tilt_series
    out_path = tmp_path / "bright.mrc"
    code, _, err = _run(["wbp", stack, "--thickness", 16, "-o", out_path,
                         "--output-contrast", "bright", "--arch", "cpu"], capsys)
    assert code == 0, err
    with mrcfile.open(out_path) as mrc:
        assert np.corrcoef(mrc.data.ravel(), volume.ravel())[0, 1] > 0.7


def test_refuses_to_overwrite_before_doing_any_work(tilt_series, tmp_path, capsys):
    stack, _ = tilt_series
    out_path = tmp_path / "tomo.mrc"
    out_path.write_bytes(b"keep me")
    code, _, err = _run(["wbp", stack, "--thickness", 16, "-o", out_path, "--arch", "cpu"],
                        capsys)
    assert code == 2
    assert "exists; use --force" in err and "tomo.mrc" in err
    assert out_path.read_bytes() == b"keep me"
    code, _, _ = _run(["wbp", stack, "--thickness", 16, "-o", out_path, "--force",
                       "--arch", "cpu"], capsys)
    assert code == 0


@pytest.mark.parametrize("args,message", [
    (["--width", 80], "pixels wide"),
    (["--radial", "0.35"], "CUTOFF,FALLOFF"),
    (["--exclude-views", "0-99"], "out of range"),
])
def test_bad_options_give_one_line_errors(tilt_series, tmp_path, capsys, args, message):
    stack, _ = tilt_series
    code, _, err = _run(["wbp", stack, "--thickness", 16, "-o", tmp_path / "x.mrc",
                         "--arch", "cpu", *args], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert err.strip().count("\n") <= 1  # "compute: cpu" at most, then the error line
    assert not (tmp_path / "x.mrc").exists()


def test_missing_angles_and_wrong_count(tilt_series, tmp_path, capsys):
    stack, _ = tilt_series
    (tmp_path / "ts.tlt").unlink()
    code, _, err = _run(["info", stack], capsys)
    assert code == 2 and "--angles" in err
    short = tmp_path / "short.tlt"
    np.savetxt(short, TILTS[:-1])
    code, _, err = _run(["info", stack, "--angles", short], capsys)
    assert code == 2 and "short.tlt" in err and str(TILTS.size) in err


def test_info_reports_what_a_user_checks(tilt_series, capsys):
    stack, _ = tilt_series
    code, out, _ = _run(["info", stack], capsys)
    assert code == 0
    assert "40 x 12 pixels" in out
    assert "7.5 A" in out
    assert "-60.00 to 60.00 deg" in out
    assert "missing wedge  60.0 deg" in out


def test_help_lists_the_commands(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for command in ("wbp", "sirt", "info"):
        assert command in out
