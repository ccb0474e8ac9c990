"""The Python API: taichi_etgs.reconstruct(...) and its siblings, lazily imported, through
the same pipeline as the commands."""

from __future__ import annotations

import subprocess
import sys

import mrcfile
import numpy as np
import pytest

import taichi_etgs
from taichi_etgs.provenance import read_sidecar

TILTS = np.arange(-60.0, 61.0, 10.0)


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_importing_the_package_imports_neither_taichi_nor_numpy():
    assert _python("import sys, taichi_etgs; print('taichi' in sys.modules, "
                   "'numpy' in sys.modules)") == "False False"
    # Touching the API names loads the modules, not Taichi.
    assert _python("import sys, taichi_etgs; taichi_etgs.reconstruct; taichi_etgs.wbp; "
                   "taichi_etgs.evaluate; print('taichi' in sys.modules)") == "False"


@pytest.mark.parametrize("first", ["package", "from-import", "import-as"])
def test_api_names_are_the_modules_made_callable(first):
    """Whatever imports the module first, ``taichi_etgs.reconstruct`` is the module (its
    names importable as ever) and calling it calls the API function."""
    setup = {"package": "import taichi_etgs; taichi_etgs.reconstruct",
             "from-import": "from taichi_etgs.reconstruct import ReconstructConfig",
             "import-as": "import taichi_etgs.reconstruct as m"}[first]
    code = (f"{setup}\nimport sys, taichi_etgs, taichi_etgs.api\n"
            "import taichi_etgs.reconstruct as m\n"
            "from taichi_etgs.reconstruct import GaussianReconstruction\n"
            "from taichi_etgs import wbp, sirt, simulate\n"
            "mod = sys.modules['taichi_etgs.reconstruct']\n"
            "print(m is mod, taichi_etgs.reconstruct is mod, callable(mod),\n"
            "      mod.GaussianReconstruction is GaussianReconstruction,\n"
            "      callable(wbp) and hasattr(wbp, 'weighted_back_projection'),\n"
            "      callable(sirt) and callable(simulate))")
    assert _python(code) == "True True True True True True"


def _blob_views():
    from taichi_etgs.projector import forward_project

    volume = np.zeros((8, 10, 24), np.float32)
    volume[3:6, 3:7, 10:15] = 1.0
    return volume, 20.0 - forward_project(volume, TILTS)


def test_wbp_of_arrays_and_of_a_file_go_through_the_pipeline(tmp_path, taichi_cpu):
    from taichi_etgs.io import write_stack

    volume, views = _blob_views()
    result = taichi_etgs.wbp(views, TILTS, thickness=8)
    assert result.volume.shape == volume.shape and result.output is None
    assert np.corrcoef(result.volume.ravel(), volume.ravel())[0, 1] > 0.7  # positive density
    stack = tmp_path / "ts.mrc"
    write_stack(stack, views, 6.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS)
    out = tmp_path / "w.mrc"
    written = taichi_etgs.wbp(stack, thickness=8, width=12, output=out)
    with mrcfile.open(out) as mrc:
        assert mrc.data.shape == (8, 10, 12) and mrc.voxel_size.x == pytest.approx(6.0)
        assert float(mrc.header.origin.x) == pytest.approx(-6 * 6.0)  # a centred crop
        np.testing.assert_allclose(-mrc.data, written.volume)  # dark input: dark output
    record = read_sidecar(out)
    assert record["command"] == "wbp" and record["command_line"][0] == "taichi_etgs.wbp"
    assert record["parameters"]["thickness"] == 8
    with pytest.raises(taichi_etgs.errors.InputError, match="exists; use --force"):
        taichi_etgs.wbp(stack, thickness=8, output=out)


def test_reconstruct_and_evaluate_from_python(taichi_cpu):
    volume, views = _blob_views()
    result = taichi_etgs.reconstruct(views, TILTS, thickness=8, iterations=6,
                                     max_gaussians=300, init="wbp")
    assert result.volume.shape == volume.shape and result.state is None
    assert result.run.iteration == 6 and result.validation["heldout_views"]
    scores = taichi_etgs.evaluate(result.volume, volume, voxel_size=5.0, max_tilt=60)
    assert scores.kind == "reference" and scores.metrics["correlation"] > 0.3
    with pytest.raises(taichi_etgs.errors.InputError, match="tilt angles"):
        taichi_etgs.sirt(views, thickness=8)
