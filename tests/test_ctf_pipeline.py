"""--defocus NUMBER or FILE on wbp, sirt and reconstruct (taichi_etgs/pipeline/ctf.py and
the commands): phase flipping, per-view defocus matched to the kept views, the CTF in the
Gaussian model's state, and one-line errors for bad files."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from taichi_etgs.cli import main
from taichi_etgs.io import write_stack
from taichi_etgs.io.defocus import write_imod_defocus

from .phantoms import gaussian_blobs

TILTS = np.arange(-60.0, 61.0, 4.0)
PIX = 8.0
DEFOCUS = np.linspace(4.0, 6.0, TILTS.size)


@pytest.fixture
def ctf_stack(tmp_path, taichi_cpu):
    """Dark-contrast views of small blobs through a per-view CTF (4 to 6 um), with a
    sibling .tlt and the IMOD .defocus of the views."""
    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.gaussian.transfer import Microscope, ViewFilter

    volume = gaussian_blobs((16, 24, 64), 30, 1.2, (5.0, 9.0, 24.0))
    views = forward_project(volume, TILTS)
    views = ViewFilter(Microscope(tuple(DEFOCUS), PIX), views.shape[1:]).apply(views)
    stack = tmp_path / "ts.mrc"
    write_stack(stack, 100.0 - views, PIX)
    np.savetxt(tmp_path / "ts.tlt", TILTS, fmt="%.2f")
    write_imod_defocus(tmp_path / "ts.defocus", TILTS, DEFOCUS)
    return stack, volume


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _tomogram(path):
    with mrcfile.open(path) as mrc:
        return -mrc.data.astype(np.float64)  # dark -> bright


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.parametrize("command", [["wbp"], ["sirt", "--iterations", "10"]])
def test_defocus_file_phase_flips_and_improves_the_tomogram(ctf_stack, tmp_path, capsys,
                                                            command):
    stack, volume = ctf_stack
    args = [*command, stack, "--thickness", 16, "--arch", "cpu"]
    code, _, err = _run([*args, "-o", tmp_path / "plain.mrc"], capsys)
    assert code == 0, err
    code, _, err = _run([*args, "-o", tmp_path / "flip.mrc", "--defocus",
                         tmp_path / "ts.defocus"], capsys)
    assert code == 0, err
    assert "defocus from" in err and "4.00 to 6.00 um over 31 views" in err
    plain, flipped = (_corr(_tomogram(tmp_path / f), volume) for f in ("plain.mrc", "flip.mrc"))
    # Measured: WBP 0.669 -> 0.737, SIRT (10 it.) 0.698 -> 0.752.
    assert flipped > plain + 0.03, (plain, flipped)
    sidecar = json.loads((tmp_path / "flip.mrc.json").read_text())
    ctf = sidecar["result"]["ctf"]
    assert ctf["phase_flipped"] and ctf["defocus_um"] == pytest.approx(DEFOCUS, abs=1e-5)
    assert any(i["role"] == "defocus" for i in sidecar["inputs"])
    # One number for every view (the mean) does better than none, less than the file
    # (measured WBP 0.727, SIRT 0.744).
    code, _, err = _run([*args, "-o", tmp_path / "one.mrc", "--defocus", "5"], capsys)
    assert code == 0, err
    assert _corr(_tomogram(tmp_path / "one.mrc"), volume) > plain


def test_an_imod_file_that_stops_short_is_said(ctf_stack, tmp_path, capsys):
    stack, _ = ctf_stack
    short = tmp_path / "short.defocus"
    write_imod_defocus(short, TILTS[:29], DEFOCUS[:29])
    code, _, err = _run(["wbp", stack, "--thickness", 16, "--arch", "cpu", "-o",
                         tmp_path / "s.mrc", "--defocus", short], capsys)
    assert code == 0, err
    assert "short.defocus: gives views 1 to 29 only; views 30 to 31 take view 29's" in err
    ctf = json.loads((tmp_path / "s.mrc.json").read_text())["result"]["ctf"]
    assert ctf["defocus_um"][-2:] == pytest.approx([DEFOCUS[28]] * 2, abs=1e-5)


def test_defocus_follows_excluded_views(ctf_stack, tmp_path, capsys):
    stack, _ = ctf_stack
    code, _, err = _run(["wbp", stack, "--thickness", 16, "--arch", "cpu", "-o",
                         tmp_path / "x.mrc", "--defocus", tmp_path / "ts.defocus",
                         "--exclude-views", "0-1,30"], capsys)
    assert code == 0, err
    ctf = json.loads((tmp_path / "x.mrc.json").read_text())["result"]["ctf"]
    assert ctf["defocus_um"] == pytest.approx(DEFOCUS[2:30], abs=1e-5)


@pytest.mark.parametrize("content, message", [
    ("0 0 0. 0. 0 3\n1 1 -60 -60 4000\n2 2 -56 -56\n",
     r"bad.defocus, line 3: has 4 values; expected 5"),
    ("1 1 -60 -60 4000\n40 40 -56 -56 4100\n", r"bad.defocus: gives 40 views \(up to view "
                                                r"40\) but the stack has 31 sections"),
])
def test_bad_defocus_files_give_one_error_line(ctf_stack, tmp_path, capsys, content, message):
    import re

    stack, _ = ctf_stack
    bad = tmp_path / "bad.defocus"
    bad.write_text(content)
    for command in (["wbp"], ["reconstruct", "--iterations", 1, "--init", "wbp"]):
        code, out, err = _run([*command, stack, "--thickness", 16, "-o",
                               tmp_path / "never.mrc", "--defocus", bad, "--arch", "cpu"],
                              capsys)
        assert code == 2, err
        lines = [s for s in err.splitlines() if s.startswith("error:")]
        assert len(lines) == 1 and re.search(message, lines[0]), err
        assert not (tmp_path / "never.mrc").exists()


def test_defocus_option_checks(ctf_stack, tmp_path, capsys):
    stack, _ = ctf_stack
    code, _, err = _run(["wbp", stack, "--thickness", 16, "-o", tmp_path / "n.mrc",
                         "--defocus", "-2"], capsys)
    assert code == 2 and "must be a number >= 0" in err, err
    code, _, err = _run(["wbp", stack, "--thickness", 16, "-o", tmp_path / "n.mrc",
                         "--defocus", tmp_path / "missing.defocus", "--arch", "cpu"], capsys)
    assert code == 2 and "missing.defocus: file not found" in err, err
    # No pixel size in the header: the CTF cannot be computed.
    with mrcfile.open(stack) as mrc:
        data = mrc.data.copy()
    nopix = tmp_path / "nopix.mrc"
    write_stack(nopix, data, PIX)
    with mrcfile.open(nopix, "r+") as mrc:
        mrc.voxel_size = 0.0
    np.savetxt(tmp_path / "nopix.tlt", TILTS, fmt="%.2f")
    code, _, err = _run(["wbp", nopix, "--thickness", 16, "-o", tmp_path / "n.mrc",
                         "--defocus", "3", "--arch", "cpu"], capsys)
    assert code == 2 and "--pixel-size" in err, err


def test_reconstruct_with_a_defocus_file_keeps_it_in_the_state(ctf_stack, tmp_path, capsys):
    from taichi_etgs.gaussian.state import load_state

    stack, _ = ctf_stack
    ctffind = tmp_path / "ts_ctffind.txt"
    rows = [f"{i + 1} {d * 1e4 + 300:.2f} {d * 1e4 - 300:.2f} 30.0 0.0 0.05 8.0"
            for i, d in enumerate(DEFOCUS)]
    ctffind.write_text("# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; "
                       "#3 - defocus 2; #4 - azimuth of astigmatism; ...\n"
                       + "\n".join(rows) + "\n")
    out, state = tmp_path / "g.mrc", tmp_path / "g.state.h5"
    common = ["--thickness", 16, "--max-gaussians", 200, "--init", "wbp", "--arch", "cpu"]
    code, _, err = _run(["reconstruct", stack, *common, "-o", out, "--iterations", 2,
                         "--defocus", ctffind, "--exclude-views", 0], capsys)
    assert code == 0, err
    config = load_state(state).config
    assert config["defocus_per_view_um"] == pytest.approx(DEFOCUS[1:] + 0.03, abs=1e-6)
    assert config["defocus2_per_view_um"] == pytest.approx(DEFOCUS[1:] - 0.03, abs=1e-6)
    assert config["astigmatism_per_view_deg"] == pytest.approx([30.0] * 30)
    assert config["pixel_size_A"] == pytest.approx(PIX)
    code, _, err = _run(["reconstruct", "--resume", state, "--iterations", 4, "--force",
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    assert load_state(state).config["defocus_per_view_um"] == config["defocus_per_view_um"]
    # A --defocus given with --resume is said to be unused.
    code, _, err = _run(["reconstruct", "--resume", state, "--iterations", 5, "--force",
                         "--defocus", 3, "--arch", "cpu"], capsys)
    assert code == 0 and "--defocus 3.0 is not used" in err, err


def test_per_view_defocus_reaches_each_views_prediction(taichi_cpu):
    # The per-view filter is indexed by the views rendered: view t of a run with per-view
    # defocus predicts what a run with view t's defocus for every view predicts.
    import dataclasses

    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.gaussian.fit import (
        GaussianReconstruction,
        ReconstructConfig,
        reconstruct_halves,
    )

    tilts = np.arange(-48.0, 49.0, 12.0)
    defocus = np.linspace(2.0, 6.0, tilts.size)
    volume = gaussian_blobs((8, 12, 24), 6, 1.2, (2.0, 4.0, 8.0))
    views = forward_project(volume, tilts)
    base = ReconstructConfig(iterations=1, max_gaussians=60, init="wbp", background="offset",
                             heldout_every=0, pixel_size_A=PIX)
    per_view = GaussianReconstruction(views, tilts, 8, dataclasses.replace(
        base, defocus_per_view_um=defocus.tolist()))
    for t in (0, 3, 8):
        single = GaussianReconstruction(views, tilts, 8, dataclasses.replace(
            base, defocus_um=float(defocus[t])), params=per_view.params)
        index = np.array([t])
        np.testing.assert_allclose(per_view.predict(index),
                                   single.predict(index, per_view.params), rtol=0,
                                   atol=1e-6 * np.abs(per_view.predict(index)).max())
    # Odd and even halves each get their own views' defocus.
    first, second = reconstruct_halves(views, tilts, 8, dataclasses.replace(
        base, defocus_per_view_um=defocus.tolist()))
    assert first.config.defocus_per_view_um == pytest.approx(defocus[0::2])
    assert second.config.defocus_per_view_um == pytest.approx(defocus[1::2])
