"""Image formation for simulated tilt series: CTF, radiation damage, dose and noise.

Two noise models:

- **Gaussian** at a per-pixel SNR: ``noise variance = signal variance / snr``, the signal
  variance being the variance (about its mean) of the noise-free view nearest 0 deg.
  That view sees the specimen without the edges a box-limited (``isolated``) specimen
  shows at high tilt, whose variance would otherwise dominate; every view gets the
  same noise, as every view of a series has about the same dose. With uneven per-tilt
  doses the noise variance of view ``t`` is scaled by ``mean(dose) / dose_t``
  (shot-noise-like). No CTF.
- **Physical**: projected potential -> phase ``phi = sigma_e * integral V dz`` (the
  interaction constant at the voltage); the view's mean phase is dropped (a constant
  phase is invisible); the electron-exposure filter of Grant & Grigorieff (2015) damages
  the signal by the dose received before and during the view; the weak-phase
  approximation with amplitude contrast ``w`` gives
  ``I = 1 + 2 IFFT[CTF * FFT(phi)]`` with
  ``CTF(k) = -(sqrt(1 - w^2) sin chi + w cos chi)``,
  ``chi(k) = pi lambda df k^2 - pi/2 Cs lambda^3 k^4`` (``df > 0``: underfocus, dark
  particles); the zero-loss beam is attenuated by ``exp(-t / mfp)`` with ``t`` the view's
  mean ice-equivalent path (thicker at high tilt); finally Poisson counts at the view's
  dose. Defocus is constant across each view and over the series (no defocus gradient
  across the tilted specimen). The CTF is applied on the fine (oversampled) views before
  they are binned to detector pixels, with mirror padding against wrap-around.
"""

from __future__ import annotations

import numpy as np

from .specimen import ICE_POTENTIAL_V

__all__ = [
    "ctf_2d",
    "electron_wavelength_A",
    "exposure_filter",
    "gaussian_noise_sigma",
    "interaction_constant",
    "physical_images",
]

