"""The built-in demo: simulates, reconstructs three ways, writes files, prints a table."""

from __future__ import annotations

import functools

import mrcfile
import pytest

from taichi_etgs import demo
from taichi_etgs.cli import main

SMALL = {"shape_zyx": (16, 32, 32), "gaussian_iterations": 6}


def test_run_demo_writes_every_file_and_scores_every_method(tmp_path, taichi_cpu):
    lines = []
    result = demo.run_demo(tmp_path / "d", report=lines.append, **SMALL)
    for name in ("tilts.mrc", "tilts.tlt", "ground_truth.mrc", "simulation.json"):
        assert (tmp_path / "d" / name).exists()
    assert set(result.metrics) == {"wbp", "sirt", "gaussians"}
    for method, path in ((m, result.files[m]) for m in result.metrics):
        with mrcfile.open(path) as mrc:
            assert mrc.data.shape == SMALL["shape_zyx"], method
        assert set(result.metrics[method]) >= {"psnr", "ssim", "correlation",
                                                "fsc05_resolution_A", "wedge_fsc"}
    assert any("gaussians" in line for line in lines)


def test_demo_command_prints_the_comparison_and_refuses_to_overwrite(tmp_path, taichi_cpu,
                                                                       monkeypatch, capsys):
    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, **SMALL))
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--arch", "cpu"]) == 0
    text = capsys.readouterr().out
    for word in ("method", "wbp", "sirt", "gaussians", "PSNR", "wedge FSC"):
        assert word in text
    assert main(["demo", "-o", str(out), "--arch", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["demo", "-o", str(out), "--arch", "cpu", "--force"]) == 0


@pytest.mark.parametrize("bad", [(0, 8, 8)])
def test_demo_rejects_an_impossible_shape(tmp_path, taichi_cpu, bad):
    from taichi_etgs.errors import InputError

    with pytest.raises(InputError):
        demo.run_demo(tmp_path, shape_zyx=bad, report=lambda line: None)
