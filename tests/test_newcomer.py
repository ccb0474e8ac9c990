"""What a new user (with IMOD/AreTomo habits) stumbled over (issue 9): one test per item."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from taichi_etgs.cli import main

TILTS = np.arange(-60.0, 61.0, 10.0)


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _run_process(args):
    """The CLI in a fresh interpreter: no pytest logging handlers on the root logger."""
    done = subprocess.run([sys.executable, "-m", "taichi_etgs.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


# -- 1. usage errors and the bare command print once --


def test_usage_error_is_printed_once(tmp_path):
    code, out, err = _run_process(["wbp", tmp_path / "x.mrc", "-o", tmp_path / "y.mrc"])
    assert code == 2
    assert err.count("Missing option '--thickness'") == 1, err


def test_bare_command_prints_the_help_once():
    code, out, err = _run_process([])
    assert (out + err).count("Usage: taichi-etgs") == 1, out + err
    assert (out + err).count("Start here:") == 1


# -- 2. angles that look like radians are refused unless --force --


@pytest.fixture
def small_stack(tmp_path):
    """A 13-view 8 x 12 stack (5 A pixels) with a sibling .tlt; no Taichi needed to make it."""
    from taichi_etgs.io import write_stack

    rng = np.random.default_rng(0)
    views = (10.0 + rng.normal(size=(TILTS.size, 8, 12))).astype(np.float32)
    path = tmp_path / "ts.mrc"
    write_stack(path, views, 5.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS, fmt="%.2f")
    return path


def test_radian_angles_are_refused_unless_forced(small_stack, capsys):
    radians = small_stack.with_name("rad.tlt")
    np.savetxt(radians, np.deg2rad(TILTS))
    out_path = small_stack.with_name("tomo.mrc")
    code, out, err = _run(["wbp", small_stack, "--angles", radians, "--thickness", 4,
                           "-o", out_path, "--arch", "cpu"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if "radians" in line] == lines[-1:], err
    assert lines[-1].startswith("error:") and "rad.tlt" in lines[-1]
    assert "degrees" in lines[-1] and "--force" in lines[-1]
    assert not out_path.exists()
    code, _, err = _run(["wbp", small_stack, "--angles", radians, "--thickness", 4,
                         "-o", out_path, "--arch", "cpu", "--force"], capsys)
    assert code == 0 and "look like radians" in err


# -- 3. --angles and --aln together are refused --


def _aln_file(path, tilts):
    rows = "\n".join(f"{i:5d}    0.00    1.00000    0.00    0.00    1.00    1.00    1.00"
                     f"    0.00  {t:8.2f}" for i, t in enumerate(tilts))
    path.write_text(f"# AreTomo Alignment / Priism bprmMn\n# RawSize = 12 8 {len(tilts)}\n"
                    f"# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT\n{rows}\n")
    return path


def test_angles_and_aln_together_are_refused(small_stack, capsys):
    aln = _aln_file(small_stack.with_name("ts.aln"), TILTS + 0.5)
    code, out, err = _run(["info", small_stack, "--angles", small_stack.with_name("ts.tlt"),
                           "--aln", aln], capsys)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert "--angles" in err and "--aln" in err and "only one" in err
    code, out, _ = _run(["info", small_stack, "--aln", aln], capsys)
    assert code == 0 and "-59.50" in out  # the .aln's angles
    code, _, _ = _run(["info", small_stack, "--angles", aln, "--aln", aln], capsys)
    assert code == 0  # the same file twice says one thing


# -- 4. a raw stack whose .mdoc puts the tilt axis away from Y is refused --


def _mdoc(path, tilts, rotation=None, title_axis=None, pixel=None):
    head = [] if pixel is None else [f"PixelSpacing = {pixel}"]
    if title_axis is not None:
        head.append(f"[T = SerialEM: Krios   Tilt axis angle = {title_axis}, binning = 1  "
                    f"spot = 8  camera = 0]")
    sections = []
    for z, t in enumerate(tilts):
        sections += ["", f"[ZValue = {z}]", f"TiltAngle = {t:.2f}"]
        if rotation is not None:
            sections.append(f"RotationAngle = {rotation}")
    path.write_text("\n".join(head + sections) + "\n")
    return path


@pytest.fixture
def raw_st(small_stack):
    """ts.st (no .tlt) with a SerialEM ts.st.mdoc whose tilt axis is at -94.6 degrees."""
    st = small_stack.with_name("ts.st")
    small_stack.rename(st)
    small_stack.with_name("ts.tlt").unlink()
    _mdoc(st.with_name("ts.st.mdoc"), TILTS, rotation=-94.6)
    return st


def test_mdoc_tilt_axis_is_read(tmp_path):
    from taichi_etgs.io import read_mdoc

    assert read_mdoc(_mdoc(tmp_path / "a.mdoc", TILTS, rotation=-94.6))["tilt_axis_deg"] \
        == pytest.approx(-94.6)
    assert read_mdoc(_mdoc(tmp_path / "b.mdoc", TILTS, title_axis=85.3))["tilt_axis_deg"] \
        == pytest.approx(85.3)
    assert read_mdoc(_mdoc(tmp_path / "c.mdoc", TILTS))["tilt_axis_deg"] is None


def test_unaligned_stack_from_the_mdoc_is_refused(raw_st, capsys):
    out_path = raw_st.with_name("tomo.mrc")
    args = ["wbp", raw_st, "--thickness", 4, "-o", out_path, "--arch", "cpu"]
    code, _, err = _run(args, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    err = errors[0]
    for words in ("ts.st.mdoc", "-94.6", "unaligned", "--xf", "--aln", "--aligned"):
        assert words in err
    assert not out_path.exists()
    code, _, err = _run([*args, "--aligned"], capsys)
    assert code == 0, err
    # info reports it without refusing
    code, out, err = _run(["info", raw_st], capsys)
    assert code == 0 and "warning:" in err and "--aligned" in err


def test_tilt_axis_along_y_or_an_alignment_is_not_refused(raw_st, capsys):
    out_path = raw_st.with_name("tomo.mrc")
    _mdoc(raw_st.with_name("ts.st.mdoc"), TILTS, rotation=178.0)
    code, _, err = _run(["wbp", raw_st, "--thickness", 4, "-o", out_path, "--arch", "cpu"],
                        capsys)
    assert code == 0, err
    _mdoc(raw_st.with_name("ts.st.mdoc"), TILTS, rotation=-94.6)
    xf = raw_st.with_name("ts.xf")
    xf.write_text("".join("0 -1 1 0 0 0\n" for _ in TILTS))
    code, _, err = _run(["wbp", raw_st, "--xf", xf, "--thickness", 4, "-o", out_path,
                         "--arch", "cpu", "--force"], capsys)
    assert code == 0, err


# -- 5. --pixel-size, and info says where the pixel size came from --


def _no_pixel_size(path):
    import mrcfile

    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.cella = (0.0, 0.0, 0.0)


def _info_line(out, key):
    return next(line for line in out.splitlines() if line.startswith(key))


def test_pixel_size_option_and_its_source(small_stack, capsys):
    import mrcfile

    code, out, _ = _run(["info", small_stack], capsys)
    assert code == 0 and "5 A (from the header)" in _info_line(out, "pixel size")
    _no_pixel_size(small_stack)
    code, out, err = _run(["info", small_stack], capsys)
    assert code == 0 and "unknown" in _info_line(out, "pixel size") and "--pixel-size" in out
    code, out, _ = _run(["info", small_stack, "--pixel-size", 2.5, "--binning", 2], capsys)
    assert code == 0 and "5 A (from --pixel-size)" in _info_line(out, "pixel size")
    out_path = small_stack.with_name("tomo.mrc")
    code, _, err = _run(["wbp", small_stack, "--pixel-size", 2.5, "--thickness", 4,
                         "-o", out_path, "--arch", "cpu"], capsys)
    assert code == 0, err
    with mrcfile.open(out_path) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(2.5)
    code, _, err = _run(["info", small_stack, "--pixel-size", 0], capsys)
    assert code == 2 and "--pixel-size" in err
    # From the .mdoc when the header has none
    _mdoc(small_stack.with_name("ts.mdoc"), TILTS, pixel=3.25)
    code, out, _ = _run(["info", small_stack, "--angles", small_stack.with_name("ts.mdoc")],
                        capsys)
    assert code == 0 and "3.25 A (from " in out and "ts.mdoc)" in _info_line(out, "pixel size")


# -- 6. export's message about the format names no option that does not exist --


@pytest.fixture
def state(tmp_path):
    """A saved model of three Gaussians in an 8 x 8 x 8 tomogram of 10 A voxels."""
    from taichi_etgs.gaussian.params import GaussianParams
    from taichi_etgs.gaussian.state import save_state

    rng = np.random.default_rng(0)
    params = GaussianParams.from_activated(
        means_xyz=rng.uniform(-4, 4, (3, 3)), scales=np.ones((3, 3)),
        densities=np.ones(3), quats_wxyz=np.tile([1.0, 0, 0, 0], (3, 1)))
    path = tmp_path / "m.state.h5"
    save_state(path, params, None, 0, np.random.default_rng(0).bit_generator.state, {},
               {"shape_zyx": [8, 8, 8], "pixel_size_A": 10.0}, "0")
    return path


def test_export_to_an_unknown_extension_says_what_to_do(tmp_path, capsys, state):
    code, _, err = _run(["export", state, "-o", tmp_path / "x.txt"], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert "'.txt'" in err and ".ply" in err and ".csv" in err
    assert "give the format" not in err and "--format" not in err
    code, _, err = _run(["export", state, "-o", tmp_path / "x.csv"], capsys)
    assert code == 0, err


# -- 7. one range syntax, START:STOP:STEP; project writes a .tlt beside its stack --


def test_project_writes_its_angles_beside_the_stack(tmp_path, capsys, state, taichi_cpu):
    from taichi_etgs.io import read_tilt_angles

    out_path = tmp_path / "views.mrc"
    code, out, err = _run(["project", state, "--angles", "-30:30:15", "-o", out_path,
                           "--arch", "cpu"], capsys)
    assert code == 0, err
    assert "views.tlt" in out
    np.testing.assert_allclose(read_tilt_angles(tmp_path / "views.tlt"),
                               [-30, -15, 0, 15, 30])
    # The .tlt is an output like the stack: not overwritten without --force.
    out_path.unlink()
    code, _, err = _run(["project", state, "--angles", "-30:30:15", "-o", out_path,
                         "--arch", "cpu"], capsys)
    assert code == 2 and "views.tlt" in err and "--force" in err


def test_simulate_takes_the_same_range_syntax(tmp_path, capsys):
    from taichi_etgs.io import read_tilt_angles

    base = ["simulate", "--shape", "8,32,32", "--noise", "none", "--arch", "cpu"]
    code, _, err = _run([*base, "-o", tmp_path / "a", "--tilt-range", "-30:30:15"], capsys)
    assert code == 0, err
    assert "deprecated" not in err
    np.testing.assert_allclose(read_tilt_angles(tmp_path / "a" / "tilts.tlt"),
                               [-30, -15, 0, 15, 30])
    code, _, err = _run([*base, "-o", tmp_path / "b", "--tilt-range", "-30,30,15"], capsys)
    assert code == 0, err
    assert "deprecated" in err and "-30:30:15" in err  # the old syntax still works
    np.testing.assert_allclose(read_tilt_angles(tmp_path / "b" / "tilts.tlt"),
                               [-30, -15, 0, 15, 30])
    code, _, err = _run([*base, "-o", tmp_path / "c", "--tilt-range", "-30:30"], capsys)
    assert code == 2 and "START:STOP:STEP" in err


# -- 8. messages without Python names or contradictions; a repeat is not "not sorted" --


def test_apply_aln_without_an_aln_names_the_options(small_stack, capsys):
    code, _, err = _run(["info", small_stack, "--apply-aln"], capsys)
    assert code == 2 and err.startswith("error:"), err
    assert "--apply-aln" in err and "--aln" in err and "apply_aln" not in err


def test_unwritable_folder_message_does_not_contradict_itself(small_stack, capsys,
                                                              monkeypatch):
    import errno
    import tempfile

    def no_such_file(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(tempfile, "mkstemp", no_such_file)  # what /proc answers
    code, _, err = _run(["wbp", small_stack, "--thickness", 4, "-o",
                         small_stack.with_name("tomo.mrc"), "--arch", "cpu"], capsys)
    assert code == 2 and "cannot be written" in err
    assert "No such file or directory" not in err and "not writable" not in err, err
    assert "does not accept new files" in err


def test_info_calls_a_repeated_angle_a_repeat_not_unsorted(small_stack, capsys):
    tilts = TILTS.copy()
    tilts[7] = tilts[6]  # 0, 0
    np.savetxt(small_stack.with_name("ts.tlt"), tilts, fmt="%.2f")
    code, out, err = _run(["info", small_stack], capsys)
    assert code == 0
    order = _info_line(out, "tilt order")
    assert "ascending (with repeated angles)" in order
    assert "not sorted" not in out + err and "sorted order" not in out + err
    assert "more than once" in err  # the repeat itself is still reported


def test_info_does_not_warn_about_a_dose_symmetric_order(small_stack, capsys):
    order = np.argsort(np.abs(TILTS), kind="stable")  # 0, -10, 10, -20, 20, ...
    np.savetxt(small_stack.with_name("ts.tlt"), TILTS[order], fmt="%.2f")
    code, out, err = _run(["info", small_stack], capsys)
    assert code == 0
    assert "warning" not in err and "warning" not in out, out + err
    assert "dose-symmetric" in _info_line(out, "tilt order")


def test_a_pixel_size_given_over_the_header_is_a_note_not_a_warning(small_stack, capsys):
    code, _, err = _run(["wbp", small_stack, "--pixel-size", 2.5, "--thickness", 4, "-o",
                         small_stack.with_name("tomo.mrc"), "--arch", "cpu"], capsys)
    assert code == 0, err
    assert "using --pixel-size 2.5" in err and "warning" not in err, err


def test_an_init_tomogram_of_another_size_is_refused_before_taichi(small_stack, capsys,
                                                                  no_taichi):
    from taichi_etgs.io import write_volume

    init = small_stack.with_name("init.mrc")
    write_volume(init, np.zeros((6, 8, 12), np.float32), 5.0)
    code, _, err = _run(["reconstruct", small_stack, "--thickness", 4, "-o",
                         small_stack.with_name("g.mrc"), "--init", init, "--arch", "cpu"],
                        capsys)
    assert code == 2 and "--init" in err and "6x8x12" in err and "4x8x12" in err, err
    assert "initial volume" not in err and "compute:" not in err


# -- 9. the command line in the MRC labels is split at spaces --


def test_mrc_labels_split_the_command_line_at_spaces():
    from taichi_etgs.provenance import mrc_labels

    words = ["taichi-etgs", "reconstruct", "/data/project/TS_01/TS_01.st", "--angles",
             "/data/project/TS_01/TS_01.tlt", "--binning", "4", "--thickness", "300", "-o",
             "/data/project/TS_01/reconstructions/TS_01_gaussians_bin4.mrc", "--iterations",
             "600", "--max-gaussians", "60000"]
    labels = mrc_labels("0.1", "reconstruct", "gaussians", words)
    pieces = labels[2:]
    assert all(len(label) <= 80 for label in labels)
    assert " ".join(pieces) == " ".join(words)  # nothing lost, no word cut in two
    assert all(not piece.startswith(" ") and not piece.endswith(" ") for piece in pieces)
    for piece in pieces:
        assert set(piece.split()) <= set(words), piece


# -- 10. resume: the state knows its input, output and settings --


def _reconstruct_args(stack, out, *extra):
    return ["reconstruct", stack, "--thickness", 4, "-o", out, "--max-gaussians", 100,
            "--init", "wbp", "--save-every", 2, "--arch", "cpu", *extra]


def test_resume_alone_continues_the_interrupted_run(small_stack, capsys, monkeypatch,
                                                    tmp_path):
    from taichi_etgs.gaussian.fit import GaussianReconstruction
    from taichi_etgs.gaussian.state import load_state

    out = small_stack.with_name("g.mrc")
    state = small_stack.with_name("g.state.h5")
    real_step = GaussianReconstruction.step

    def interrupted(self):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(GaussianReconstruction, "step", interrupted)
    code, _, err = _run(_reconstruct_args(small_stack, out, "--binning", 2, "--iterations", 6,
                                          "--width", 5), capsys)
    assert code == 130 and f"--resume {state}" in err
    monkeypatch.setattr(GaussianReconstruction, "step", real_step)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the state's paths do not depend on where one stands
    code, _, err = _run(["reconstruct", "--resume", state, "--arch", "cpu"], capsys)
    assert code == 0, err
    assert "resuming" in err and load_state(state).iteration == 6
    import mrcfile

    with mrcfile.open(out) as mrc:  # binned 2 (4 x 6 images), width 5, as first asked
        assert mrc.data.shape == (4, 4, 5) and mrc.voxel_size.x == pytest.approx(10.0)
    # Without a state, the stack, --thickness and -o are needed, as click says.
    code, _, err = _run(["reconstruct", "--thickness", 4, "-o", out, "--arch", "cpu"], capsys)
    assert code == 2 and "Missing argument" in err and "STACK" in err


def test_resume_with_the_runs_binning_is_not_other_data(small_stack, capsys):
    out = small_stack.with_name("b.mrc")
    state = small_stack.with_name("b.state.h5")
    code, _, err = _run(_reconstruct_args(small_stack, out, "--binning", 2, "--iterations", 2),
                        capsys)
    assert code == 0, err
    # The stack given again, --binning left out: the state's binning is used.
    code, _, err = _run(_reconstruct_args(small_stack, small_stack.with_name("b2.mrc"),
                                          "--resume", state, "--iterations", 4), capsys)
    assert code == 0, err
    assert "other data" not in err
    # An explicit other binning is named as such.
    code, _, err = _run(_reconstruct_args(small_stack, small_stack.with_name("b3.mrc"),
                                          "--resume", state, "--binning", 1), capsys)
    assert code == 2 and "--binning 2" in err and "--binning 1" in err, err
    assert "other data" not in err


def test_fewer_iterations_than_done_says_so(small_stack, capsys):
    out = small_stack.with_name("i.mrc")
    code, _, err = _run(_reconstruct_args(small_stack, out, "--iterations", 4), capsys)
    assert code == 0, err
    code, _, err = _run(_reconstruct_args(small_stack, small_stack.with_name("i2.mrc"),
                                          "--resume", small_stack.with_name("i.state.h5"),
                                          "--iterations", 2), capsys)
    assert code == 0, err
    warning = next(line for line in err.splitlines() if "already at iteration 4" in line)
    assert warning.startswith("warning:") and "--iterations 2" in warning


# -- 11. the MRC origin: crops and other voxel sizes overlay the full tomogram --


def test_mrc_origin_overlays_crops_binned_and_voxelized_volumes(small_stack, capsys):
    import mrcfile

    def read(path):
        with mrcfile.open(path) as mrc:
            origin = mrc.header.origin
            return (mrc.data.copy(), float(mrc.voxel_size.x),
                    (float(origin.x), float(origin.y), float(origin.z)))

    def wbp(name, *extra):
        out = small_stack.with_name(name)
        code, _, err = _run(["wbp", small_stack, "--thickness", 4, "-o", out, "--arch", "cpu",
                             *extra], capsys)
        assert code == 0, err
        return read(out)

    full, voxel, origin = wbp("full.mrc")
    assert origin == (0.0, 0.0, 0.0) and voxel == 5.0
    crop, _, origin = wbp("crop.mrc", "--width", 6)  # columns 3..8 of 12
    assert origin == (-15.0, 0.0, 0.0)  # IMOD: index i lies at i * 5 A - origin
    start = round(-origin[0] / voxel)
    np.testing.assert_allclose(crop, full[:, :, start:start + 6], rtol=1e-4,
                               atol=1e-4 * np.abs(full).max())
    _, voxel, origin = wbp("bin2.mrc", "--binning", 2, "--thickness", 2)
    assert voxel == 10.0 and origin == (0.0, 0.0, 0.0)  # the same extent, the same corner
    # A reconstruction's model voxelised anywhere keeps its place.
    out = small_stack.with_name("g.mrc")
    code, _, err = _run(_reconstruct_args(small_stack, out, "--iterations", 2, "--width", 8),
                        capsys)
    assert code == 0, err
    assert read(out)[2] == (-10.0, 0.0, 0.0)
    # At 15 A the 4 x 8 x 8 grid becomes 1 x 3 x 3 voxels about the same centre (x 30,
    # y 20, z 10 A in the frame of the full 4 x 8 x 12 tomogram).
    for extra, expected in (([], (-10.0, 0.0, 0.0)), (["--voxel-size", 10], (-10.0, 0.0, 0.0)),
                            (["--voxel-size", 15], (-7.5, 2.5, -2.5))):
        fine = small_stack.with_name("v.mrc")
        code, _, err = _run(["voxelize", small_stack.with_name("g.state.h5"), "-o", fine,
                             "--force", "--arch", "cpu", *extra], capsys)
        assert code == 0, err
        assert read(fine)[2] == expected


# -- 12. progress when stderr is not a terminal --


def test_progress_without_a_terminal_is_a_line_every_ten_percent(small_stack, capsys,
                                                                 tmp_path):
    log_file = tmp_path / "run.log"
    code, _, err = _run(["--log", log_file, "sirt", small_stack, "--thickness", 4,
                         "--iterations", 20, "-o", small_stack.with_name("s.mrc"),
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("SIRT: ")]
    assert len(lines) == 10 and lines[4].startswith("SIRT: 50 % (10/20 it), residual ")
    assert "SIRT: 50 % (10/20 it)" in log_file.read_text()
    code, _, err = _run(_reconstruct_args(small_stack, small_stack.with_name("g.mrc"),
                                          "--iterations", 10), capsys)
    assert code == 0, err
    assert "Gaussians: 100 % (10/10 it), loss " in err


# -- 13. cheap checks before Taichi starts --


@pytest.fixture
def no_taichi(monkeypatch):
    """Fail the test if Taichi is started."""
    from taichi_etgs import runtime

    def init(*args, **kwargs):
        raise AssertionError("Taichi was started")

    monkeypatch.setattr(runtime, "init", init)


def test_outputs_are_checked_before_taichi_starts(small_stack, capsys, state, no_taichi):
    folder = small_stack.parent
    existing = folder / "exists.mrc"
    existing.write_bytes(b"keep")
    missing = folder / "no" / "such" / "folder.mrc"
    sim_dir = folder / "sim"
    sim_dir.mkdir()
    (sim_dir / "tilts.mrc").write_bytes(b"keep")
    demo_dir = folder / "demo"
    demo_dir.mkdir()
    (demo_dir / "tomogram_sirt.mrc").write_bytes(b"keep")
    stack_args = [small_stack, "--thickness", 4, "--arch", "cpu", "-o"]
    commands = [["wbp", *stack_args], ["sirt", *stack_args],
                ["reconstruct", "--init", "wbp", *stack_args],
                ["project", state, "--angles", "0:10:5", "--arch", "cpu", "-o"],
                ["voxelize", state, "--arch", "cpu", "-o"],
                ["gaussianize", existing, "--arch", "cpu", "-o"]]
    for command in commands:
        for output in (existing, missing):
            code, _, err = _run([*command, output], capsys)
            assert code == 2 and ("exists" in err or "does not exist" in err), (command, err)
            assert "compute:" not in err
    # A state of an earlier run, outputs of an earlier simulation or demo.
    small_stack.with_name("r.state.h5").write_bytes(b"keep")
    for command in (["reconstruct", *stack_args, small_stack.with_name("r.mrc")],
                    ["simulate", "-o", sim_dir, "--arch", "cpu"],
                    ["demo", "-o", demo_dir, "--arch", "cpu"]):
        code, _, err = _run(command, capsys)
        assert code == 2 and "exists" in err, (command, err)
    assert existing.read_bytes() == b"keep"


# -- 14. every command writes the input's polarity, relative to the mean --


@pytest.fixture
def phantom_stack(tmp_path, taichi_cpu):
    """Blobs in a 6 x 10 x 16 box imaged dark (an offset minus the projections), 5 A."""
    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.io import write_stack

    from .phantoms import gaussian_blobs

    truth = gaussian_blobs((6, 10, 16), 4, 1.2, (1.5, 3, 5), seed=2)
    views = 50.0 - forward_project(truth, TILTS)
    path = tmp_path / "blobs.mrc"
    write_stack(path, views.astype(np.float32), 5.0)
    np.savetxt(tmp_path / "blobs.tlt", TILTS, fmt="%.2f")
    return path, truth


def test_every_tomogram_has_the_inputs_polarity_and_level(phantom_stack, capsys):
    import mrcfile

    stack, truth = phantom_stack
    common = [stack, "--thickness", 6, "--arch", "cpu", "-o"]
    commands = {"wbp": ["wbp", *common], "sirt": ["sirt", "--iterations", 5, *common],
                "gaussians": ["reconstruct", "--iterations", 6, "--max-gaussians", 200,
                              "--init", "wbp", *common]}
    written = {}
    for name, args in commands.items():
        out = stack.with_name(f"{name[0]}.mrc")
        code, _, err = _run([*args, out], capsys)
        assert code == 0, err
        written[name] = mrcfile.read(out)
    code, _, err = _run(["voxelize", stack.with_name("g.state.h5"), "-o",
                         stack.with_name("v.mrc"), "--arch", "cpu"], capsys)
    assert code == 0, err
    written["voxelize"] = mrcfile.read(stack.with_name("v.mrc"))
    for name, volume in written.items():
        # Dark density, like the input images, for every command.
        assert np.corrcoef(volume.ravel(), truth.ravel())[0, 1] < -0.5, name
    # The same level: density relative to the mean (WBP and SIRT by construction, each
    # view's mean removed; the model's voxelisation is moved there).
    for name in ("gaussians", "voxelize"):
        volume = written[name]
        assert abs(float(volume.mean())) < 1e-3 * float(volume.std()), name
        assert volume.min() < 0 < volume.max()
    # voxelize writes what reconstruct wrote for the same model.
    assert np.corrcoef(written["voxelize"].ravel(),
                       written["gaussians"].ravel())[0, 1] > 0.99
    np.testing.assert_allclose(written["voxelize"], written["gaussians"],
                               atol=1e-5 * float(np.abs(written["gaussians"]).max()))
    # --output-contrast means the same for voxelize as for the reconstructions.
    code, _, err = _run(["voxelize", stack.with_name("g.state.h5"), "-o",
                         stack.with_name("vb.mrc"), "--output-contrast", "bright",
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    # Two voxelisations: float32 atomic sums in any thread order differ by round-off
    # (3e-8 seen), so equal to 1e-6 of the peak.
    np.testing.assert_allclose(mrcfile.read(stack.with_name("vb.mrc")), -written["voxelize"],
                               rtol=0, atol=1e-6 * float(np.abs(written["voxelize"]).max()))
    # A --shape crop keeps the tomogram's level (it is part of the same tomogram).
    code, _, err = _run(["voxelize", stack.with_name("g.state.h5"), "-o",
                         stack.with_name("vc.mrc"), "--shape", "6,10,8", "--arch", "cpu"],
                        capsys)
    assert code == 0, err
    np.testing.assert_allclose(mrcfile.read(stack.with_name("vc.mrc")),
                               written["voxelize"][:, :, 4:12],
                               atol=1e-5 * float(np.abs(written["voxelize"]).max()))