_M0C2_EV = 510998.95  # electron rest energy
_HC_EVA = 12398.4198  # h c in eV A


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength, A (0.01969 A at 300 kV)."""
    e = float(voltage_kV) * 1e3
    return _HC_EVA / np.sqrt(e * (e + 2.0 * _M0C2_EV))


def interaction_constant(voltage_kV: float) -> float:
    """Interaction constant sigma_e, rad / (V A) (6.53e-4 at 300 kV)."""
    e = float(voltage_kV) * 1e3
    lam = electron_wavelength_A(voltage_kV)
    return 2.0 * np.pi / (lam * e) * (_M0C2_EV + e) / (2.0 * _M0C2_EV + e)


def _frequencies(shape_yx: tuple[int, int], pixel_size_A: float) -> np.ndarray:
    """|k| in 1/A on the rfft2 grid. [ny, nx // 2 + 1]"""
    ky = np.fft.fftfreq(shape_yx[0], d=pixel_size_A)
    kx = np.fft.rfftfreq(shape_yx[1], d=pixel_size_A)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def ctf_2d(shape_yx: tuple[int, int], pixel_size_A: float, defocus_um: float,
           voltage_kV: float = 300.0, cs_mm: float = 2.7,
           amplitude_contrast: float = 0.07, *, defocus2_um: float | None = None,
           astigmatism_deg: float = 0.0) -> np.ndarray:
    """Contrast transfer function on the ``numpy.fft.rfft2`` grid of an image.

    Parameters
    ----------
    shape_yx: image shape (ny, nx).
    pixel_size_A: pixel size, A.
    defocus_um: defocus, micrometres; positive is underfocus. With ``defocus2_um``, the
        defocus along the astigmatism's azimuth (CTFFIND's defocus 1).
    voltage_kV, cs_mm, amplitude_contrast: microscope.
    defocus2_um: the defocus across the azimuth (None: no astigmatism).
    astigmatism_deg: the azimuth: the angle of the defocus-1 axis from the image's X axis
        (columns) towards +Y (rows), degrees. A spatial frequency at angle ``phi`` sees
        ``df(phi) = (df1 + df2)/2 + (df1 - df2)/2 cos 2(phi - azimuth)``.

    Returns
    -------
    CTF, negative at low frequency (dark contrast for positive phase). [ny, nx // 2 + 1]
    """
    lam = electron_wavelength_A(voltage_kV)
    k2 = _frequencies(shape_yx, pixel_size_A) ** 2
    df = float(defocus_um) * 1e4
    if defocus2_um is not None and float(defocus2_um) != float(defocus_um):
        d1, d2 = df, float(defocus2_um) * 1e4
        ky = np.fft.fftfreq(shape_yx[0], d=pixel_size_A)[:, None]
        kx = np.fft.rfftfreq(shape_yx[1], d=pixel_size_A)[None, :]
        phi = np.arctan2(ky, kx)
        df = 0.5 * (d1 + d2) + 0.5 * (d1 - d2) * np.cos(2.0 * (phi - np.radians(
            float(astigmatism_deg))))
    cs = float(cs_mm) * 1e7
    chi = np.pi * lam * df * k2 - 0.5 * np.pi * cs * lam ** 3 * k2 ** 2
    w = float(amplitude_contrast)
    return -(np.sqrt(1.0 - w * w) * np.sin(chi) + w * np.cos(chi))


def exposure_filter(k_per_A: np.ndarray, exposure_e_per_A2: float,
                    voltage_kV: float = 300.0) -> np.ndarray:
    """Amplitude left after an exposure (Grant & Grigorieff 2015), same shape as ``k``.

    ``exp(-N / (2 Ne(k)))`` with the critical exposure ``Ne(k) = 0.245 k^-1.665 + 2.81``
    e/A^2 measured at 300 kV, scaled by 0.8 at 200 kV (linearly in between and beyond).
    """
    k = np.maximum(np.asarray(k_per_A, dtype=np.float64), 1e-12)
    critical = 0.245 * k ** -1.665 + 2.81
    critical *= 0.8 + 0.2 * (float(voltage_kV) - 200.0) / 100.0
    return np.exp(-float(exposure_e_per_A2) / (2.0 * critical))


def gaussian_noise_sigma(views: np.ndarray, tilts_deg: np.ndarray, snr: float,
                         dose_per_tilt: np.ndarray | None = None) -> np.ndarray:
    """Noise standard deviation per view for a per-pixel SNR (see the module notes).

    Parameters
    ----------
    views: noise-free views. [n, ny, nx]
    tilts_deg: their tilts; the view nearest 0 deg defines the signal variance. [n]
    snr: signal variance / noise variance.
    dose_per_tilt: relative exposure of each view (default equal). [n]

    Returns
    -------
    Standard deviation of the noise of each view. [n]
    """
    views = np.asarray(views)
    untilted = int(np.argmin(np.abs(np.asarray(tilts_deg, dtype=np.float64))))
    signal_var = float(np.var(views[untilted], dtype=np.float64))
    n = views.shape[0]
    dose = np.ones(n) if dose_per_tilt is None else np.asarray(dose_per_tilt, np.float64)
    return np.sqrt(signal_var / float(snr) * dose.mean() / dose)


def _bin2(image: np.ndarray, factor: int) -> np.ndarray:
    ny, nx = image.shape[0] // factor, image.shape[1] // factor
    return image.reshape(ny, factor, nx, factor).mean(axis=(1, 3))


def physical_images(fine_views: np.ndarray, pixel_size_A: float, oversampling: int,
                    dose_per_tilt: np.ndarray, prior_dose: np.ndarray,
                    rng: np.random.Generator, *, defocus_um: float = 3.0,
                    voltage_kV: float = 300.0, cs_mm: float = 2.7,
                    amplitude_contrast: float = 0.07, radiation_damage: bool = True,
                    mean_free_path_A: float = 3500.0,
                    ice_potential_V: float = ICE_POTENTIAL_V) -> tuple[np.ndarray, dict]:
    """Electron counts per detector pixel from projected potentials (dark contrast).

    Parameters
    ----------
    fine_views: projected potential on the oversampled detector, V x (output voxel).
        [n_tilts, ny * oversampling, nx * oversampling]
    pixel_size_A: output (detector) pixel size, A.
    oversampling: fine pixels per detector pixel along each axis.
    dose_per_tilt: exposure of each view, e/A^2. [n_tilts]
    prior_dose: exposure received before each view, e/A^2. [n_tilts]
    rng: random generator for the Poisson counts.

    Returns
    -------
    (counts float32 [n_tilts, ny, nx], info dict with the constants used)
    """
    fine_views = np.asarray(fine_views)
    n, fy, fx = fine_views.shape
    os_ = int(oversampling)
    fine_pix = pixel_size_A / os_
    sigma_e = interaction_constant(voltage_kV)
    lam = electron_wavelength_A(voltage_kV)
    # Mirror padding of about the CTF's delocalisation at the fine Nyquist frequency.
    k_max = 0.5 / fine_pix
    deloc_A = lam * defocus_um * 1e4 * k_max + cs_mm * 1e7 * lam ** 3 * k_max ** 3
    pad = int(min(np.ceil(deloc_A / fine_pix) + 2, fy - 1, fx - 1))
    shape = (fy + 2 * pad, fx + 2 * pad)
    ctf = ctf_2d(shape, fine_pix, defocus_um, voltage_kV, cs_mm, amplitude_contrast)
    k = _frequencies(shape, fine_pix)
    out = np.empty((n, fy // os_, fx // os_), dtype=np.float32)
    attenuation = np.empty(n)
    for t in range(n):
        projected = fine_views[t].astype(np.float64)
        phase = sigma_e * pixel_size_A * projected
        phase -= phase.mean()
        spectrum = np.fft.rfft2(np.pad(phase, pad, mode="reflect")) * ctf
        if radiation_damage:
            spectrum *= exposure_filter(k, prior_dose[t] + 0.5 * dose_per_tilt[t], voltage_kV)
        contrast = np.fft.irfft2(spectrum, s=shape)[pad:pad + fy, pad:pad + fx]
        intensity = _bin2(np.clip(1.0 + 2.0 * contrast, 0.0, None), os_)
        path_A = projected.mean() * pixel_size_A / ice_potential_V
        attenuation[t] = np.exp(-path_A / mean_free_path_A)
        expected = dose_per_tilt[t] * pixel_size_A ** 2 * attenuation[t] * intensity
        out[t] = rng.poisson(expected).astype(np.float32)
    info = {"interaction_constant_rad_per_VA": sigma_e, "wavelength_A": lam,
            "ctf_padding_fine_px": pad, "zero_loss_fraction": attenuation.tolist()}
    return out, info
