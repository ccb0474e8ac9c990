"""The I/O layer: MRC stacks and volumes, angle files, transforms, view lists, binning."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.io import (
    AngleWarning,
    StackWarning,
    aln_to_xf,
    apply_xf,
    bin_stack,
    load_tilt_series,
    parse_view_list,
    read_aln,
    read_mdoc,
    read_stack,
    read_tilt_angles,
    read_volume,
    read_xf,
    stack_summary,
    write_stack,
    write_volume,
)


def _match(*parts: str) -> str:
    """A ``match=`` pattern requiring every part, in order, literally."""
    return ".*".join(re.escape(p) for p in parts)


def _write_mrc(path: Path, data: np.ndarray, voxel_size: float = 0.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_size:
            mrc.voxel_size = voxel_size
    return path


def _stack(n: int = 7, ny: int = 8, nx: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, ny, nx)).astype(np.float32)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _aln_text(rows: list[tuple[int, float, float, float, float]], raw_size=None,
              dark=(), local: bool = True) -> list[str]:
    """Lines of an AreTomo .aln; rows are (SEC, ROT, TX, TY, TILT)."""
    lines = ["# AreTomo Alignment / Priims bprmMn"]
    if raw_size is not None:
        lines.append(f"# RawSize = {raw_size[0]} {raw_size[1]} {raw_size[2]}")
    lines.append("# NumPatches = 0")
    lines += [f"# DarkFrame =     {d}    {d}   -60.00" for d in dark]
    lines.append("# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE"
                 "     BASE     TILT")
    for sec, rot, tx, ty, tilt in rows:
        lines.append(f"{sec:5d}  {rot:9.4f}    1.00000  {tx:9.3f}  {ty:9.3f}     1.00     1.00"
                     f"     1.00     0.00  {tilt:8.2f}")
    if local:
        lines += ["# Local Alignment", "   0   0 -1537.16  -1363.14     -6.93    -36.22   1.0"]
    return lines


def test_io_package_does_not_import_taichi():
    # A fresh interpreter: other tests in this session may have imported Taichi already.
    code = "import sys, taichi_etgs.io; sys.exit('taichi' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])


def test_huge_file_as_angles_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "big.tlt"
    with open(path, "wb") as fh:
        fh.truncate(65 * 2**20)  # sparse: all NUL bytes
    with pytest.raises(InputError, match=_match("big.tlt", "binary file")):
        read_tilt_angles(path)


# ----------------------------------------------------------------------------- MRC volumes


def test_volume_round_trip_keeps_values_voxel_size_and_is_valid_mrc(tmp_path):
    volume = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    out = write_volume(tmp_path / "tomo.mrc", volume, 12.5, labels=["taichi-etgs wbp"])
    back, voxel = read_volume(out)
    np.testing.assert_array_equal(back, volume)  # float32 in, float32 out: exact
    assert back.dtype == np.float32 and back.flags.c_contiguous
    assert voxel == pytest.approx(12.5)
    assert mrcfile.validate(str(out), print_file=io.StringIO())
    with mrcfile.open(out, header_only=True) as mrc:
        assert mrc.header.label[0].decode().startswith("taichi-etgs wbp")
        assert float(mrc.header.dmax) == pytest.approx(volume.max())
        assert float(mrc.header.dmean) == pytest.approx(volume.mean(), abs=1e-5)


def test_write_volume_labels_are_truncated_and_capped(tmp_path):
    labels = [f"label {i} " + "x" * 100 + "\u00e9" for i in range(12)]
    out = write_volume(tmp_path / "v.mrc", np.zeros((2, 3, 4)), 1.0, labels=labels)
    with mrcfile.open(out, header_only=True) as mrc:
        assert int(mrc.header.nlabl) == 10
        assert all(len(lab) <= 80 for lab in mrc.header.label)


def test_write_stack_marks_an_image_stack_and_reads_back(tmp_path):
    stack = _stack(4, 5, 6)
    out = write_stack(tmp_path / "s.mrc", stack, 3.0)
    with mrcfile.open(out, header_only=True) as mrc:
        assert int(mrc.header.ispg) == 0
    data, pixel = read_stack(out)
    np.testing.assert_array_equal(data, stack)
    assert pixel == pytest.approx(3.0)


def test_write_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "tomo.mrc"
    write_volume(path, np.zeros((2, 3, 4)), 1.0)
    with pytest.raises(InputError, match=_match("tomo.mrc", "exists; use --force")):
        write_volume(path, np.ones((2, 3, 4)), 1.0)
    write_volume(path, np.ones((2, 3, 4)), 1.0, force=True)
    assert read_volume(path)[0].min() == 1.0


def test_write_refuses_nan_and_writes_nothing(tmp_path):
    volume = np.zeros((3, 4, 5), np.float32)
    volume[2, 1, 1] = np.nan
    with pytest.raises(InputError, match=_match("bad.mrc", "NaN or Inf", "section 2")):
        write_volume(tmp_path / "bad.mrc", volume, 1.0)
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_volume(tmp_path / "nope" / "v.mrc", np.zeros((2, 2, 2)), 1.0)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_atomic_write_leaves_no_temp_file_after_an_exception(tmp_path, monkeypatch,
                                                             interrupt):
    def fail(self, data):
        raise interrupt("stop")

    monkeypatch.setattr(mrcfile.mrcobject.MrcObject, "set_data", fail)
    with pytest.raises(interrupt):
        write_volume(tmp_path / "v.mrc", np.zeros((2, 3, 4)), 1.0)
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    path = write_volume(tmp_path / "v.mrc", np.zeros((2, 3, 4)), 1.0)

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_volume(path, np.ones((2, 3, 4)), 1.0, force=True)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["v.mrc"]
    assert read_volume(path)[0].max() == 0.0


# ----------------------------------------------------------------------------- MRC stacks


@pytest.mark.parametrize("dtype, mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2),
                                         (np.uint16, 6), (np.float16, 12)])
def test_read_stack_supported_modes(tmp_path, dtype, mode):
    values = (np.arange(3 * 4 * 5) % 100).reshape(3, 4, 5).astype(dtype)
    path = _write_mrc(tmp_path / f"mode{mode}.st", values, voxel_size=2.0)
    with mrcfile.open(path, header_only=True) as mrc:
        assert int(mrc.header.mode) == mode
    data, pixel = read_stack(path)
    assert data.shape == (3, 4, 5)
    assert not data.flags.writeable  # a read-only memory map
    np.testing.assert_array_equal(np.asarray(data, np.float32), values.astype(np.float32))
    assert pixel == pytest.approx(2.0)
    loaded, _ = read_stack(path, mmap=False)
    np.testing.assert_array_equal(loaded, data)


def test_mode0_with_imod_unsigned_flag_reads_as_uint8(tmp_path):
    values = np.array([[[0, 100], [-56, -1]]] * 2, dtype=np.int8)  # -56 is byte 200
    path = _write_mrc(tmp_path / "bytes.mrc", values)
    raw = bytearray(path.read_bytes())
    raw[152:160] = np.array([1146047817, 0], dtype="<i4").tobytes()  # IMOD stamp, flags 0
    path.write_bytes(bytes(raw))
    data, _ = read_stack(path)
    assert data.dtype == np.uint8
    assert data[0].tolist() == [[0, 100], [200, 255]]


def test_missing_pixel_size_is_zero(tmp_path):
    path = _write_mrc(tmp_path / "nopix.mrc", _stack(3, 4, 4))
    assert read_stack(path)[1] == 0.0


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=_match("absent.mrc", "file not found")):
        read_stack(tmp_path / "absent.mrc")


@pytest.mark.parametrize("content", [b"hello, this is not an MRC file\n" * 60, b"abc"],
                         ids=["text", "three-bytes"])
def test_garbage_bytes_are_not_an_mrc(tmp_path, content):
    path = tmp_path / "garbage.mrc"
    path.write_bytes(content)
    with pytest.raises(InputError, match=_match("garbage.mrc", "is not an MRC file")):
        read_stack(path)


def test_truncated_mrc(tmp_path):
    path = _write_mrc(tmp_path / "cut.mrc", _stack(3, 8, 8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=_match("cut.mrc", "is truncated", "8 x 8 x 3")):
        read_stack(path)


@pytest.mark.parametrize("shape", [(6, 7), (1, 6, 7)])
def test_single_image_is_not_a_stack(tmp_path, shape):
    path = _write_mrc(tmp_path / "image.mrc", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=_match("image.mrc", "single image, not a tilt stack")):
        read_stack(path)


def test_unsupported_mode(tmp_path):
    path = _write_mrc(tmp_path / "complex.mrc", np.zeros((2, 3, 4), np.complex64))
    with pytest.raises(InputError, match=_match("complex.mrc", "mode 4", "not supported")):
        read_stack(path)


def test_missing_map_id_warns_but_reads(tmp_path):
    path = _write_mrc(tmp_path / "old.mrc", _stack(2, 3, 4))
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"\0\0\0\0"
    path.write_bytes(bytes(raw))
    with pytest.warns(StackWarning, match=_match("old.mrc", "MAP")):
        data, _ = read_stack(path)
    assert data.shape == (2, 3, 4)


def test_read_volume_transposes_other_axis_orders(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (z, y, x)
    path = tmp_path / "yxz.mrc"
    with mrcfile.new(path) as mrc:
        # Store sections along X: file axes (sections, rows, cols) = (x, z, y)
        mrc.set_data(np.ascontiguousarray(volume.transpose(2, 0, 1)))
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 2, 3, 1
    back, _ = read_volume(path)
    np.testing.assert_array_equal(back, volume)


# ----------------------------------------------------------------------------- angles


def test_tlt_reads_with_trailing_blank_lines(tmp_path):
    path = _write_lines(tmp_path / "ts.tlt", ["-3.0", "0", " 3.0 ", "", "  "])
    angles = read_tilt_angles(path, n_expected=3)
    assert angles.dtype == np.float64
    assert angles.tolist() == [-3.0, 0.0, 3.0]


def test_unknown_extension_is_read_as_one_angle_per_line(tmp_path):
    path = _write_lines(tmp_path / "angles.txt", ["-60", "60"])
    assert read_tilt_angles(path).tolist() == [-60.0, 60.0]


def test_angle_count_mismatch(tmp_path):
    path = _write_lines(tmp_path / "ts.rawtlt", [str(a) for a in range(-60, 60, 3)])
    with pytest.raises(InputError,
                       match=_match("ts.rawtlt", "has 40 angles but the stack has 41 sections")):
        read_tilt_angles(path, n_expected=41)


def test_non_numeric_line(tmp_path):
    path = _write_lines(tmp_path / "ts.tlt", ["-3", "zero", "3"])
    with pytest.raises(InputError, match=_match("ts.tlt, line 2", "'zero' is not a number")):
        read_tilt_angles(path)


def test_blank_line_in_the_middle(tmp_path):
    path = _write_lines(tmp_path / "ts.tlt", ["-3", "0", "", "3"])
    with pytest.raises(InputError, match=_match("ts.tlt, line 3", "blank line")):
        read_tilt_angles(path)


def test_two_values_on_a_line(tmp_path):
    path = _write_lines(tmp_path / "ts.tlt", ["-3", "0 1"])
    with pytest.raises(InputError, match=_match("ts.tlt, line 2", "2 values")):
        read_tilt_angles(path)


@pytest.mark.parametrize("bad", ["90", "-95.5", "nan", "inf"])
def test_angle_outside_range(tmp_path, bad):
    path = _write_lines(tmp_path / "ts.tlt", ["-3", "0", bad])
    with pytest.raises(InputError, match=_match("ts.tlt, line 3", "outside (-90, 90)")):
        read_tilt_angles(path)


def test_empty_angle_file(tmp_path):
    path = _write_lines(tmp_path / "ts.tlt", [""])
    with pytest.raises(InputError, match=_match("ts.tlt", "is empty")):
        read_tilt_angles(path)


def test_binary_file_as_angles(tmp_path):
    path = _write_mrc(tmp_path / "stack.tlt", _stack(2, 3, 3))
    with pytest.raises(InputError, match=_match("stack.tlt", "binary file")):
        read_tilt_angles(path)


def test_radians_warning(tmp_path):
    path = _write_lines(tmp_path / "rad.tlt", ["-1.0472", "0", "1.0472"])
    with pytest.warns(AngleWarning, match=_match("rad.tlt", "look like radians")):
        angles = read_tilt_angles(path)
    assert len(angles) == 3


_MDOC = """PixelSpacing = 2.17
ImageFile = ts.mrc
ImageSize = 10 8
DataMode = 1

