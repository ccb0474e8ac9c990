"""The Gaussian reconstruction: it fits, resumes, rolls back, and the CLI saves on Ctrl-C."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from taichi_etgs.classical.projector import forward_project
from taichi_etgs.cli import main
from taichi_etgs.errors import InputError
from taichi_etgs.gaussian.fit import GaussianReconstruction, ReconstructConfig
from taichi_etgs.gaussian.state import input_checksum, load_state
from taichi_etgs.io import write_stack

from .phantoms import gaussian_blobs

TILTS = np.arange(-60.0, 61.0, 10.0)
SHAPE = (12, 10, 24)


def _blobs(seed: int = 3) -> np.ndarray:
    return gaussian_blobs(SHAPE, 5, 1.5, (3, 3, 8), seed)


@pytest.fixture
def problem(taichi_cpu):
    volume = _blobs()
    noise = np.random.default_rng(0).normal(0, 0.3, (TILTS.size, *SHAPE[1:]))
    views = forward_project(volume, TILTS) + noise.astype(np.float32)
    return volume, views


CONFIG = ReconstructConfig(iterations=20, views_per_step=4, max_gaussians=600,
                           densify_every=5, densify_from=5, densify_until=0.8, init="wbp")


def test_fit_lowers_the_loss_and_tracks_the_volume(problem):
    volume, views = problem
    run = GaussianReconstruction(views, TILTS, SHAPE[0], dataclasses.replace(CONFIG,
                                                                             iterations=60))
    run.run()
    assert len(run.losses) == 60
    # Noisy 4-view batches: compare the means of the first and last ten steps.
    assert np.mean(run.losses[-10:]) < 0.9 * np.mean(run.losses[:10])
    assert run.params.n <= CONFIG.max_gaussians
    tomogram = run.tomogram()
    assert tomogram.shape == SHAPE
    assert np.corrcoef(tomogram.ravel(), volume.ravel())[0, 1] > 0.6


def test_resume_continues_like_an_uninterrupted_run(problem, tmp_path):
    _, views = problem
    whole = GaussianReconstruction(views, TILTS, SHAPE[0], CONFIG)
    whole.run()

    first = GaussianReconstruction(views, TILTS, SHAPE[0], CONFIG)
    first.validate()  # as run() does before its first step
    while first.iteration < 12:  # mid-way between densifications: statistics must travel
        first.step()
        if first.iteration % CONFIG.validate_every == 0:
            first.validate()
    path = tmp_path / "state.h5"
    first.save_state(path, input_checksum(views))
    state = load_state(path)
    second = GaussianReconstruction(views, TILTS, SHAPE[0], CONFIG, params=state.params)
    second.restore(state)
    second.run()

    assert second.params.n == whole.params.n
    assert second.losses == pytest.approx(whole.losses, rel=1e-4)
    # The projector's scatter uses atomic float adds, whose order varies between threads:
    # results agree to float32 rounding, except where Adam normalises a near-zero gradient
    # (a rounding-level gradient still moves a parameter by up to one step, lr ~ 0.01);
    # 1e-3 absolute covers that and would still catch a resume that lost any state.
    for field in dataclasses.fields(whole.params):
        np.testing.assert_allclose(getattr(second.params, field.name),
                                   getattr(whole.params, field.name), rtol=1e-3, atol=1e-3)
    # The models kept before the interruption travel too: the same ones make the tomogram
    # (to the same float32 rounding, relative to its range).
    assert second.averaged_iterations == whole.averaged_iterations
    assert len(whole.averaged_iterations) > 1
    volume = whole.tomogram()
    np.testing.assert_allclose(second.tomogram(), volume, rtol=0,
                               atol=1e-3 * float(np.ptp(volume)))


def test_non_finite_loss_rolls_back_with_a_lower_learning_rate(problem, monkeypatch):
    _, views = problem
    run = GaussianReconstruction(views, TILTS, SHAPE[0], CONFIG)
    for _ in range(5):
        run.step()
    good = run.params.copy()
    original = run.loss_and_grad
    calls = {"n": 0}

    def poisoned(selected, params=None):
        calls["n"] += 1
        loss, back, slab = original(selected, params)
        return (float("nan") if calls["n"] == 2 else loss), back, slab

    monkeypatch.setattr(run, "loss_and_grad", poisoned)
    run.step()
    info = run.step()
    assert "rolled back to iteration 5" in info.message
    assert run.iteration == 5
    assert run.config.lr_scale == 0.5
    np.testing.assert_array_equal(run.params.means_xyz, good.means_xyz)
    run.run()
    assert run.iteration == CONFIG.iterations and np.isfinite(run.losses).all()


def test_bad_configuration_is_refused():
    with pytest.raises(InputError, match="init"):
        ReconstructConfig(init="magic")
    with pytest.raises(InputError, match="iterations"):
        ReconstructConfig(iterations=0)


@pytest.fixture
def stack_file(tmp_path, taichi_cpu):
    views = 20.0 - forward_project(_blobs(), TILTS)
    path = tmp_path / "ts.mrc"
    write_stack(path, views, 12.0)
    np.savetxt(tmp_path / "ts.tlt", TILTS)
    return path


def _cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_ctrl_c_saves_the_state_and_resume_finishes(stack_file, tmp_path, capsys,
                                                       monkeypatch):
    out = tmp_path / "tomo.mrc"
    common = [stack_file, "--thickness", SHAPE[0], "-o", out, "--max-gaussians", 400,
              "--views-per-step", 4, "--init", "wbp", "--arch", "cpu",
              # The interruption is meant for the main fit, not the refinement's short one.
              "--no-refine-alignment"]
    real_step = GaussianReconstruction.step

    def interrupted(self):
        if self.iteration == 7:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(GaussianReconstruction, "step", interrupted)
    code, _, err = _cli(["reconstruct", *common, "--iterations", 15], capsys)
    assert code == 130
    state_path = tmp_path / "tomo.state.h5"
    assert "--resume" in err and str(state_path) in err
    assert load_state(state_path).iteration == 7
    assert not out.exists()  # nothing half-done under the final name

    monkeypatch.setattr(GaussianReconstruction, "step", real_step)
    code, _, err = _cli(["reconstruct", *common, "--resume", state_path], capsys)
    assert code == 0, err
    assert "resuming" in err and out.exists()
    assert load_state(state_path).iteration == 15


def test_cli_refuses_a_state_from_other_data(stack_file, tmp_path, capsys):
    out = tmp_path / "a.mrc"
    code, _, err = _cli(["reconstruct", stack_file, "--thickness", SHAPE[0], "-o", out,
                         "--iterations", 2, "--max-gaussians", 200, "--init", "wbp",
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    other = tmp_path / "other.mrc"
    write_stack(other, 20.0 - forward_project(_blobs(seed=9), TILTS), 12.0)
    np.savetxt(tmp_path / "other.tlt", TILTS)
    code, _, err = _cli(["reconstruct", other, "--thickness", SHAPE[0], "-o", tmp_path / "b.mrc",
                         "--resume", tmp_path / "a.state.h5", "--arch", "cpu"], capsys)
    assert code == 2
    assert "other data" in err and "--force" in err


def test_cli_project_and_voxelize_a_fitted_model(stack_file, tmp_path, capsys):
    import mrcfile

    out = tmp_path / "g.mrc"
    code, _, err = _cli(["reconstruct", stack_file, "--thickness", SHAPE[0], "-o", out,
                         "--iterations", 5, "--max-gaussians", 300, "--init", "wbp",
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    state = tmp_path / "g.state.h5"
    views = tmp_path / "views.mrc"
    code, out_text, err = _cli(["project", state, "--angles", "-90:90:45", "-o", views,
                                "--size", "30,10", "--arch", "cpu"], capsys)
    assert code == 0, err
    with mrcfile.open(views) as mrc:
        assert mrc.data.shape == (5, 10, 30)
        assert mrc.voxel_size.x == pytest.approx(12.0)
        # Dark contrast by default: the model's positive mass shows as negative views.
        assert mrc.data.sum() < 0
    coarse = tmp_path / "coarse.mrc"
    code, _, err = _cli(["voxelize", state, "-o", coarse, "--voxel-size", 24, "--arch", "cpu"],
                        capsys)
    assert code == 0, err
    with mrcfile.open(coarse) as mrc:
        assert mrc.data.shape == tuple(n // 2 for n in SHAPE)
        assert mrc.voxel_size.x == pytest.approx(24.0)
    code, _, err = _cli(["voxelize", state, "-o", tmp_path / "x.mrc", "--shape", "4,4",
                         "--arch", "cpu"], capsys)
    assert code == 2 and "NZ,NY,NX" in err
    code, _, err = _cli(["project", stack_file, "--angles", "0:10:5", "-o", tmp_path / "y.mrc",
                         "--arch", "cpu"], capsys)
    assert code == 2 and "ts.mrc" in err  # a stack given where a state is expected


def test_cli_sigterm_saves_the_state_and_exits_143(stack_file, tmp_path, capsys, monkeypatch):
    import os
    import signal

    real_step = GaussianReconstruction.step

    def terminated(self):
        if self.iteration == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self)

    monkeypatch.setattr(GaussianReconstruction, "step", terminated)
    out = tmp_path / "t.mrc"
    code, _, err = _cli(["reconstruct", stack_file, "--thickness", SHAPE[0], "-o", out,
                         "--iterations", 10, "--max-gaussians", 200, "--init", "wbp",
                         "--arch", "cpu", "--no-refine-alignment"], capsys)
    assert code == 143
    assert "terminated" in err
    assert load_state(tmp_path / "t.state.h5").iteration in (4, 5)
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_cli_gaussianize_export_and_refine(stack_file, tmp_path, capsys):
    from taichi_etgs.io import write_volume

    volume = tmp_path / "tomo.mrc"
    write_volume(volume, -_blobs(), 12.0)  # dark, like a tomogram in raw-image polarity
    state = tmp_path / "fit.h5"
    code, out, err = _cli(["gaussianize", volume, "-o", state, "--max-gaussians", 300,
                           "--iterations", 10, "--arch", "cpu"], capsys)
    assert code == 0, err
    assert "PSNR" in out
    ply = tmp_path / "fit.ply"
    code, out, err = _cli(["export", state, "-o", ply], capsys)
    assert code == 0, err
    header = ply.read_bytes().split(b"end_header")[0].decode()
    assert "element vertex" in header and "property float opacity" in header
    code, _, err = _cli(["export", state, "-o", ply], capsys)
    assert code == 2 and "--force" in err
    # The fitted model seeds a reconstruction of the tilt series (refinement).
    code, _, err = _cli(["reconstruct", stack_file, "--thickness", SHAPE[0], "-o",
                         tmp_path / "refined.mrc", "--init", state, "--iterations", 3,
                         "--arch", "cpu"], capsys)
    assert code == 0, err
    assert (tmp_path / "refined.mrc").exists()


def test_a_state_from_before_a_setting_resumes_as_it_began():
    # States saved before the RMSE data term existed were fitted with L1: a resume must
    # go on with L1, while a state that names its data term keeps it.
    from types import SimpleNamespace

    from taichi_etgs.pipeline.resume import saved_config

    warnings = []
    session = SimpleNamespace(warn=warnings.append)
    old = SimpleNamespace(config={"iterations": 30, "_losses": [1.0], "retired": 1})
    config = saved_config(old, "old.state.h5", ReconstructConfig, session)
    assert config.data_term == "l1" and config.iterations == 30
    assert ReconstructConfig().data_term == "rmse"
    # Seeded before the seed budget followed the views' signal: half of max_gaussians.
    assert config.signal_per_gaussian == 0.0 and ReconstructConfig().signal_per_gaussian == 3.0
    assert len(warnings) == 1 and "retired" in warnings[0]
    new = SimpleNamespace(config={"iterations": 30, "data_term": "rmse"})
    assert saved_config(new, "new.state.h5", ReconstructConfig, session).data_term == "rmse"
