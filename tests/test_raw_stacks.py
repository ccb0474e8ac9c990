"""Raw SerialEM stacks with their .mdoc (issue 10, item 4): the tilt axis turned to Y on
load, alone or after an IMOD .xf that only shifts, with one error line for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.cli.app import main
from taichi_etgs.errors import InputError
from taichi_etgs.io import write_stack
from taichi_etgs.io.transforms import apply_xf_image, compose_xf, rotation_xf
from taichi_etgs.pipeline import inputs
from taichi_etgs.pipeline.inputs import StackSource
from taichi_etgs.pipeline.session import Session

TILTS = (-30.0, -15.0, 0.0, 15.0, 30.0)
ALIGNED_YX = (24, 40)  # the views once the tilt axis is along Y: 24 rows, 40 columns
AXIS = 84.0  # SerialEM's tilt axis angle: the axis nearer X than Y, as on many scopes
# Blobs (x, y, z) in pixels from the centre.
BLOBS = ((-8.0, -4.0, 2.0), (6.0, 5.0, -3.0), (1.0, -1.0, 0.0))


def _aligned_views() -> np.ndarray:
    """Projections of Gaussian blobs (u = x cos t + z sin t, v = y): the views a perfect
    alignment gives."""
    ny, nx = ALIGNED_YX
    v, u = np.mgrid[0:ny, 0:nx] + 0.5 - np.array([ny / 2, nx / 2])[:, None, None]
    out = np.zeros((len(TILTS), ny, nx), np.float32)
    for k, t in enumerate(np.deg2rad(TILTS)):
        for x, y, z in BLOBS:
            cu = x * np.cos(t) + z * np.sin(t)
            out[k] += np.exp(-((u - cu) ** 2 + (v - y) ** 2) / (2 * 2.0 ** 2))
    return 100 - 10 * out  # dark density on a bright background


def _mdoc(path, *, rotation=None, title_axis=None, tilts=TILTS, extra=""):
    """A SerialEM .mdoc as its documentation describes it."""
    lines = ["PixelSpacing = 5.0", "ImageFile = raw.st", "ImageSize = 24 40", "DataMode = 2", "",
             "[T = SerialEM: Digitized on an FEI Krios                30-Nov-26  15:30:19    ]"]
    if title_axis is not None:
        lines += ["", f"[T =     Tilt axis angle = {title_axis}, binning = 1  spot = 8  "
                      f"camera = 0]"]
    for z, t in enumerate(tilts):
        lines += ["", f"[ZValue = {z}]", f"TiltAngle = {t:.2f}", "StagePosition = 10.5 -3.2",
                  "Magnification = 33000", "ExposureDose = 3.0"]
        if rotation is not None:
            lines.append(f"RotationAngle = {rotation}")
    path.write_text("\n".join(lines) + extra + "\n")
    return path


def _raw(views: np.ndarray, shifts=None) -> np.ndarray:
    """What the camera records: the aligned views turned by the tilt axis angle (a point
    at p appears at R(AXIS) (p - c) + c + shift), X and Y sizes swapped."""
    raw = np.empty((len(views), ALIGNED_YX[1], ALIGNED_YX[0]), np.float32)
    for k, view in enumerate(views):
        m = rotation_xf(AXIS)
        if shifts is not None:
            m[:, 2] = shifts[k]
        raw[k] = apply_xf_image(view, m, output_shape=raw.shape[1:], order=3, edge="nearest")
    return raw


@pytest.fixture
def raw_st(tmp_path):
    """raw.st (no angle file beside it) and the views it should align to."""
    views = _aligned_views()
    st = write_stack(tmp_path / "raw.st", _raw(views), 5.0)
    return st, views


def _inner(a):
    return a[:, 5:-5, 8:-8]  # away from the corners the turn brings in from outside


def _load(source, force=False):
    notes = []
    series, _ = inputs.load(source, Session(note=notes.append, warning=notes.append), force)
    return series, notes


def test_mdoc_given_turns_the_views_so_that_the_axis_is_along_y(raw_st):
    st, views = raw_st
    mdoc = _mdoc(st.with_name("acquired.mdoc"), rotation=AXIS)
    source = StackSource(st, mdoc=mdoc)
    header = inputs.peek(source)
    assert (header.ny, header.nx) == ALIGNED_YX and (header.ny_raw, header.nx_raw) == (40, 24)
    series, notes = _load(source)
    assert series.data.shape == (5, *ALIGNED_YX)
    assert series.tilts_deg == pytest.approx(TILTS)  # the .mdoc gives the angles too
    assert np.abs(_inner(series.data - views)).max() < 1.0  # of a contrast of 10 (interpolation)
    assert any(f"turned the views by {-AXIS:g} degrees" in n and "acquired.mdoc" in n
               and "no shifts" in n for n in notes), notes
    # The other sign (the axis at -84 degrees) puts the blobs elsewhere.
    wrong, _ = _load(StackSource(st, mdoc=_mdoc(st.with_name("wrong.mdoc"), rotation=-AXIS)))
    assert np.abs(_inner(wrong.data - views)).max() > 5


def test_the_title_lines_tilt_axis_angle_is_used_too(raw_st):
    st, views = raw_st
    mdoc = _mdoc(st.with_name("raw.st.mdoc"), title_axis=AXIS)
    series, _ = _load(StackSource(st, mdoc=mdoc))
    assert np.abs(_inner(series.data - views)).max() < 1.0


def test_a_shift_only_xf_is_followed_by_the_sibling_mdocs_turn(raw_st):
    """IMOD's coarse alignment (.prexg) only shifts the raw views; the .mdoc beside the
    stack gives the turn, applied after it without being asked."""
    st, views = raw_st
    shifts = np.array([[2.0, -1.0], [0.5, 3.0], [0.0, 0.0], [-2.5, 1.5], [1.0, -2.0]])
    write_stack(st, _raw(views, shifts), 5.0, force=True)
    _mdoc(st.with_name("raw.st.mdoc"), rotation=AXIS)
    prexg = st.with_name("raw.prexg")
    prexg.write_text("".join(f"1 0 0 1 {-sx} {-sy}\n" for sx, sy in shifts))
    series, notes = _load(StackSource(st, xf=prexg))
    assert series.data.shape == (5, *ALIGNED_YX)
    assert np.abs(_inner(series.data - views)).max() < 1.0
    assert any("after raw.prexg's shifts" in n for n in notes), notes


def test_an_xf_that_turns_the_views_is_not_turned_again(raw_st):
    st, views = raw_st
    _mdoc(st.with_name("raw.st.mdoc"), rotation=AXIS)
    xf = st.with_name("raw.xf")
    m = rotation_xf(-AXIS)
    xf.write_text("".join(" ".join(f"{v:.7f}" for v in (*m[0, :2], *m[1, :2], 0, 0)) + "\n"
                          for _ in TILTS))
    series, notes = _load(StackSource(st, xf=xf, mdoc=st.with_name("raw.st.mdoc")))
    # newstack's rule for an .xf: the raw size; the axis is along Y all the same
    assert series.data.shape == (5, 40, 24)
    assert any("raw.xf turns the views by" in n and "brings" in n for n in notes), notes
    raw = _raw(views)
    assert series.data == pytest.approx(
        np.stack([apply_xf_image(r, compose_xf(rotation_xf(0), m)) for r in raw]))


def test_an_xf_that_leaves_the_axis_away_from_y_is_refused(raw_st, capsys):
    st, _ = raw_st
    _mdoc(st.with_name("raw.st.mdoc"), rotation=AXIS)
    xf = st.with_name("raw.xf")
    xf.write_text("".join("0.9659258 -0.2588190 0.2588190 0.9659258 0 0\n" for _ in TILTS))
    angles = st.with_name("raw.tlt")
    angles.write_text("".join(f"{t}\n" for t in TILTS))
    code = main(["wbp", str(st), "--xf", str(xf), "--thickness", "8", "-o",
                 str(st.with_name("t.mrc")), "--arch", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert "raw.xf turns the views by 15.0 degrees" in errors[0] and "raw.st.mdoc" in errors[0]


def test_a_raw_stack_without_mdoc_option_is_refused_with_the_way_out(raw_st, capsys):
    st, _ = raw_st
    _mdoc(st.with_name("raw.st.mdoc"), rotation=AXIS)
    out = st.with_name("t.mrc")
    code = main(["wbp", str(st), "--thickness", "8", "-o", str(out), "--arch", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--mdoc raw.st.mdoc" in err and not out.exists()
    code = main(["wbp", str(st), "--mdoc", str(st.with_name("raw.st.mdoc")), "--thickness", "8",
                 "-o", str(out), "--arch", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "turned the views by -84 degrees" in err
    import mrcfile

    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (8, *ALIGNED_YX)


@pytest.mark.parametrize("body, words, line", [
    (dict(rotation="eighty"), "RotationAngle 'eighty' is not a number", 13),
    (dict(rotation=AXIS, tilts=(-30.0, -15.0, 0.0, 15.0, 30.0), extra="\n[ZValue = 1]"),
     "[ZValue = 1] appears twice", None),
    (dict(), "gives no tilt axis angle", None),
])
def test_a_malformed_mdoc_is_one_error_line_naming_file_and_line(raw_st, capsys, body, words,
                                                                 line):
    st, _ = raw_st
    mdoc = _mdoc(st.with_name("bad.mdoc"), **body)
    code = main(["wbp", str(st), "--mdoc", str(mdoc), "--thickness", "8", "-o",
                 str(st.with_name("t.mrc")), "--arch", "cpu"])
    err = capsys.readouterr().err
    errors = [e for e in err.splitlines() if e.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert "bad.mdoc" in errors[0] and words in errors[0], errors[0]
    if line is not None:
        assert f"line {line}" in errors[0]


def test_the_mdoc_with_an_aln_to_apply_is_not_applied_twice(raw_st):
    st, _ = raw_st
    mdoc = _mdoc(st.with_name("raw.st.mdoc"), rotation=AXIS)
    source = StackSource(st, aln=st.with_name("raw.aln"), apply_aln=True, mdoc=mdoc)
    plan = inputs._axis_plan(source)
    assert plan.axis_deg is None and "not applied" in plan.note
    with pytest.raises(InputError, match="ROT"):
        from taichi_etgs.io import load_tilt_series

        load_tilt_series(st, mdoc, apply_aln=True, aln_path=None, axis_deg=AXIS)
