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


@pytest.mark.parametrize("first", ["package", "new-path", "old-path"])
def test_api_names_are_the_functions_whatever_imports_first(first):
    """``taichi_etgs.reconstruct`` and its siblings are the API functions, also after a
    module of the same old name (now in a subpackage) was imported under that name."""
    setup = {"package": "import taichi_etgs; taichi_etgs.reconstruct",
             "new-path": "from taichi_etgs.gaussian.fit import ReconstructConfig",
             "old-path": "from taichi_etgs.reconstruct import ReconstructConfig"}[first]
    code = ("import sys, warnings\nwarnings.simplefilter('ignore')\n"
            f"{setup}\nimport taichi_etgs, taichi_etgs.api as api\n"
            "import taichi_etgs.simulate, taichi_etgs.wbp, taichi_etgs.reconstruct\n"
            "from taichi_etgs import reconstruct, wbp, sirt, simulate, evaluate\n"
            "from taichi_etgs.gaussian import fit\n"
            "print(all(getattr(taichi_etgs, n) is getattr(api, n) for n in\n"
            "          ('reconstruct', 'wbp', 'sirt', 'simulate', 'evaluate')),\n"
            "      (reconstruct, wbp, sirt, simulate, evaluate) == (api.reconstruct, api.wbp,\n"
            "          api.sirt, api.simulate, api.evaluate),\n"
            "      sys.modules['taichi_etgs.reconstruct'] is fit)")
    assert _python(code) == "True True True"


def test_old_module_paths_import_the_moved_modules_with_a_deprecation_warning():
    import warnings

    from taichi_etgs._moved import MOVED

    for old, new in MOVED.items():
        with pytest.warns(DeprecationWarning, match=f"is now taichi_etgs.{new}"):
            sys.modules.pop(f"taichi_etgs.{old}", None)
            module = __import__(f"taichi_etgs.{old}", fromlist=["_"])
        assert module is sys.modules[f"taichi_etgs.{new}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from taichi_etgs.metrics import evaluate
    from taichi_etgs.evaluation.metrics import evaluate as moved

    assert evaluate is moved
    assert taichi_etgs.reconstruct is taichi_etgs.api.reconstruct


def _blob_views():
    from taichi_etgs.classical.projector import forward_project

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


def test_slabs_as_dask_tasks_from_python(tmp_path, taichi_cpu):
    from taichi_etgs.io import write_stack

    _, views = _blob_views()
    stack = tmp_path / "ts.mrc"
    write_stack(stack, views, 6.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS)
    # One thread: the in-process slabs and the workers add in the same order (bit for bit).
    here = taichi_etgs.sirt(stack, thickness=8, iterations=3, slab_rows=4, threads=1,
                            output=tmp_path / "here.mrc")
    tasks = taichi_etgs.sirt(stack, thickness=8, iterations=3, slab_rows=4, threads=1,
                             workers=2, output=tmp_path / "tasks.mrc")
    with mrcfile.open(here.output) as a, mrcfile.open(tasks.output) as b:
        assert a.data.tobytes() == b.data.tobytes()
    assert read_sidecar(tasks.output)["parameters"]["workers"] == 2
    with pytest.raises(taichi_etgs.errors.InputError, match="--workers 0"):
        taichi_etgs.wbp(stack, thickness=8, slab_rows=4, workers=0)


def test_a_fit_of_an_isolated_specimen_starts_taichi_itself():
    # The slab's projections can be the first kernel a fit launches (ice ending inside
    # the field of view); a Python user who never called runtime.init must not meet
    # Taichi's "call init() first".
    out = _python(
        "import numpy as np\n"
        "from taichi_etgs.gaussian.background import SlabBackground\n"
        "p, _ = SlabBackground(0.8, -5.0, 5.0, -12.0, 12.0).project(np.array([0.0, 30.0]), 32)\n"
        "print(p.shape, bool(p.max() > 0))")
    assert out.splitlines()[-1] == "(2, 32) True"
