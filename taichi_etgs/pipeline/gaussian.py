"""The Gaussian reconstruction of a tilt series, as the ``reconstruct`` command runs it:
checks, seeding (a classical reconstruction, a tomogram or a model), resume, the fitting
loop with its state file, validation, odd/even halves, the tomogram.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError, RunFailure
from . import checkpoint, inputs, sizes
from .alignment import alignment_mode, check_alignment_outputs, not_refined, write_alignment
from .inputs import StackSource
from .outputs import check_writable, os_reason
from .resume import (
    RunRecord,
    check_resume,
    check_state_output,
    default_state_path,
    half_paths,
    saved_config,
)
from .session import Session
from .slabs import SlabRunner, warn_whole
from .tomograms import (
    TomogramResult,
    VolumeTarget,
    check_finite,
    mrc_origin,
    relative_to_mean,
    write_tomogram,
)

__all__ = ["GaussianSettings", "ReconstructResult", "run_reconstruct"]

log = logging.getLogger("taichi_etgs.pipeline")

_MODEL_SUFFIXES = (".h5", ".hdf5")


@dataclass
class GaussianSettings:
    """How to reconstruct: the options of ``reconstruct`` besides input and output.

    iterations: optimisation steps (None: 600, or on resume the saved run's).
    max_gaussians, views_per_step, tilt_weight, seed, heldout_every: as
        :class:`~taichi_etgs.gaussian.fit.ReconstructConfig`.
    init: what seeds the model: "sirt", "wbp", a tomogram (.mrc, in the output's size and
        the input's polarity) or a model state (.h5) to refine.
    defocus_um, voltage_kV, cs_mm, amplitude_contrast: the CTF: the underfocus in
        micrometres of every view (0: none) or a file with each view's
        (:mod:`taichi_etgs.io.defocus`; astigmatism where it gives it).
    dose, dose_per_tilt, tilt_order, tilt_start, tilt_group: the views' exposure
        (:class:`~taichi_etgs.pipeline.dose.DoseSettings`: an .mdoc or DOSE PRIOR_DOSE file,
        or e/A^2 per view with the acquisition order): each rendered view is filtered with
        its exposure filter in the forward model.
    voxel_size: voxel size of the written tomogram in A (None: the stack's pixel size).
    halves: also reconstruct the odd and the even tilts and write both with their FSC.
    refine_alignment: refine each view's residual shift with the model
        (:mod:`taichi_etgs.alignment`) and write the correction next to the output as
        ``<output stem>.xf`` (IMOD convention, in the input stack's pixels, to apply after
        the alignment the views were given with) and ``<output stem>.tlt``. None (auto):
        in a whole-volume run that is not resumed nor seeded from a model (views found
        aligned within the noise are used exactly as given), the files written only when
        a view moved and where they replace neither an input's file nor, without
        ``force``, an existing one; elsewhere off, without an error. True: always, the
        files always written, and refused where it cannot run. False: never.
    state: the state file (None: OUTPUT with .state.h5; none without an output).
    save_state: False: no state file at all (Ctrl-C then loses the run).
    save_every: save the state every this many steps (0: only at the end).
    resume: a state file to continue.
    slab_rows: fit slabs of this many rows along Y independently, each with a margin of
        rows shared with its neighbours, and blend them
        (:mod:`taichi_etgs.pipeline.gaussian_slabs`); None: in slabs only when the whole
        does not fit in the memory available. Not with halves, resume, refine_alignment
        True, an init file or voxel_size.
    config: every setting at once (library use): replaces the fields above that it holds
        (``iterations`` still overrides its own).
    """

    iterations: int | None = None
    max_gaussians: int = 60_000
    views_per_step: int = 8
    init: str | PathLike = "sirt"
    tilt_weight: str = "cos"
    seed: int = 0
    heldout_every: int = 10
    defocus_um: float | str | PathLike = 0.0
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    dose: str | PathLike | None = None
    dose_per_tilt: float | None = None
    tilt_order: str | None = None
    tilt_start: float | None = None
    tilt_group: int = 2
    voxel_size: float | None = None
    halves: bool = False
    refine_alignment: bool | None = None
    state: str | PathLike | None = None
    save_state: bool = True
    save_every: int = 100
    resume: str | PathLike | None = None
    slab_rows: int | None = None
    config: object | None = None

    @property
    def init_path(self) -> Path | None:
        return None if str(self.init) in ("sirt", "wbp") else Path(self.init)

    def ctf(self):
        """The CTF settings (:class:`~taichi_etgs.pipeline.ctf.CtfSettings`)."""
        from .ctf import CtfSettings

        return CtfSettings(self.defocus_um or None, self.voltage_kV, self.cs_mm,
                           self.amplitude_contrast)

    def dose_settings(self):
        """The exposure settings (:class:`~taichi_etgs.pipeline.dose.DoseSettings`)."""
        from .dose import DoseSettings

        return DoseSettings(self.dose, self.dose_per_tilt, self.tilt_order, self.tilt_start,
                            self.tilt_group)

    def build_config(self, pixel: float, defocus=None, dose=None):
        """The :class:`~taichi_etgs.gaussian.fit.ReconstructConfig` of a new run;
        ``defocus``: the views' :class:`~taichi_etgs.io.defocus.DefocusSeries` (from a
        file: per view; one value: ``defocus_um``); ``dose``: the views'
        :class:`~taichi_etgs.io.dose.DoseSeries`."""
        from ..gaussian.fit import ReconstructConfig

        if self.config is not None:
            config = dataclasses.replace(self.config)
            if self.iterations is not None:
                config.iterations = int(self.iterations)
            if config.has_view_filter and not config.pixel_size_A > 0:
                config = dataclasses.replace(config, pixel_size_A=pixel)
            return config
        init = str(self.init) if str(self.init) in ("sirt", "wbp") else "sirt"
        ctf: dict = {"defocus_um": 0.0}
        if defocus is not None and defocus.format == "value":
            ctf["defocus_um"] = float(defocus.defocus_um[0])
        elif defocus is not None:
            astig = defocus.astigmatic
            first = defocus.defocus1_um if astig else defocus.defocus_um
            ctf["defocus_per_view_um"] = [float(v) for v in first]
            if astig:
                ctf["defocus2_per_view_um"] = [float(v) for v in defocus.defocus2_um]
                ctf["astigmatism_per_view_deg"] = [float(v) for v in defocus.astigmatism_deg]
        if dose is not None:
            ctf["exposure_per_view_e_per_A2"] = [float(v) for v in dose.exposure_e_per_A2]
        return ReconstructConfig(iterations=self.iterations or 600,
                                 max_gaussians=self.max_gaussians,
                                 views_per_step=self.views_per_step,
                                 tilt_weight=self.tilt_weight, seed=self.seed, init=init,
                                 heldout_every=self.heldout_every, **ctf,
                                 refine_alignment=self.refine_alignment is not False,
                                 pixel_size_A=(pixel if defocus is not None or dose is not None
                                               else 0.0),
                                 voltage_kV=self.voltage_kV, cs_mm=self.cs_mm,
                                 amplitude_contrast=self.amplitude_contrast)


@dataclass
class ReconstructResult(TomogramResult):
    """A Gaussian reconstruction as :func:`run_reconstruct` returns it: the tomogram
    (:class:`~taichi_etgs.pipeline.tomograms.TomogramResult`) and

    run: the :class:`~taichi_etgs.gaussian.fit.GaussianReconstruction` (model, losses).
    state: the state file written, or None.
    validation: held-out scores, best iteration, slab, gains (and the half-map FSC).
    halves: the half tomograms written.
    """

    run: object | None = None
    state: Path | None = None
    validation: dict = field(default_factory=dict)
    halves: list[Path] = field(default_factory=list)


def _report_validation(validation: dict, session: Session) -> None:
    """The run's own account of its quality, in the log and in the notes."""
    scores = validation["heldout_loss"]
    if not scores["iteration"]:
        return
    for it, value in zip(scores["iteration"], scores["value"]):
        log.info("held-out views at iteration %d: relative error %.5f", it, value)
    stop = " (stopped early)" if validation["stopped_early"] else ""
    averaged = validation.get("averaged_iterations") or [validation["best_iteration"]]
    written = ("that model is written" if len(averaged) == 1 else
               f"the mean of the {len(averaged)} models the held-out views cannot tell "
               f"apart from it (iterations {averaged[0]}-{averaged[-1]}) is written")
    session.tell(f"held-out views {validation['heldout_views']}: relative error "
                 f"{scores['value'][0]:.4f} at the start, best "
                 f"{validation['best_heldout_loss']:.4f} at iteration "
                 f"{validation['best_iteration']}{stop}; {written}")


def _write_halves(session, run, views, series, paths, factor, out_shape, pixel, contrast,
                  output_contrast, force, origin) -> dict:
    """Fit the odd and the even tilts independently, write both, return their FSC: of the
    maps as written (what ``evaluate --half2`` gives for them) and of their specimens (the
    Gaussians without the ice slab both fit alike: the quality measure)."""
    from ..evaluation.metrics import half_map_fsc
    from ..gaussian.fit import halves_fsc, reconstruct_halves

    seeded = run.seed_count()
    session.tell(f"reconstructing the odd and the even tilts independently (--halves), each "
                 f"seeding {seeded} Gaussians as the full run")
    total = run.config.iterations
    with session.progress(2 * total, "halves") as bar:
        def progress(half: int, info) -> None:
            bar.update((half - 1) * total + info.iteration, half=half,
                       loss=f"{info.loss:.4f}", n=info.n_gaussians)

        first, second = reconstruct_halves(views, series.tilts_deg, run.shape_zyx[0],
                                           run.config, width=run.shape_zyx[2],
                                           seed_gaussians=seeded,
                                           progress=progress)
    volumes = [relative_to_mean(r.tomogram(voxel_size=factor, shape_zyx=out_shape))
               for r in (first, second)]
    fsc = half_map_fsc(volumes[0], volumes[1], pixel * factor)
    specimen = halves_fsc(first, second, pixel, factor, out_shape)
    for k, (path, volume, r) in enumerate(zip(paths, volumes, (first, second)), start=1):
        check_finite(volume, series.source)
        if path is not None:
            write_tomogram(session, path, volume, pixel * factor, contrast, output_contrast,
                           force, f"gaussians half {k} ({'odd' if k == 1 else 'even'} tilts)",
                           {"half": k, "n_views": int(r.measured.shape[0]),
                            "validation": r.validation_report()}, origin)
    band = f"{1 / fsc['band_per_A'][0]:.0f}-{1 / fsc['band_per_A'][1]:.0f} A"
    session.tell(f"half-map FSC of the specimen (slab left out): 0.143 at "
                 f"{specimen['fsc0143_resolution_A']:.1f} A, 0.5 at "
                 f"{specimen['fsc05_resolution_A']:.1f} A, mean {specimen['band_fsc']:.3f} "
                 f"over {band} (of the maps as written: {fsc['band_fsc']:.3f})")
    log.info("half-map FSC of the specimen: %s", specimen["fsc"])
    return {"half_fsc": {"freq_per_A": fsc["freq_per_A"], "fsc": fsc["fsc"]},
            "half_fsc0143_resolution_A": fsc["fsc0143_resolution_A"],
            "half_fsc05_resolution_A": fsc["fsc05_resolution_A"],
            "half_band_fsc": fsc["band_fsc"],
            "specimen_half_fsc": {"freq_per_A": specimen["freq_per_A"],
                                  "fsc": specimen["fsc"]},
            "specimen_half_fsc0143_resolution_A": specimen["fsc0143_resolution_A"],
            "specimen_half_fsc05_resolution_A": specimen["fsc05_resolution_A"],
            "specimen_half_band_fsc": specimen["band_fsc"]}


def new_config(settings: GaussianSettings, series, n_raw: int, pixel: float,
               session: Session):
    """The :class:`~taichi_etgs.gaussian.fit.ReconstructConfig` of a new run on ``series``
    (``n_raw`` views in the stack before any were excluded): the settings with the views'
    defocus and exposure read and checked."""
    defocus = dose = None
    if settings.config is None:
        from .ctf import defocus_of_views
        from .dose import dose_of_views

        defocus = defocus_of_views(settings.ctf(), series, n_raw, session)
        if defocus is not None and not series.pixel_size_A > 0:
            raise InputError("--defocus needs the pixel size, which the stack's header "
                             "does not give: pass --pixel-size", series.source)
        dose = dose_of_views(settings.dose_settings(), series, n_raw, session)
        if dose is not None and not series.pixel_size_A > 0:
            raise InputError("dose weighting needs the pixel size, which the stack's "
                             "header does not give: pass --pixel-size", series.source)
    return settings.build_config(pixel, defocus, dose)


def _seed(settings: GaussianSettings, source: StackSource, shape, session: Session):
    """What seeds a new run besides its config: ``(initial_volume, params, view_scale)``."""
    from ..gaussian.state import load_state

    init_path = settings.init_path
    if init_path is None:
        return None, None, 1.0
    session.add_input("init", init_path)
    if init_path.suffix.lower() in _MODEL_SUFFIXES:
        init_state = load_state(init_path)
        check_resume(init_state, init_path, source, shape, "", force=True)
        return None, init_state.params, init_state.geometry.view_scale
    from ..io import read_volume
    from ..preprocess import to_output_polarity

    volume, _ = read_volume(init_path)
    if tuple(volume.shape) != tuple(shape):
        raise InputError(f"--init: the tomogram is {'x'.join(map(str, volume.shape))} voxels "
                         f"(z, y, x) but this reconstruction is "
                         f"{'x'.join(map(str, shape))}: give a tomogram of the output's "
                         f"size (--thickness, --width, --binning as it was made with)",
                         init_path)
    # The tomogram is in the input's polarity (what this package writes by default).
    return to_output_polarity(volume, source.contrast, "input"), None, 1.0


def _refinement_asked(settings: GaussianSettings) -> bool | None:
    """``refine_alignment`` as asked: a whole config (library use) holds its own."""
    if settings.refine_alignment is None and settings.config is not None:
        return bool(settings.config.refine_alignment)
    return settings.refine_alignment


def _auto_off(settings: GaussianSettings, why: str) -> GaussianSettings:
    """``settings`` without the auto mode's refinement, which cannot run here."""
    _say_auto_off(why)
    return dataclasses.replace(settings, refine_alignment=False)


def _say_auto_off(why: str) -> None:
    """Why the auto mode does not refine: in the log, not a warning, since the user did
    not ask for the refinement."""
    log.info("the views' alignment is not refined: %s", why)


def run_reconstruct(source: StackSource, target: VolumeTarget,
                    settings: GaussianSettings | None = None, *,
                    session: Session | None = None,
                    on_step: Callable | None = None,
                    slab_runner: SlabRunner | None = None) -> ReconstructResult:
    """Reconstruct a tilt series as adaptive 3D Gaussians and voxelise the model.

    Parameters
    ----------
    source: the tilt series (:class:`~taichi_etgs.pipeline.inputs.StackSource`).
    target: the tomogram's size and file (``output=None``: returned only, no state file
        unless ``settings.state`` names one).
    settings: how to reconstruct (:class:`GaussianSettings`).
    session: where messages go and what is recorded.
    on_step: also called with each :class:`~taichi_etgs.gaussian.fit.Progress` (not in
        a slabbed run, whose slabs are fitted by a pure function).
    slab_runner: where the slabs of a slabbed run are fitted (the Dask tasks of
        ``taichi_etgs.batch.slab_tasks.SlabTasks``); None: one after the other in this
        process. The same tomogram either way.

    Returns
    -------
    :class:`ReconstructResult`.

    Raises
    ------
    InputError: bad input or options, an existing output (without ``force``), a state
        from another run, a run that does not fit; nothing is written then.
    RunFailure: the state or the tomogram could not be written (a full disk).
    KeyboardInterrupt: Ctrl-C, or :class:`~taichi_etgs.pipeline.checkpoint.Terminated`
        for SIGTERM, after the state was saved.
    """
    from ..gaussian.fit import GaussianReconstruction, ReconstructConfig, prealign_views
    from ..gaussian.state import input_checksum, load_state

    session = session or Session()
    settings = settings or GaussianSettings()
    force, output = target.force, target.path
    if output is not None:
        check_writable(output, force, probe=True)
    half_outputs = half_paths(output) if settings.halves and output is not None else []
    for path in half_outputs:
        check_writable(path, force, probe=True)
    if settings.refine_alignment:
        check_alignment_outputs(source, output, force)
    mode = alignment_mode(_refinement_asked(settings))
    from . import gaussian_slabs

    rows = gaussian_slabs.slab_rows_of(source, target, settings, session)
    if rows:  # never with the refinement on: slab_rows_of refuses or fits the whole
        alignment = not_refined(mode)
        if mode == "auto":
            why = "slabs are fitted from their rows, the alignment needs whole views"
            settings = _auto_off(settings, why)
            alignment = not_refined(mode, why)
        return gaussian_slabs.run_slabbed(source, target, settings, rows, session,
                                          slab_runner, alignment=alignment)
    warn_whole(slab_runner, session)
    resume_path = None if settings.resume is None else Path(settings.resume)
    # Why the alignment may not be refined although asked for or left to auto.
    why_not_refined = None
    if resume_path is not None:
        why_not_refined = "a resumed run keeps the alignment setting it was started with"
    elif (mode == "auto" and settings.init_path is not None
          and settings.init_path.suffix.lower() in _MODEL_SUFFIXES):
        # A fit from a model starts with every view unshifted and never matches views
        # that have no shift: nothing would move.
        why_not_refined = "a model seed (--init .h5) is fitted to the views as given"
        settings = _auto_off(settings, why_not_refined)
    state_path = None
    if settings.save_state and (settings.state is not None or output is not None):
        state_path = Path(settings.state) if settings.state else default_state_path(output)
        check_state_output(state_path, resume_path, force)
    voxel_size = settings.voxel_size
    if voxel_size is not None and not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InputError(f"--voxel-size must be a positive number of A, got {voxel_size}")
    init_path = settings.init_path
    if init_path is not None and not init_path.is_file():
        raise InputError("--init: file not found (expected sirt, wbp, a tomogram .mrc or a "
                         "state .h5)", init_path)
    state = None
    if resume_path is not None:
        state = load_state(resume_path)
        session.add_input("resume", resume_path)
    header = inputs.peek(source)
    shape = sizes.volume_shape(header.ny, header.nx, target.thickness, target.width,
                               source.path)

    def run_size(n_tilts, max_tilt=60.0, pixel=None):
        saved = state.config if state is not None else {}
        default = settings.config or settings
        n_max = int(saved.get("max_gaussians", default.max_gaussians) or default.max_gaussians)
        out_shape = sizes.output_shape(shape, voxel_size, pixel) if pixel else None
        seed_kind = ("model" if state is not None or (init_path is not None and
                                                       init_path.suffix.lower() in _MODEL_SUFFIXES)
                     else "volume" if init_path is not None else str(settings.init))
        if settings.config is not None and init_path is None and state is None:
            seed_kind = settings.config.init
        iterations = settings.iterations or saved.get("iterations") or getattr(
            settings.config, "iterations", 600)
        return sizes.run_size("reconstruct", n_tilts, header.ny, header.nx, shape,
                              source.binning, max_tilt_deg=max_tilt, max_gaussians=n_max,
                              views_per_step=int(saved.get("views_per_step",
                                                           default.views_per_step)),
                              init=seed_kind, output_shape_zyx=out_shape,
                              iterations=int(iterations))

    folders = [p.parent for p in (output, state_path) if p is not None]
    sizes.check_resources(run_size(header.n_raw, pixel=header.pixel_A * header.binning or 1.0),
                          folders, final=False)
    series, _ = inputs.load(source, session, force=force)
    sizes.warn_shape(shape, session)
    pixel = inputs.pixel_size(series)
    out_shape = sizes.output_shape(shape, voxel_size, pixel)
    max_tilt = float(np.max(np.abs(series.tilts_deg)))
    sizes.check_resources(run_size(series.n_tilts, max_tilt, pixel), folders, final=True)
    needs_checksum = state is not None or state_path is not None or output is not None
    checksum = input_checksum(series.data) if needs_checksum else ""
    views = inputs.views(series, source, session)

    if state is not None:
        check_resume(state, resume_path, source, shape, checksum, force)
        config = saved_config(state, resume_path, ReconstructConfig, session)
        if mode == "auto" and not config.refine_alignment:
            _say_auto_off(why_not_refined)
        if settings.config is None and settings.ctf().active:
            session.warn(f"{resume_path}: --defocus {settings.defocus_um} is not used: a "
                         f"resumed run keeps the CTF it was started with")
        if settings.config is None and settings.dose_settings().active:
            session.warn(f"{resume_path}: the dose options are not used: a resumed run keeps "
                         f"the exposure it was started with")
        if settings.iterations is not None:
            if settings.iterations < state.iteration:
                session.warn(f"{resume_path}: the run is already at iteration "
                             f"{state.iteration}, past --iterations {settings.iterations}: "
                             f"nothing is left to fit, so the tomogram is the saved model's "
                             f"(give more iterations to fit further)")
            config.iterations = int(settings.iterations)
        session.start_compute()
        try:
            run = GaussianReconstruction(views, series.tilts_deg, shape[0], config,
                                         width=shape[2], params=state.params)
            run.restore(state)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(f"cannot be resumed: the state does not fit this run ({exc})",
                             resume_path) from None
        session.tell(f"resuming {resume_path} at iteration {run.iteration}")
    else:
        config = new_config(settings, series, header.n_raw, pixel, session)
        initial_volume, params, params_view_scale = _seed(settings, source, shape, session)
        seed_from = config.init if initial_volume is None and params is None else settings.init
        session.start_compute()
        alignment = None
        if params is not None and config.refine_alignment:
            # Asked for explicitly (auto mode leaves a model seed alone): a seed starts
            # with every view unshifted and would never be matched, so the views'
            # alignment is found first, as for a run seeded from the views.
            session.tell("refining the views' alignment before fitting the model seed")
            alignment = prealign_views(views, series.tilts_deg, shape[0], config,
                                       width=shape[2])
        session.tell(f"seeding the model ({seed_from})")
        start = time.perf_counter()
        run = GaussianReconstruction(views, series.tilts_deg, shape[0], config, width=shape[2],
                                     initial_volume=initial_volume, params=params,
                                     params_view_scale=params_view_scale, alignment=alignment)
        log.info("seeded %d Gaussians in %.1f s", run.params.n, time.perf_counter() - start)
        budget, half = run.seed_budget(), config.max_gaussians // 2
        seeded_from_views = params is None and config.init_gaussians is None
        session.tell(f"{run.params.n} Gaussians to start with" + (
            f" (the views' signal determines about {budget}, fewer than half of "
            f"--max-gaussians, {half}: docs/method.md, Seeding)"
            if seeded_from_views and budget < half else ""))
        if run.slab.density > 0:
            session.tell(f"ice slab: faces at z {run.slab.z_lo:.1f} and {run.slab.z_hi:.1f}, "
                         f"ends at x {run.slab.x_lo:.1f} and {run.slab.x_hi:.1f} (voxels from "
                         f"the centre)")
    if not settings.halves:
        del views
    log.info("configuration: %s", run.config.to_dict())

    # What the state's ModelGeometry records besides what the run knows of itself.
    state_geometry = {"pixel_size_A": series.pixel_size_A, "source": str(series.source),
                      "contrast": source.contrast}
    if not source.in_memory and output is not None:
        state_geometry["run"] = RunRecord(source, target, voxel_size, settings.halves).to_dict()
    saved = {"iteration": None}

    def save(r) -> None:
        try:
            r.save_state(state_path, checksum, state_geometry)
            session.write_sidecar(state_path, {
                "what": "Gaussian model state", "iteration": r.iteration,
                "iterations": r.config.iterations, "n_gaussians": r.params.n,
                "input_checksum": checksum, "shape_zyx": list(shape)})
        except OSError as exc:
            kept = (f"the previous state (iteration {saved['iteration']}) is kept"
                    if saved["iteration"] is not None else "no state was saved")
            raise RunFailure(f"cannot save the state to {state_path} ({os_reason(exc)}); "
                             f"{kept}") from exc
        saved["iteration"] = r.iteration
        log.debug("state saved at iteration %d", r.iteration)

    start = time.perf_counter()
    checkpoint.fit(run, session, save=save if state_path is not None else None,
                   save_every=settings.save_every, state_path=state_path, on_step=on_step)
    seconds = time.perf_counter() - start
    log.info("fitted %d iterations in %.1f s", run.iteration, seconds)
    validation = run.validation_report()
    _report_validation(validation, session)
    factor = 1.0 if voxel_size is None else voxel_size / pixel
    volume = run.tomogram(voxel_size=factor, shape_zyx=out_shape)
    check_finite(volume, series.source)
    volume = relative_to_mean(volume)
    _, ny, nx = series.data.shape
    origin = mrc_origin(out_shape, pixel * factor, (shape[0] * pixel, ny * pixel, nx * pixel))
    if settings.halves:
        validation.update(_write_halves(session, run, views, series, half_outputs or
                                        [None, None], factor, out_shape, pixel,
                                        source.contrast, target.output_contrast, force,
                                        origin))
    info = {"n_views": series.n_tilts, "binning": source.binning, "n_gaussians": run.params.n,
            "iterations": run.iteration,
            "final_loss": run.losses[-1] if run.losses else None,
            "state": None if state_path is None else str(state_path),
            "input_checksum": checksum, "validation": validation}
    if run.alignment is not None:
        info["alignment"] = write_alignment(session, run.alignment, run.tilts_deg, output,
                                            source, force, series, header.n_raw, mode=mode)
    else:
        info["alignment"] = not_refined(mode, None if mode == "off" else why_not_refined)
    if output is not None:
        try:
            write_tomogram(session, output, volume, pixel * factor, source.contrast,
                           target.output_contrast, force, f"gaussians {run.params.n}", info,
                           origin)
        except OSError as exc:
            if state_path is None:
                raise RunFailure(f"cannot write {output} ({os_reason(exc)}); the fitted model "
                                 "was not saved (no state file)") from exc
            raise RunFailure(f"cannot write {output} ({os_reason(exc)}); the fitted model is "
                             f"saved in {state_path}: make room, then rerun the same command "
                             f"with --resume {state_path} to write the tomogram") from exc
    return ReconstructResult(volume=volume, voxel_size_A=pixel * factor, origin_A=origin,
                             output=output, seconds=seconds, info=info, run=run,
                             state=state_path, validation=validation, halves=half_outputs)