[T = SerialEM: Digitized on EMBL Krios]

[ZValue = 1]
TiltAngle = 3.00
PixelSpacing = 2.17

[ZValue = 0]
TiltAngle = -0.02
ExposureTime = 1.0

[ZValue = 2]
TiltAngle = -3.01
"""


def test_mdoc_angles_in_zvalue_order_and_pixel_spacing(tmp_path):
    path = tmp_path / "ts.mrc.mdoc"
    path.write_text(_MDOC)
    info = read_mdoc(path)
    assert info["tilt_angles_deg"].tolist() == [-0.02, 3.0, -3.01]
    assert info["pixel_spacing_A"] == pytest.approx(2.17)
    assert read_tilt_angles(path, n_expected=3).tolist() == [-0.02, 3.0, -3.01]


def test_mdoc_section_without_tilt_angle(tmp_path):
    path = tmp_path / "ts.mdoc"
    path.write_text(_MDOC.replace("TiltAngle = -3.01\n", "Magnification = 64000\n"))
    with pytest.raises(InputError,
                       match=_match("ts.mdoc, line 16", "[ZValue = 2] has no TiltAngle")):
        read_tilt_angles(path)


def test_mdoc_without_sections(tmp_path):
    path = tmp_path / "frames.mdoc"
    path.write_text("PixelSpacing = 1.0\n[FrameSet = 0]\nTiltAngle = 0\n")
    with pytest.raises(InputError, match=_match("frames.mdoc", "no [ZValue = n] sections")):
        read_mdoc(path)


# ----------------------------------------------------------------------------- AreTomo .aln


def test_aln_rows_dark_frames_and_local_block(tmp_path):
    rows = [(sec, 85.0, 1.5 * sec, -2.0, -6.0 + 3 * sec) for sec in (1, 2, 3, 4)]
    path = _write_lines(tmp_path / "ts.aln", _aln_text(rows, (10, 8, 5), dark=[0]))
    aln = read_aln(path)
    assert aln.section.tolist() == [1, 2, 3, 4]
    assert aln.dark_sections.tolist() == [0]
    assert aln.raw_size == (10, 8, 5)
    assert aln.tilt_deg.tolist() == [-3.0, 0.0, 3.0, 6.0]
    assert aln.tx.tolist() == [1.5, 3.0, 4.5, 6.0]
    assert aln.rot_deg.tolist() == [85.0] * 4
    assert read_tilt_angles(path, n_expected=4).tolist() == [-3.0, 0.0, 3.0, 6.0]


def test_aln_renumbered_after_dark_frames_maps_to_raw_sections(tmp_path):
    # AreTomo3 numbers the kept views 0.. after removing dark frames 0 and 1.
    rows = [(sec, 85.0, 0.0, 0.0, float(sec)) for sec in range(3)]
    path = _write_lines(tmp_path / "ts.aln", _aln_text(rows, (10, 8, 5), dark=[0, 1]))
    assert read_aln(path).section.tolist() == [2, 3, 4]


def test_aln_wrong_column_count(tmp_path):
    lines = _aln_text([(0, 85.0, 0.0, 0.0, -3.0), (1, 85.0, 0.0, 0.0, 0.0)], local=False)
    lines[-1] = lines[-1].rsplit(maxsplit=1)[0]
    path = _write_lines(tmp_path / "ts.aln", lines)
    with pytest.raises(InputError, match=_match(f"ts.aln, line {len(lines)}",
                                                "expected 10 columns", "found 9")):
        read_aln(path)


def test_aln_non_numeric(tmp_path):
    lines = _aln_text([(0, 85.0, 0.0, 0.0, -3.0)], local=False)
    lines[-1] = lines[-1].replace("85.0000", "eighty")
    path = _write_lines(tmp_path / "ts.aln", lines)
    with pytest.raises(InputError, match=_match(f"ts.aln, line {len(lines)}", "'eighty'")):
        read_aln(path)


def test_aln_with_too_few_rows(tmp_path):
    rows = [(sec, 85.0, 0.0, 0.0, float(sec)) for sec in range(3)]
    path = _write_lines(tmp_path / "ts.aln", _aln_text(rows, (10, 8, 5)))
    with pytest.raises(InputError, match=_match("ts.aln", "has 3 alignment rows but the "
                                                          "stack needs 5")):
        read_aln(path)


# ----------------------------------------------------------------------------- IMOD .xf


def test_read_xf(tmp_path):
    path = _write_lines(tmp_path / "ts.xf", ["1 0 0 1 2.5 -1", "0.5 -0.866 0.866 0.5 0 0", ""])
    xf = read_xf(path, n_expected=2)
    assert xf.shape == (2, 2, 3)
    np.testing.assert_array_equal(xf[0], [[1, 0, 2.5], [0, 1, -1]])
    np.testing.assert_array_equal(xf[1], [[0.5, -0.866, 0], [0.866, 0.5, 0]])


def test_xf_wrong_column_count(tmp_path):
    path = _write_lines(tmp_path / "ts.xf", ["1 0 0 1 0 0", "1 0 0 1 0"])
    with pytest.raises(InputError, match=_match("ts.xf, line 2", "5 values; expected 6")):
        read_xf(path)


def test_xf_count_mismatch(tmp_path):
    path = _write_lines(tmp_path / "ts.xf", ["1 0 0 1 0 0"] * 3)
    with pytest.raises(InputError, match=_match("ts.xf", "3 transforms", "4 sections")):
        read_xf(path, n_expected=4)


def _identity(n: int) -> np.ndarray:
    return np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (n, 1, 1))


def test_apply_xf_identity_is_identity():
    stack = _stack(3, 9, 12)
    np.testing.assert_allclose(apply_xf(stack, _identity(3)), stack, rtol=0, atol=1e-6)


def test_apply_xf_shift_moves_content_towards_plus_x():
    # Convention: DX = +2 moves image content 2 pixels to higher column index (x).
    stack = np.zeros((1, 9, 12), np.float32)
    stack[0, 4, 5] = 1.0
    xf = _identity(1)
    xf[0, 0, 2] = 2.0
    out = apply_xf(stack, xf)
    assert np.unravel_index(np.argmax(out[0]), out[0].shape) == (4, 7)
    assert out[0, 4, 7] == pytest.approx(1.0)
    # Pixels shifted in from outside the image take its mean (newstack's fill).
    assert out[0, 0, 0] == pytest.approx(stack[0].mean())


def test_apply_xf_rotates_about_nx_over_2():
    # x' = A (x - c) + c with c = (nx/2, ny/2) = (8, 8) and A a +90 degree rotation:
    # the raw point (x, y) = (11, 8) lands at (8, 11).
    image = np.zeros((1, 16, 16), np.float32)
    image[0, 8, 11] = 1.0
    xf = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    out = apply_xf(image, xf)
    assert np.unravel_index(np.argmax(out[0]), out[0].shape) == (11, 8)
    assert out[0, 11, 8] == pytest.approx(1.0, abs=1e-6)


def test_aln_to_xf_undoes_aretomo_rotation_and_shift(tmp_path):
    # AreTomo's model: aligned point p appears in the raw image at R(ROT)(p - c) + c + T.
    rot, tx, ty = 90.0, 2.0, -1.0
    path = _write_lines(tmp_path / "ts.aln", _aln_text([(0, rot, tx, ty, 0.0)]))
    aln = read_aln(path)
    xf = aln_to_xf(aln)
    np.testing.assert_allclose(xf[0, :, :2], [[0, 1], [-1, 0]], atol=1e-12)  # R(-90)
    n = 16
    c = np.array([n / 2, n / 2])
    p_aligned = c + np.array([3.0, 0.0])
    r = np.deg2rad(rot)
    rot_m = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    p_raw = rot_m @ (p_aligned - c) + c + np.array([tx, ty])
    raw = np.zeros((1, n, n), np.float32)
    ix, iy = np.rint(p_raw).astype(int)
    raw[0, iy, ix] = 1.0
    out = apply_xf(raw, xf)
    assert np.unravel_index(np.argmax(out[0]), out[0].shape) == (int(p_aligned[1]),
                                                                  int(p_aligned[0]))


def test_aln_to_xf_pure_shift(tmp_path):
    # With ROT = 0 aligning only undoes the shift: (DX, DY) = -(TX, TY).
    aln = read_aln(_write_lines(tmp_path / "s.aln", _aln_text([(0, 0.0, 3.0, -4.0, 0.0)])))
    np.testing.assert_allclose(aln_to_xf(aln)[0], [[1, 0, -3], [0, 1, 4]], atol=1e-12)


# ----------------------------------------------------------------------------- view lists


@pytest.mark.parametrize("text, expected", [
    ("0,1,40", [0, 1, 40]),
    ("1-3", [1, 2, 3]),
    (" 0 - 2 , 5 7 ", [0, 1, 2, 5, 7]),
    ("3,3,2-4", [2, 3, 4]),
    ("", []),
])
def test_parse_view_list(text, expected):
    assert parse_view_list(text, 41) == expected


@pytest.mark.parametrize("text, message", [
    ("41", "view 41 is out of range"),
    ("0,x", "'x' is not a view index"),
    ("-1", "'-1' is not a view index"),
    ("5-3", "runs backwards"),
    ("0-40", "excludes all 41 views"),
    ("1.5", "'1.5' is not a view index"),
])
def test_parse_view_list_errors(text, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_view_list(text, 41)


# ----------------------------------------------------------------------------- binning


def test_bin_stack_averages_blocks_and_crops_remainder():
    stack = np.arange(2 * 5 * 7, dtype=np.int16).reshape(2, 5, 7)
    binned = bin_stack(stack, 2)
    assert binned.shape == (2, 2, 3) and binned.dtype == np.float32
    expected = stack[:, :4, :6].astype(np.float64).reshape(2, 2, 2, 3, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(binned, expected, rtol=1e-6)
    assert binned[0, 0, 0] == pytest.approx((0 + 1 + 7 + 8) / 4)


def test_bin_stack_streams_a_memmap(tmp_path):
    path = _write_mrc(tmp_path / "s.mrc", _stack(3, 8, 8))
    data, _ = read_stack(path)
    np.testing.assert_allclose(bin_stack(data, 4), bin_stack(np.array(data), 4))
    np.testing.assert_array_equal(bin_stack(data, 1), np.asarray(data))


@pytest.mark.parametrize("binning", [0, 2.5, 9])
def test_bin_stack_rejects_bad_factors(binning):
    with pytest.raises(InputError, match="binning"):
        bin_stack(np.zeros((1, 8, 8)), binning)


# ----------------------------------------------------------------------------- tilt series


@pytest.fixture
def series_files(tmp_path):
    """A 7-view stack (8 x 10 pixels, 2.5 A) with its sibling .tlt."""
    stack = _stack(7, 8, 10)
    stack_path = _write_mrc(tmp_path / "ts.st", stack, voxel_size=2.5)
    angles = [-9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 9.0]
    _write_lines(tmp_path / "ts.tlt", [str(a) for a in angles])
    return stack_path, stack, np.array(angles)


def test_load_tilt_series_with_exclusion_and_binning(series_files):
    stack_path, stack, angles = series_files
    series = load_tilt_series(stack_path, exclude_views="0, 5-6", binning=2)
    assert series.data.shape == (4, 4, 5)
    assert series.data.dtype == np.float32 and series.data.flags.c_contiguous
    assert series.kept_views.tolist() == [1, 2, 3, 4]
    assert series.tilts_deg.tolist() == angles[1:5].tolist()
    assert series.pixel_size_A == pytest.approx(5.0)
    assert series.angles_source.endswith("ts.tlt")
    np.testing.assert_allclose(series.data, bin_stack(stack[1:5], 2))


def test_load_tilt_series_exclusion_as_list_and_explicit_angles(series_files, tmp_path):
    stack_path, stack, angles = series_files
    other = _write_lines(tmp_path / "other.txt", [str(a / 3) for a in angles * 10])
    series = load_tilt_series(stack_path, other, exclude_views=[6, 0])
    assert series.kept_views.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(series.tilts_deg, angles[1:6] * 10 / 3)
    np.testing.assert_array_equal(series.data, stack[1:6])


def test_load_tilt_series_finds_serialem_mdoc(tmp_path):
    stack_path = _write_mrc(tmp_path / "ts.mrc", _stack(3, 8, 10))
    (tmp_path / "ts.mrc.mdoc").write_text(_MDOC)
    series = load_tilt_series(stack_path)
    assert series.tilts_deg.tolist() == [-0.02, 3.0, -3.01]
    assert series.pixel_size_A == pytest.approx(2.17)  # the header has none, the mdoc has


def test_load_tilt_series_without_angles(tmp_path):
    stack_path = _write_mrc(tmp_path / "lonely.st", _stack(3, 8, 10))
    with pytest.raises(InputError, match=_match("lonely.st", "no tilt angles: pass --angles")):
        load_tilt_series(stack_path)


def test_load_tilt_series_angle_count_mismatch(series_files, tmp_path):
    stack_path, _, _ = series_files
    short = _write_lines(tmp_path / "short.tlt", ["-3", "0", "3"])
    with pytest.raises(InputError, match=_match("short.tlt", "3 angles but the stack has 7")):
        load_tilt_series(stack_path, short)


def test_load_tilt_series_nan_pixels(series_files):
    stack_path, stack, _ = series_files
    bad = stack.copy()
    bad[3, 2, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's own header-stats warning
        _write_mrc(stack_path, bad)
    with pytest.raises(InputError, match=_match("ts.st", "section 3", "NaN or Inf")):
        load_tilt_series(stack_path)


def test_load_tilt_series_constant_stack_has_no_signal(series_files):
    stack_path, _, _ = series_files
    _write_mrc(stack_path, np.full((7, 8, 10), 3.0, np.float32))
    with pytest.raises(InputError, match=_match("ts.st", "contains no signal")):
        load_tilt_series(stack_path)


def test_load_tilt_series_warns_on_a_constant_section(series_files):
    stack_path, stack, _ = series_files
    blank = stack.copy()
    blank[6] = 0.0
    _write_mrc(stack_path, blank)
    with pytest.warns(StackWarning, match=_match("ts.st", "section(s) 6 are constant")):
        series = load_tilt_series(stack_path)
    assert series.n_tilts == 7


def test_load_tilt_series_needs_two_views(series_files):
    stack_path, _, _ = series_files
    with pytest.raises(InputError, match=_match("ts.st", "only 1 view(s) left")):
        load_tilt_series(stack_path, exclude_views="0-5")


def test_load_tilt_series_warns_on_duplicated_angles(series_files, tmp_path):
    stack_path, _, _ = series_files
    dup = _write_lines(tmp_path / "dup.tlt", ["-9", "-6", "-3", "0", "0", "6", "9"])
    with pytest.warns(AngleWarning, match=_match("dup.tlt", "0 appear more than once")):
        load_tilt_series(stack_path, dup)


def test_load_tilt_series_keeps_only_aln_sections(series_files, tmp_path):
    stack_path, stack, _ = series_files
    rows = [(sec, 0.0, 0.0, 0.0, -8.0 + 3 * sec) for sec in range(1, 6)]
    aln_path = _write_lines(tmp_path / "ts.aln", _aln_text(rows, (10, 8, 7), dark=[0, 6]))
    series = load_tilt_series(stack_path, aln_path=aln_path, apply_aln=True)
    assert series.kept_views.tolist() == [1, 2, 3, 4, 5]
    assert series.tilts_deg.tolist() == [-5.0, -2.0, 1.0, 4.0, 7.0]
    np.testing.assert_allclose(series.data, stack[1:6], atol=1e-6)  # ROT = 0, no shift
    assert series.angles_source.endswith("ts.aln")


def test_load_tilt_series_aln_with_too_few_rows(series_files, tmp_path):
    stack_path, _, _ = series_files
    rows = [(sec, 0.0, 0.0, 0.0, float(sec)) for sec in range(5)]
    aln_path = _write_lines(tmp_path / "ts.aln", _aln_text(rows))
    with pytest.raises(InputError, match=_match("ts.aln", "5 alignment rows", "needs 7")):
        load_tilt_series(stack_path, aln_path=aln_path)


def test_load_tilt_series_applies_xf(series_files, tmp_path):
    stack_path, stack, _ = series_files
    xf_path = _write_lines(tmp_path / "ts.xf", ["1 0 0 1 1 0"] * 7)
    series = load_tilt_series(stack_path, xf_path=xf_path)
    np.testing.assert_allclose(series.data[:, :, 1:], stack[:, :, :-1], atol=1e-6)


def test_load_tilt_series_xf_and_aln_together_is_an_error(series_files, tmp_path):
    stack_path, _, _ = series_files
    xf_path = _write_lines(tmp_path / "ts.xf", ["1 0 0 1 0 0"] * 7)
    rows = [(sec, 0.0, 0.0, 0.0, float(sec)) for sec in range(7)]
    aln_path = _write_lines(tmp_path / "ts.aln", _aln_text(rows))
    with pytest.raises(InputError, match="not both"):
        load_tilt_series(stack_path, xf_path=xf_path, aln_path=aln_path, apply_aln=True)


# ----------------------------------------------------------------------------- summary


def test_stack_summary(series_files, tmp_path):
    stack_path, stack, _ = series_files
    dose_symmetric = [0, 3, -3, -6, 6, 9, -9]
    angles = _write_lines(tmp_path / "dose.tlt", [str(a) for a in dose_symmetric])
    summary = stack_summary(load_tilt_series(stack_path, angles))
    assert (summary["n_tilts"], summary["ny"], summary["nx"]) == (7, 8, 10)
    assert summary["pixel_size_A"] == pytest.approx(2.5)
    assert summary["mean"] == pytest.approx(stack.astype(np.float64).mean())
    assert summary["std"] == pytest.approx(stack.astype(np.float64).std())
    assert (summary["min"], summary["max"]) == (stack.min(), stack.max())
    assert (summary["tilt_min_deg"], summary["tilt_max_deg"]) == (-9.0, 9.0)
    assert summary["mean_step_deg"] == pytest.approx(3.0)
    assert summary["missing_wedge_deg"] == pytest.approx(162.0)
    assert summary["warnings"] == []  # a dose-symmetric order is fine: no warning
    assert summary["tilt_order"].startswith("acquisition order")


def test_stack_summary_flags_odd_angles(tmp_path):
    stack_path = _write_mrc(tmp_path / "odd.st", _stack(4, 8, 8))
    _write_lines(tmp_path / "odd.tlt", ["10", "12", "20", "22"])
    notes = " | ".join(stack_summary(load_tilt_series(stack_path))["warnings"])
    assert "do not bracket 0" in notes
    assert "steps vary" in notes
    assert "pixel size unknown" in notes
