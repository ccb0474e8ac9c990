"""``batch``: discovery, tables, Dask runs equal to single runs, skipping, faults, summary."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import signal
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from taichi_etgs.batch import BatchSettings, find_series, read_table, run_batch
from taichi_etgs.batch.tasks import check_done
from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.pipeline.session import PipelineWarning, Session

TILTS = np.arange(-60.0, 61.0, 5.0)
PACKAGE = Path(__file__).resolve().parent.parent / "taichi_etgs"


def _write_series(folder: Path, name: str, shift: int) -> Path:
    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.io import write_stack

    volume = np.zeros((16, 12, 40), np.float32)
    volume[4 + shift:8 + shift, 3:9, 10 + 3 * shift:16 + 3 * shift] = 1.0
    stack = folder / f"{name}.mrc"
    write_stack(stack, 50.0 - forward_project(volume, TILTS), 7.5)
    np.savetxt(folder / f"{name}.tlt", TILTS, fmt="%.2f")
    return stack


@pytest.fixture
def series_folder(tmp_path, taichi_cpu):
    """Three small dark-contrast tilt series with their .tlt files."""
    folder = tmp_path / "data"
    folder.mkdir()
    for k in range(3):
        _write_series(folder, f"ts{k}", k)
    return folder


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _touch(path: Path, text: str = "") -> Path:
    path.write_text(text)
    return path


# -- discovery --


def test_discovery_in_a_folder_follows_imod_and_aretomo_layouts(tmp_path):
    for name in ("imod.st", "imod.ali", "imod.xf", "imod.tlt",          # IMOD: the .ali wins
                 "raw.st", "raw.xf", "raw.rawtlt",                    # raw + transforms
                 "are.mrc", "are.aln",                                # AreTomo: .aln angles
                 "sem.mrc", "sem.mrc.mdoc",                           # SerialEM .mdoc
                 "tomogram.mrc"):                                     # no angles: not a series
        _touch(tmp_path / name)
    found = {s.name: s for s in find_series([tmp_path])}
    assert sorted(found) == ["are", "imod", "raw", "sem"]
    assert found["imod"].stack.name == "imod.ali" and found["imod"].xf is None
    assert found["imod"].angles.name == "imod.tlt"
    assert (found["raw"].stack.name, found["raw"].xf.name, found["raw"].angles.name) == \
        ("raw.st", "raw.xf", "raw.rawtlt")
    assert found["are"].aln.name == "are.aln" and found["are"].angles is None
    assert found["sem"].angles.name == "sem.mrc.mdoc"
    assert [s.name for s in find_series([str(tmp_path / "r*.st")])] == ["raw"]
    with pytest.raises(InputError, match="no tilt angles"):
        find_series([tmp_path / "tomogram.mrc"])


def test_two_series_with_one_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _touch(tmp_path / folder / "ts.mrc")
        _touch(tmp_path / folder / "ts.tlt")
    with pytest.raises(InputError, match="two tilt series are named 'ts'"):
        find_series([tmp_path / "a", tmp_path / "b"])


def test_tables_csv_and_relion_star(tmp_path):
    for name in ("a.st", "a.tlt", "a.xf", "b.mrc", "b.aln", "b_ctf.txt"):
        _touch(tmp_path / name)
    (tmp_path / "imod").mkdir()
    _touch(tmp_path / "imod" / "TS_2.xf")
    _touch(tmp_path / "imod" / "TS_2.tlt")
    table = _touch(tmp_path / "series.csv",
                   "# tilt series of the session\nStack,thickness,defocus\n"
                   "a.st,300,\nb.mrc,,b_ctf.txt\n")
    a, b = read_table(table)
    assert (a.name, a.thickness, a.xf.name, a.angles.name) == ("a", 300, "a.xf", "a.tlt")
    assert (b.thickness, b.aln.name, b.defocus.name) == (None, "b.aln", "b_ctf.txt")
    assert b.origin == f"{table}, line 4"
    star = _touch(tmp_path / "tomograms.star",
                  "data_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesName #2\n"
                  "_rlnTomoSizeZ #3\n_rlnTomoImportImodDir #4\n"
                  "TS_2 a.st 1200 imod\n")
    (series,) = read_table(star)
    assert series.name == "TS_2" and series.xf == tmp_path / "imod" / "TS_2.xf"
    assert series.thickness_at(4, None) == 300  # RELION's unbinned Z over --binning
    # RELION 4's import table as its documentation lays it out: the stack with its ":mrc"
    # type tag, ctfplotter's file, and RELION's own columns, which are not ours to check.
    _touch(tmp_path / "b.defocus")
    relion4 = _touch(tmp_path / "import.star",
                     "data_\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesName #2\n"
                     "_rlnTomoImportCtfPlotterFile #3\n_rlnTomoImportImodDir #4\n"
                     "_rlnTomoFrameCount #5\n_rlnTomoImportFractionalDose #6\n"
                     "_rlnVoltage #7\n_rlnTomoHand #8\n"
                     "TS_2 a.st:mrc b.defocus imod 41 3.0 300.0 -1\n")
    (series,) = read_table(relion4)
    assert series.stack == tmp_path / "a.st" and series.defocus == tmp_path / "b.defocus"
    assert series.angles == tmp_path / "imod" / "TS_2.tlt"
    # RELION 5's tomograms.star names per-tilt STAR files, no stacks: said so.
    relion5 = _touch(tmp_path / "tomograms5.star",
                     "data_global\n\nloop_\n_rlnTomoName #1\n_rlnTomoTiltSeriesStarFile #2\n"
                     "_rlnVoltage #3\nTS_2 tilt_series/TS_2.star 300.0\n")
    with pytest.raises(InputError, match="RELION 5 tomograms.star.*per-tilt STAR files"):
        read_table(relion5)


@pytest.mark.parametrize("text, line, message", [
    ("stack,thickness\nts.mrc,-3\n", 2, "thickness '-3'"),
    ("stack,thicknes\nts.mrc,3\n", 1, "unknown column 'thicknes'"),
    ("angles\nts.tlt\n", 1, "no stack column"),
    ("stack,thickness\nts.mrc,3,4\n", 2, "3 cells for 2 columns"),
])
def test_malformed_tables_give_one_error_line_with_file_and_line(tmp_path, capsys, text,
                                                                 line, message):
    table = _touch(tmp_path / "series.csv", text)
    code, out, err = _run(["batch", table, "--method", "wbp", "-o", tmp_path / "out"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith(f"error: {table}, line {line}: ") and message in err
    assert not (tmp_path / "out").exists()


def test_malformed_star_row(tmp_path, capsys):
    star = _touch(tmp_path / "t.star", "data_\nloop_\n_rlnTomoName\n_rlnTomoTiltSeriesName\n"
                                       "TS_1 a.mrc extra\n")
    code, _, err = _run(["batch", star, "--method", "wbp", "-o", tmp_path / "o"], capsys)
    assert code == 2 and f"error: {star}, line 5: 3 cells for 2 columns" in err


def test_options_of_another_method_are_refused(tmp_path, capsys):
    with pytest.raises(InputError, match="--radial is an option of wbp, not of --method sirt"):
        BatchSettings("sirt", options={"radial": (0.3, 0.03)})
    code, _, err = _run(["batch", tmp_path, "--method", "sirt", "--fake-sirt", "2", "-o",
                         tmp_path / "o"], capsys)
    assert code == 2 and "--fake-sirt is an option of wbp" in err


# -- runs --


def test_batch_wbp_equals_single_runs_then_a_rerun_skips_everything(series_folder, tmp_path,
                                                                    capsys):
    import taichi_etgs

    outdir = tmp_path / "out"
    code, out, err = _run(["batch", series_folder, "--method", "wbp", "--thickness", 16,
                           "-o", outdir, "--workers", 2, "--threads", 1], capsys)
    assert code == 0, err
    assert "2 CPU workers x 1 thread" in err and "batch: 3 done, 0 running" in err
    for k in range(3):
        single = taichi_etgs.wbp(series_folder / f"ts{k}.mrc", thickness=16,
                                 output=tmp_path / f"single{k}.mrc", arch="cpu", threads=1)
        with mrcfile.open(outdir / f"ts{k}.mrc") as a, mrcfile.open(single.output) as b:
            assert a.data.tobytes() == b.data.tobytes()  # bit for bit
            assert a.voxel_size == b.voxel_size and a.header.origin == b.header.origin
        sidecar = json.loads((outdir / f"ts{k}.mrc.json").read_text())
        assert sidecar["output"]["path"] == str((outdir / f"ts{k}.mrc").resolve())
        assert sidecar["command"] == "wbp" and sidecar["command_line"][1] == "batch"
        assert {r["role"] for r in sidecar["inputs"]} == {"stack", "angles"}
    assert sorted(p.name for p in outdir.iterdir()) == [
        "batch_summary.csv", "batch_summary.json", *sorted(
            f"ts{k}.mrc{s}" for k in range(3) for s in ("", ".json"))]

    rows = list(csv.DictReader((outdir / "batch_summary.csv").read_text().splitlines()))
    assert [(r["series"], r["status"], r["attempts"]) for r in rows] == \
        [(f"ts{k}", "done", "1") for k in range(3)]
    assert rows[0]["output"] == str(outdir.absolute() / "ts0.mrc")
    summary = json.loads((outdir / "batch_summary.json").read_text())
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 0, "interrupted": 0}
    assert summary["method"] == "wbp" and summary["settings"]["thickness"] == 16

    before = {p: p.stat().st_mtime_ns for p in outdir.glob("ts*")}
    code, out, err = _run(["batch", series_folder, "--method", "wbp", "--thickness", 16,
                           "-o", outdir], capsys)
    assert code == 0 and "3 of 3 series up to date" in err and "workers" not in err
    assert out.count("skipped") == 3
    assert {p: p.stat().st_mtime_ns for p in outdir.glob("ts*")} == before

    # Other settings or changed inputs: not done, and not replaced without --force.
    settings = BatchSettings("wbp", thickness=16)
    (ts0,) = find_series([series_folder / "ts0.mrc"])
    assert check_done(ts0, settings, outdir) == ("done", "")
    state, why = check_done(ts0, BatchSettings("wbp", thickness=14), outdir)
    assert state == "stale" and "thickness 16, now 14" in why
    np.savetxt(series_folder / "ts0.tlt", TILTS + 0.5, fmt="%.2f")
    state, why = check_done(ts0, settings, outdir)
    assert state == "stale" and "its angles" in why and "changed" in why


def test_batch_refines_the_alignment_and_writes_it_beside_each_tomogram(series_folder,
                                                                         tmp_path, capsys):
    from taichi_etgs.batch.tasks import _first_difference, fingerprint

    outdir = tmp_path / "out"
    code, out, err = _run(["batch", series_folder / "ts1.mrc", "--method", "wbp",
                           "--thickness", 16, "-o", outdir, "--refine-alignment",
                           "--workers", 1, "--threads", 1], capsys)
    assert code == 0, err
    assert {p.name for p in outdir.glob("ts1.*")} == {"ts1.mrc", "ts1.mrc.json", "ts1.xf",
                                                       "ts1.tlt"}
    sidecar = json.loads((outdir / "ts1.mrc.json").read_text())
    assert sidecar["result"]["alignment"]["xf"] == str((outdir / "ts1.xf").resolve())
    # Outputs made before the option existed stay up to date: it is recorded only when set.
    (ts1,) = find_series([series_folder / "ts1.mrc"])
    assert "refine_alignment" not in fingerprint(ts1, BatchSettings("wbp"))["options"]
    assert fingerprint(ts1, BatchSettings("wbp", options={"refine_alignment": True})
                       )["options"]["refine_alignment"] is True
    # reconstruct refines by default (auto), which outputs made before did not: recorded,
    # so that they are not taken for its own, and reported as made with refinement off;
    # --no-refine-alignment still matches them.
    auto = fingerprint(ts1, BatchSettings("reconstruct"))
    assert auto["options"]["refine_alignment"] == "auto"
    off = fingerprint(ts1, BatchSettings("reconstruct", options={"refine_alignment": False}))
    assert "refine_alignment" not in off["options"]
    assert _first_difference(off, auto) == "refine_alignment False, now 'auto'"


def test_a_bad_series_fails_alone(series_folder, tmp_path, capsys):
    _touch(series_folder / "broken.mrc", "not an MRC file")
    np.savetxt(series_folder / "broken.tlt", TILTS, fmt="%.2f")
    outdir = tmp_path / "out"
    # The batch's warnings collected, not as Python warnings: Python's warning filters are
    # the process's, and the worker thread in this process catches warnings while it reads
    # a stack; a warning the batch gives then went into its catch and was lost.
    warned: list[str] = []
    result = run_batch(find_series([series_folder]),
                       BatchSettings("sirt", thickness=16, options={"iterations": 3}),
                       outdir, processes=False, session=Session(warning=warned.append))
    assert any(re.match("broken: failed: .*is not an MRC file", w) for w in warned), warned
    status = {o.name: (o.status, o.message) for o in result.outcomes}
    assert status["broken"][0] == "failed" and "is not an MRC file" in status["broken"][1]
    assert "\n" not in status["broken"][1]
    assert all(status[f"ts{k}"] == ("done", "") for k in range(3))
    assert not result.ok and result.counts["failed"] == 1
    assert not (outdir / "broken.mrc").exists() and not (outdir / ".taichi-etgs-batch").exists()

    code, out, err = _run(["batch", series_folder, "--method", "sirt", "--iterations", 3,
                           "--thickness", 16, "-o", outdir, "--workers", 1], capsys)
    assert code == 1
    assert "error: 1 of 4 series failed" in err and "broken: failed" in err


def _spawned_workers() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def test_a_killed_worker_s_task_is_retried(series_folder, tmp_path):
    killed = []

    def kill_the_worker_once(progress) -> None:
        if progress.running and not killed:
            (worker,) = _spawned_workers()
            killed.append(worker.pid)
            os.kill(worker.pid, signal.SIGKILL)

    outdir = tmp_path / "out"
    series = find_series([series_folder / "ts0.mrc"])
    result = run_batch(series, BatchSettings("wbp", thickness=16), outdir, workers=1,
                       retries=2, on_progress=kill_the_worker_once)
    assert killed
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.attempts) == ("done", 2)
    assert sorted(p.name for p in outdir.iterdir()) == [
        "batch_summary.csv", "batch_summary.json", "ts0.mrc", "ts0.mrc.json"]
    row = next(csv.DictReader((outdir / "batch_summary.csv").read_text().splitlines()))
    assert (row["status"], row["attempts"]) == ("done", "2")


def test_a_task_whose_worker_always_dies_fails_after_its_retries(series_folder, tmp_path):
    def kill_every_worker(progress) -> None:
        if progress.running:
            for worker in _spawned_workers():
                os.kill(worker.pid, signal.SIGKILL)

    outdir = tmp_path / "out"
    with pytest.warns(PipelineWarning, match="ts1: failed: its worker died"):
        result = run_batch(find_series([series_folder / "ts1.mrc"]),
                           BatchSettings("wbp", thickness=16), outdir, workers=1, retries=0,
                           on_progress=kill_every_worker)
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.attempts) == ("failed", 1)
    assert "its worker died on each of 1 attempt " in outcome.message
    assert sorted(p.name for p in outdir.iterdir()) == ["batch_summary.csv",
                                                         "batch_summary.json"]


def test_batch_sits_above_the_pipeline():
    """batch/ uses the pipeline, never the commands or the API; nothing below uses it."""
    for path in sorted((PACKAGE / "batch").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.lstrip(".").startswith(("cli", "api", "demo")), path
    for folder in ("pipeline", "classical", "gaussian", "simulation", "evaluation", "io",
                   "kernels"):
        for path in (PACKAGE / folder).rglob("*.py"):
            modules = [n.module or "" for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.ImportFrom)]
            assert not any(m == "batch" or m.startswith("batch.") or ".batch" in m
                           for m in modules), path
