"""Phase flipping in strips along the tilt axis (taichi_etgs/classical/phaseflip.py): the
defocus gradient's sign against the geometry, a numpy reference with explicit DFTs, and
what it does for WBP of CTF-filtered views."""

from __future__ import annotations

import numpy as np
import pytest

from taichi_etgs.classical.phaseflip import phase_flip_views, strip_defocus_um, strips
from taichi_etgs.gaussian.transfer import Microscope, ViewFilter
from taichi_etgs.geometry import project_point
from taichi_etgs.simulation.imaging import electron_wavelength_A

from .phantoms import gaussian_blobs

PIX = 8.0


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_defocus_gradient_sign_follows_the_geometry():
    # A point of the specimen's mid-plane (z = 0) at x, tilted by +theta about +Y: its
    # height along the beam (which travels along +Z, source at -Z) is z' = -x sin(theta)
    # (the rotation that docs/conventions.md's u = x cos + z sin is the first row of).
    # Underfocus grows towards the source: df = df0 - z' = df0 + x sin(theta).
    for tilt in (-50.0, -20.0, 0.0, 35.0, 60.0):
        theta = np.radians(tilt)
        x = np.array([-30.0, -5.0, 12.0, 40.0])  # pixels from the tilt axis
        u, _ = project_point(x, 0.0, 0.0, tilt)
        height = -x * np.sin(theta) + 0.0 * np.cos(theta)
        expected = 3.0 - height * PIX * 1e-4
        np.testing.assert_allclose(strip_defocus_um(u, tilt, 3.0, PIX), expected, rtol=0,
                                   atol=1e-12)
    # At positive tilt, the right side of the view (u > 0) is further underfocus.
    assert strip_defocus_um(10.0, 30.0, 3.0, PIX) > 3.0 > strip_defocus_um(-10.0, 30.0, 3.0, PIX)


def test_strips_cover_the_view_within_the_tolerance():
    assert strips(64, 0.0, PIX) == [(0, 64, 0.0)]  # no gradient: one strip
    for tilt, tol in ((20.0, 200.0), (60.0, 50.0), (-45.0, 10.0)):
        parts = strips(100, tilt, PIX, tol)
        assert parts[0][0] == 0 and parts[-1][1] == 100
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        slope = abs(np.tan(np.radians(tilt))) * PIX / 10.0  # nm per pixel
        assert max(b - a for a, b, _ in parts) * slope <= tol * 1.0001 + slope
        for a, b, centre in parts:
            assert centre == pytest.approx(0.5 * (a + b) - 50.0)


def _reference_flip(view, tilt, scope, pad, per_column=True, tolerance_nm=None):
    """Each column flipped with the CTF at its own defocus (or its strip's), by explicit
    complex DFT matrices on the mirror-padded view, the CTF from its formula."""
    ny, nx = view.shape
    v = np.pad(view - view.mean(), pad, mode="reflect")
    py, px = v.shape
    fy = np.exp(-2j * np.pi * np.outer(np.arange(py), np.arange(py)) / py)
    fx = np.exp(-2j * np.pi * np.outer(np.arange(px), np.arange(px)) / px)
    spectrum = fy @ v @ fx.T
    ky = np.fft.fftfreq(py, d=scope.pixel_size_A)[:, None]
    kx = np.fft.fftfreq(px, d=scope.pixel_size_A)[None, :]
    k2, phi = ky ** 2 + kx ** 2, np.arctan2(ky, kx)
    lam, w = electron_wavelength_A(scope.voltage_kV), scope.amplitude_contrast
    df1, df2, azimuth = scope.view(0)
    df2 = df1 if df2 is None else df2
    out = np.empty((ny, nx))
    centres = np.arange(nx) + 0.5 - nx / 2
    if not per_column:
        centres = np.concatenate([np.full(b - a, c) for a, b, c in
                                  strips(nx, tilt, scope.pixel_size_A, tolerance_nm)])
    deepest = 0.0
    for j in range(nx):
        shift = centres[j] * scope.pixel_size_A * np.tan(np.radians(tilt))  # A
        d1, d2 = df1 * 1e4 + shift, df2 * 1e4 + shift
        deepest = max(deepest, d1, d2)
        df = 0.5 * (d1 + d2) + 0.5 * (d1 - d2) * np.cos(2 * (phi - np.radians(azimuth)))
        chi = np.pi * lam * df * k2 - 0.5 * np.pi * scope.cs_mm * 1e7 * lam ** 3 * k2 ** 2
        ctf = -(np.sqrt(1 - w * w) * np.sin(chi) + w * np.cos(chi))
        image = (np.conj(fy) @ (spectrum * np.sign(-ctf)) @ np.conj(fx).T).real / (py * px)
        out[:, j] = image[pad:pad + ny, pad + j]
    # Only the change beyond the first zero of the most underfocused column is kept: the
    # first zero is where chi(k) = pi - atan(w / sqrt(1 - w^2)), found here by bisection.
    phase = np.pi - np.arctan2(w, np.sqrt(1 - w * w))
    lo, hi = 0.0, 0.5 / scope.pixel_size_A * 4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        chi = (np.pi * lam * deepest * mid ** 2
               - 0.5 * np.pi * scope.cs_mm * 1e7 * lam ** 3 * mid ** 4)
        lo, hi = (mid, hi) if chi < phase else (lo, mid)
    base = view - view.mean()
    gy = np.exp(-2j * np.pi * np.outer(np.arange(ny), np.arange(ny)) / ny)
    gx = np.exp(-2j * np.pi * np.outer(np.arange(nx), np.arange(nx)) / nx)
    change = gy @ (out - base) @ gx.T
    k = np.hypot(np.fft.fftfreq(ny, d=scope.pixel_size_A)[:, None],
                 np.fft.fftfreq(nx, d=scope.pixel_size_A)[None, :])
    change[k < lo] = 0
    return base + (np.conj(gy) @ change @ np.conj(gx).T).real / (ny * nx)


