"""OME-Zarr tomograms (taichi_etgs.io.omezarr): levels, shapes, voxel size and data as
ome_zarr's reader sees them, equal to the MRC output; refusals and failures."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.io.omezarr import OmeZarrWriter, level_shapes
from taichi_etgs.pipeline import slabs
from taichi_etgs.pipeline.resume import default_state_path, half_paths

from .test_slabs import SHAPE, stack_file  # noqa: F401  (the fixture)


def _read(path):
    """Levels (numpy), coordinate transformations and axes, through ome_zarr's reader."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(path)))())[0]
    meta = node.metadata
    return ([np.asarray(level) for level in node.data], meta["coordinateTransformations"],
            meta["axes"])


def _cli(args, capsys):
    code = main([str(a) for a in [*args, "--arch", "cpu"]])
    return code, capsys.readouterr().err


def _binned(volume: np.ndarray) -> np.ndarray:
    nz, ny, nx = (n // 2 for n in volume.shape)
    block = volume[:2 * nz, :2 * ny, :2 * nx].astype(np.float64)
    return block.reshape(nz, 2, ny, 2, nx, 2).mean(axis=(1, 3, 5))


@pytest.mark.parametrize("extra", [[], ["--slab-rows", "7"]], ids=["whole", "slabs"])
def test_zarr_output_round_trips_against_the_mrc(stack_file, tmp_path, capsys, extra):  # noqa: F811
    common = ["wbp", stack_file, "--thickness", SHAPE[0], *extra]
    assert _cli([*common, "-o", tmp_path / "t.mrc"], capsys)[0] == 0
    code, err = _cli([*common, "-o", tmp_path / "t.zarr"], capsys)
    assert code == 0, err
    levels, transforms, axes = _read(tmp_path / "t.zarr")
    assert [a["name"] for a in axes] == ["z", "y", "x"]
    assert {a["unit"] for a in axes} == {"angstrom"}
    assert [lv.shape for lv in levels] == [(16, 40, 48), (8, 20, 24), (4, 10, 12)]
    assert [t[0]["scale"] for t in transforms] == [[10.0] * 3, [20.0] * 3, [40.0] * 3]
    assert len(transforms[0]) == 1  # the full tomogram: no translation
    assert transforms[1][1]["translation"] == [5.0] * 3  # between level 0's voxels 0, 1
    mrc = mrcfile.read(tmp_path / "t.mrc")
    np.testing.assert_array_equal(levels[0], mrc)
    np.testing.assert_allclose(levels[1], _binned(mrc), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(levels[2], _binned(_binned(mrc)), rtol=1e-4, atol=1e-5)
    side = json.loads((tmp_path / "t.zarr.json").read_text())
    assert side["result"]["shape_zyx"] == list(SHAPE)
    assert side["result"]["voxel_size_A"] == 10.0


def test_a_crop_is_placed_in_the_full_tomograms_frame(stack_file, tmp_path, capsys):  # noqa: F811
    code, err = _cli(["sirt", stack_file, "--thickness", SHAPE[0], "--iterations", 2,
                      "--width", 40, "-o", tmp_path / "c.zarr"], capsys)
    assert code == 0, err
    _, transforms, _ = _read(tmp_path / "c.zarr")
    # 40 of 48 columns, centred: the crop starts 4 voxels (40 A) into the full width.
    assert transforms[0][1]["translation"] == [0.0, 0.0, 40.0]


def test_an_existing_zarr_is_refused_without_force(stack_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "t.zarr"
    common = ["wbp", stack_file, "--thickness", SHAPE[0], "-o", out]
    assert _cli(common, capsys)[0] == 0
    stamp = (out / "0" / ".zarray").stat().st_mtime_ns
    code, err = _cli(common, capsys)
    assert code == 2 and err == f"error: {out}: exists; use --force to overwrite\n"
    assert (out / "0" / ".zarray").stat().st_mtime_ns == stamp
    code, err = _cli([*common, "--force", "--slab-rows", "9"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr", "t.zarr.json"]
    # A folder that is not an OME-Zarr output stays refused as a folder.
    code, err = _cli(["wbp", stack_file, "--thickness", SHAPE[0], "-o", tmp_path], capsys)
    assert code == 2 and "is a folder" in err


def test_a_failure_leaves_no_zarr(stack_file, tmp_path, capsys, monkeypatch):  # noqa: F811
    original = slabs.reconstruct_rows
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise InputError("a failure in the second slab")
        return original(*args, **kwargs)

    monkeypatch.setattr(slabs, "reconstruct_rows", failing)
    folder = tmp_path / "out"
    folder.mkdir()
    code, err = _cli(["wbp", stack_file, "--thickness", SHAPE[0], "--slab-rows", 8, "-o",
                      folder / "t.zarr"], capsys)
    assert code == 2 and "second slab" in err
    assert list(folder.iterdir()) == []


def test_a_failed_replacement_keeps_the_previous_store(tmp_path):
    out = tmp_path / "t.zarr"
    with OmeZarrWriter(out, (4, 6, 8), 5.0) as writer:
        writer.write_rows(0, np.ones((4, 6, 8), np.float32))
    with pytest.raises(RuntimeError), OmeZarrWriter(out, (4, 6, 8), 5.0, force=True) as w:
        w.write_rows(0, np.zeros((4, 3, 8), np.float32))
        raise RuntimeError("interrupted")
    levels, _, _ = _read(out)
    assert (levels[0] == 1).all()
    assert [p.name for p in tmp_path.iterdir()] == ["t.zarr"]


def test_levels_halve_until_an_axis_would_vanish():
    assert level_shapes((15, 41, 47)) == [(15, 41, 47), (7, 20, 23), (3, 10, 11)]
    assert level_shapes((3, 64, 64)) == [(3, 64, 64), (1, 32, 32)]
    assert level_shapes((1, 64, 64)) == [(1, 64, 64)]


def test_reconstruct_names_its_state_and_halves_after_a_zarr_output(tmp_path):
    out = tmp_path / "tomo.zarr"
    assert default_state_path(out) == tmp_path / "tomo.state.h5"
    assert half_paths(out) == [tmp_path / "tomo_half1.zarr", tmp_path / "tomo_half2.zarr"]
    assert half_paths(tmp_path / "tomo.mrc")[0] == tmp_path / "tomo_half1.mrc"


def test_reconstruct_writes_zarr(stack_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "g.zarr"
    code, err = _cli(["reconstruct", stack_file, "--thickness", SHAPE[0], "-o", out,
                      "--iterations", 2, "--max-gaussians", 200, "--init", "wbp"], capsys)
    assert code == 0, err
    levels, transforms, _ = _read(out)
    assert levels[0].shape == SHAPE and transforms[0][0]["scale"] == [10.0] * 3
    assert (tmp_path / "g.state.h5").exists() and (tmp_path / "g.zarr.json").exists()
