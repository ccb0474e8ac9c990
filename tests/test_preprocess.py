"""X-ray hits and hot pixels: found, replaced, and nothing else touched."""

import numpy as np
import pytest

from taichi_etgs.preprocess import density_views, erase_outliers


def _blobs(shape=(96, 128), seed=0) -> np.ndarray:
    """A noise-free density view: Gaussian blobs of 1-6 px sd and an ice step."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    view = np.where(x > shape[1] * 0.8, 0.0, 1.0)
    for _ in range(60):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sd = rng.uniform(1.0, 6.0)
        view += rng.uniform(0.5, 3.0) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sd**2))
    return view


def _hits(view: np.ndarray, patches, depth: float) -> np.ndarray:
    """The mask of ``patches`` ((y, x, h, w)) made ``depth`` less dense (bright in the
    images, as X-rays are)."""
    mask = np.zeros(view.shape, dtype=bool)
    for y, x, h, w in patches:
        mask[y:y + h, x:x + w] = True
    view[mask] -= depth
    return mask


def test_hits_of_one_to_four_pixels_are_replaced_and_nothing_else():
    rng = np.random.default_rng(1)
    clean = _blobs() + rng.normal(0.0, 0.3, size=(96, 128))
    view = clean.copy()
    small = [(10, 10, 1, 1), (30, 50, 1, 2), (60, 90, 2, 2), (80, 20, 1, 4), (0, 0, 1, 1),
             (95, 127, 1, 1)]  # corners too
    mask = _hits(view, small, 20.0)  # about 65 noise sd
    large = _hits(view, [(40, 100, 3, 3)], 20.0)  # 9 pixels: specimen, not a hit
    dense = np.zeros_like(mask)
    dense[70, 60] = True
    view[dense] += 20.0  # denser than its neighbours (a gold bead's core): kept
    before = view.copy()
    assert erase_outliers(view) == mask.sum()
    changed = view != before
    assert np.array_equal(changed, mask)
    # Replaced by the neighbours' median: within the noise (0.3 sd; the blobs vary
    # little over a pixel) of the clean view, against 20 before.
    assert np.max(np.abs(view[mask] - clean[mask])) < 1.5
    assert np.array_equal(view[large | dense], before[large | dense])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_free_and_noisy_views_without_hits_are_left_alone(seed):
    clean = _blobs(seed=seed)
    for view in (clean, clean + np.random.default_rng(seed).normal(0.0, 0.3, clean.shape)):
        before = view.copy()
        assert erase_outliers(view) == 0
        assert np.array_equal(view, before)


def test_views_of_counts_and_constant_views():
    # Poisson counts at 0.5 electron per pixel: most differences are zero, the noise is
    # still measured (10 sd is about 10 counts: none in 12,000 pixels).
    counts = np.random.default_rng(3).poisson(0.5, size=(96, 128)).astype(np.float64)
    view = density_views(counts[None], "dark")[0].astype(np.float64)
    assert erase_outliers(view) == 0
    view[50, 50] -= 40.0  # a hit of 40 electrons
    assert erase_outliers(view) == 1
    assert erase_outliers(np.zeros((8, 8))) == 0
    assert erase_outliers(np.zeros((2, 8))) == 0  # too small to have neighbours


def test_wbp_replaces_hits_and_says_so_keep_outliers_keeps_them(tmp_path, capsys, taichi_cpu):
    import mrcfile

    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.cli import main
    from taichi_etgs.io import write_stack

    tilts = np.arange(-60.0, 61.0, 5.0)
    volume = np.zeros((16, 64, 96), np.float32)
    volume[6:10, 20:40, 40:60] = 1.0
    rng = np.random.default_rng(5)
    clean = 50.0 - forward_project(volume, tilts) + rng.normal(0.0, 0.5, (25, 64, 96))
    hit = clean.copy()
    ys, xs = rng.integers(0, 64, 25), rng.integers(0, 96, 25)
    hit[np.arange(25), ys, xs] += 200.0  # one X-ray hit per view, 400 noise sd
    tomograms = {}
    for name, views, extra in (("clean", clean, []), ("erased", hit, []),
                               ("kept", hit, ["--keep-outliers"])):
        stack = tmp_path / f"{name}.mrc"
        write_stack(stack, views.astype(np.float32), 10.0)
        np.savetxt(tmp_path / f"{name}.tlt", tilts)
        code = main(["wbp", str(stack), "--thickness", "16", "-o",
                     str(tmp_path / f"{name}_tomo.mrc"), "--arch", "cpu", *extra])
        err = capsys.readouterr().err
        assert code == 0, err
        said = "replaced 25 outlier pixels" in err and "in 25 of 25 views" in err
        assert said == (name == "erased"), err
        with mrcfile.open(tmp_path / f"{name}_tomo.mrc") as mrc:
            tomograms[name] = mrc.data.astype(np.float64).ravel()

    def corr(name):
        return np.corrcoef(tomograms[name], tomograms["clean"])[0, 1]

    # Erased: the clean tomogram within the interpolation of 25 pixels (measured 0.99996);
    # kept: each hit streaks through its whole slice (measured 0.35).
    assert corr("erased") > 0.999
    assert corr("kept") < 0.8


def test_the_pipeline_reports_what_it_replaced_and_progress_on_large_views(monkeypatch):
    from taichi_etgs.pipeline import inputs
    from taichi_etgs.pipeline.inputs import StackSource
    from taichi_etgs.pipeline.session import Session

    data = np.random.default_rng(4).normal(50.0, 1.0, (3, 64, 64)).astype(np.float32)
    data[1, 5, 5] += 100.0
    source = StackSource.from_arrays(data, [-10.0, 0.0, 10.0], 5.0)
    for large, lines in ((64 * 64 + 1, 1), (64 * 64, 4)):  # the report, then 3 progress lines
        monkeypatch.setattr(inputs, "_LARGE_VIEW_PIXELS", large)
        said = []
        views = inputs.views(source.stack, source, Session(note=said.append))
        assert len(said) == lines, said
        assert said[-1].startswith("<array>: replaced 1 outlier pixel (X-ray hits")
        assert "in 1 of 3 views (at most 1, in section 1)" in said[-1]
        # Replaced, and the view's mean removed again.
        assert abs(views[1, 5, 5]) < 5.0 and abs(float(views[1].mean())) < 1e-5
    kept = inputs.views(source.stack, StackSource.from_arrays(data, [-10.0, 0.0, 10.0], 5.0,
                                                              erase_outliers=False))
    assert kept[1, 5, 5] < -90.0  # dark contrast: the bright hit is negative density


@pytest.mark.parametrize("command, offered", [("wbp", True), ("sirt", True),
                                              ("reconstruct", True), ("batch", True),
                                              ("info", False)])
def test_keep_outliers_is_offered_where_views_are_reconstructed(capsys, command, offered):
    from taichi_etgs.cli import main

    assert main([command, "--help"]) == 0
    assert ("--keep-outliers" in capsys.readouterr().out) == offered