@pytest.mark.parametrize("scope", [
    Microscope(3.0, PIX),
    Microscope(4.0, PIX, defocus2_um=3.2, astigmatism_deg=25.0),
], ids=["isotropic", "astigmatic"])
def test_phase_flip_matches_numpy_reference(rng, scope):
    # Odd padded sizes: an astigmatic CTF is not even on the Nyquist lines of an even
    # grid (kx = -1/2 and +1/2 are one frequency at two azimuths), where the rfft chain and
    # the full DFT would resolve the ambiguity differently.
    ny, nx, pad, tilt = 13, 21, 5, 50.0
    view = rng.normal(size=(ny, nx))
    # A tolerance far below one column's defocus step: one strip per column, exactly
    # the per-column reference (round-off only).
    fine = phase_flip_views(view[None], [tilt], scope, tolerance_nm=1e-3, pad=pad)[0]
    reference = _reference_flip(view, tilt, scope, pad)
    np.testing.assert_allclose(fine, reference, rtol=0, atol=1e-5 * np.abs(reference).max())
    # Strips: the same as the reference flipping each column at its strip's centre.
    coarse = phase_flip_views(view[None], [tilt], scope, tolerance_nm=5.0, pad=pad)[0]
    assert len(strips(nx, tilt, PIX, 5.0)) == 5  # 0.95 nm per column: 5 columns at most
    np.testing.assert_allclose(coarse, _reference_flip(view, tilt, scope, pad, False, 5.0),
                               rtol=0, atol=1e-5 * np.abs(reference).max())


def test_phase_flip_undoes_a_defocus_gradient_better_with_strips(rng):
    # Views whose every column was filtered at its own defocus (the tilted specimen): the
    # strips follow the gradient, one flip for the whole view does not, and strips with
    # the gradient's sign reversed do worse than none (so the sign is checked too).
    from scipy.ndimage import gaussian_filter

    # 1 A pixels, 1 um underfocus: across these 256 pixels at 60 degrees the defocus
    # changes by 44 nm, several radians of CTF phase near Nyquist.
    ny, nx, tilt, pix = 16, 256, 60.0, 1.0
    scope = Microscope(1.0, pix)
    truth = gaussian_filter(rng.normal(size=(ny, nx)), 0.5, mode="wrap")
    pad = ViewFilter(scope, (ny, nx)).pad
    measured = np.empty((ny, nx))
    for j in range(nx):  # column j at defocus df + u_j * pixel * tan(tilt)
        df = float(strip_defocus_um(j + 0.5 - nx / 2, tilt, 1.0, pix))
        measured[:, j] = ViewFilter(Microscope(df, pix), (ny, nx), pad=pad).apply(
            truth[None])[0][:, j]
    # 16 rows against a point spread of ~100 pixels: padded as the views were made.
    stripped = phase_flip_views(measured[None], [tilt], scope, tolerance_nm=20.0, pad=pad)[0]
    whole = phase_flip_views(measured[None], [0.0], scope, pad=pad)[0]  # one strip at df
    reversed_sign = phase_flip_views(measured[None], [-tilt], scope, tolerance_nm=20.0,
                                     pad=pad)[0]
    c = [_corr(a, truth) for a in (stripped, whole, reversed_sign, measured)]
    # Measured over 3 seeds: 0.537-0.565 with strips, 0.47-0.49 one flip, 0.32-0.34 with
    # the gradient reversed, -0.01-0.03 not flipped.
    assert c[0] > c[1] + 0.03 and c[1] > c[2] + 0.1 and c[2] > c[3] + 0.2, c


def test_phase_flipped_wbp_beats_uncorrected_wbp(taichi_cpu):
    from taichi_etgs.classical.projector import forward_project
    from taichi_etgs.classical.wbp import weighted_back_projection

    shape = (16, 24, 64)
    volume = gaussian_blobs(shape, 30, 1.2, (5.0, 9.0, 24.0))
    tilts = np.arange(-60.0, 61.0, 4.0)
    defocus = tuple(np.linspace(4.0, 6.0, tilts.size))  # per view, as from a file
    scope = Microscope(defocus, PIX)
    views = ViewFilter(scope, shape[1:]).apply(forward_project(volume, tilts))
    flipped = phase_flip_views(views, tilts, scope)
    plain = weighted_back_projection(views, tilts, shape[0])
    corrected = weighted_back_projection(flipped, tilts, shape[0])
    c_plain, c_corrected = _corr(plain, volume), _corr(corrected, volume)
    # Measured 0.669 uncorrected against 0.737 phase-flipped.
    assert c_corrected > c_plain + 0.04, (c_plain, c_corrected)
