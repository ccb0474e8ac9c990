"""The Python API: what the commands do, as functions.

Each function is the command of the same name with its options as keyword arguments, and
goes through the same pipeline (:mod:`taichi_etgs.pipeline`): the same checks, the same
tomogram (written with its provenance sidecar when ``output`` is given), and a result
object instead of printed lines. They are available from the package itself::

    import taichi_etgs

    tomo = taichi_etgs.reconstruct("TS_01.mrc", "TS_01.tlt", thickness=300, binning=4,
                                   output="TS_01_gs.mrc")
    tomo.volume            # (z, y, x) float32, positive density
    quick = taichi_etgs.wbp(images, angles_deg, thickness=64)   # arrays work too

A tilt series is given as a stack file with its angles file (``angles=None``: the
stack's sibling ``.tlt``/``.rawtlt``/``.mdoc``), as images ``[n, ny, nx]`` with their
angles in degrees, or as a :class:`~taichi_etgs.io.TiltSeries`. Messages go to
logging (the ``taichi_etgs`` logger) and warnings are Python warnings. ``arch`` and
``threads`` start Taichi as ``--arch``/``--threads`` do; ``arch=None`` keeps the running
Taichi (or starts ``auto``). Importing :mod:`taichi_etgs` imports none of this until
one of the functions is used.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

__all__ = ["batch", "evaluate", "reconstruct", "simulate", "sirt", "wbp"]


def _source(stack, angles, pixel_size, contrast, read: dict):
    from .io import TiltSeries
    from .pipeline.inputs import StackSource

    if isinstance(stack, (str, PathLike)):
        return StackSource(stack, angles=angles, pixel_size=pixel_size, contrast=contrast,
                           **read)
    erase = bool(read.get("erase_outliers", True))
    if isinstance(stack, TiltSeries):
        return StackSource(stack, contrast=contrast, erase_outliers=erase)
    if angles is None:
        from .errors import InputError

        raise InputError("images given as an array need their tilt angles (degrees)")
    return StackSource.from_arrays(stack, angles, pixel_size or 0.0, contrast,
                                   erase_outliers=erase)


def _session(command: str, parameters: dict, arch, threads):
    from .pipeline.session import Session

    return Session.for_python(command, parameters, arch=arch, threads=threads)


def _target(thickness, output, width, output_contrast, force):
    from .pipeline.tomograms import VolumeTarget

    return VolumeTarget(thickness, output, width=width, output_contrast=output_contrast,
                        force=force)


def _ctf(defocus, voltage_kV, cs_mm, amplitude_contrast):
    from .pipeline.ctf import CtfSettings

    return CtfSettings(defocus, voltage_kV, cs_mm, amplitude_contrast)


def _dose(dose, dose_per_tilt, tilt_order, tilt_start, tilt_group):
    from .pipeline.dose import DoseSettings

    return DoseSettings(dose, dose_per_tilt, tilt_order, tilt_start, tilt_group)


def _slab_runner(workers: int | None, scheduler: str | None):
    """``--workers`` / ``--scheduler``: a slabbed run's slabs as Dask tasks (None: in
    this process)."""
    if workers is None and scheduler is None:
        return None
    from .batch.slab_tasks import SlabTasks

    return SlabTasks(workers, scheduler)


def wbp(stack, angles=None, *, thickness: int, output=None, width: int | None = None,
        binning: int = 1, contrast: str = "dark", output_contrast: str = "input",
        pixel_size: float | None = None, radial: tuple[float, float] = (0.35, 0.035),
        fake_sirt: int = 0, defocus=None, voltage_kV: float = 300.0, cs_mm: float = 2.7,
        amplitude_contrast: float = 0.07, dose=None, dose_per_tilt: float | None = None,
        tilt_order: str | None = None, tilt_start: float | None = None, tilt_group: int = 2,
        slab_rows: int | None = None, workers: int | None = None,
        scheduler: str | None = None, refine_alignment: bool = False, force: bool = False,
        arch: str | None = None, threads: int | None = None, **read: Any):
    """Weighted back-projection (``taichi-etgs wbp``).

    stack, angles: the tilt series (see the module docstring).
    thickness, width: the tomogram's NZ and NX in (binned) voxels.
    output: the MRC to write, or OME-Zarr for a name ending in ``.zarr`` (None: returned
        only).
    binning, contrast, output_contrast, pixel_size, force: as the command's options.
    radial, fake_sirt: the filter (IMOD's radial cutoff and falloff; FakeSIRTiterations).
    defocus, voltage_kV, cs_mm, amplitude_contrast: the CTF (``--defocus``: micrometres of
        underfocus or a defocus file; None: none): the views are phase-flipped first.
    dose, dose_per_tilt, tilt_order, tilt_start, tilt_group: the views' exposure
        (``--dose``: an .mdoc or a DOSE PRIOR_DOSE file; or e/A^2 per view with the
        acquisition order, :class:`~taichi_etgs.pipeline.dose.DoseSettings`): the views
        are exposure-filtered.
    slab_rows: reconstruct this many rows along Y at a time (``--slab-rows``; None: only
        when the whole does not fit in memory); the result's ``volume`` is then None when
        an output is written (read the file).
    workers, scheduler: run the slabs as Dask tasks on this many workers of an embedded
        cluster, or on the cluster of this scheduler address (``--workers``,
        ``--scheduler``; docs/large.md).
    refine_alignment: refine the views' residual shifts first and write them as
        ``<output stem>.xf`` / ``.tlt`` (``--refine-alignment``; not with slabs).
    read: more reading options (``xf``, ``aln``, ``apply_aln``, ``aligned``, ``mdoc``,
        ``exclude_views``; ``erase_outliers=False`` as ``--keep-outliers``, arrays too).

    Returns a :class:`~taichi_etgs.pipeline.tomograms.TomogramResult` (``.volume``).
    """
    from .pipeline.classical import run_wbp

    session = _session("wbp", locals(), arch, threads)
    return run_wbp(_source(stack, angles, pixel_size, contrast, dict(read, binning=binning)),
                   _target(thickness, output, width, output_contrast, force),
                   radial=radial, fake_sirt=fake_sirt,
                   ctf=_ctf(defocus, voltage_kV, cs_mm, amplitude_contrast),
                   dose=_dose(dose, dose_per_tilt, tilt_order, tilt_start, tilt_group),
                   slab_rows=slab_rows, session=session,
                   slab_runner=_slab_runner(workers, scheduler),
                   refine_alignment=refine_alignment)


def sirt(stack, angles=None, *, thickness: int, output=None, iterations: int = 20,
         relaxation: float = 1.0, positivity: bool = False, width: int | None = None,
         binning: int = 1, contrast: str = "dark", output_contrast: str = "input",
         pixel_size: float | None = None, defocus=None, voltage_kV: float = 300.0,
         cs_mm: float = 2.7, amplitude_contrast: float = 0.07, dose=None,
         dose_per_tilt: float | None = None, tilt_order: str | None = None,
         tilt_start: float | None = None, tilt_group: int = 2, slab_rows: int | None = None,
         workers: int | None = None, scheduler: str | None = None,
         refine_alignment: bool = False, force: bool = False, arch: str | None = None,
         threads: int | None = None, **read: Any):
    """SIRT (``taichi-etgs sirt``); arguments as :func:`wbp`, and ``iterations``,
    ``relaxation`` (in (0, 2)) and ``positivity``.

    Returns a :class:`~taichi_etgs.pipeline.tomograms.TomogramResult`.
    """
    from .pipeline.classical import run_sirt

    session = _session("sirt", locals(), arch, threads)
    return run_sirt(_source(stack, angles, pixel_size, contrast, dict(read, binning=binning)),
                    _target(thickness, output, width, output_contrast, force),
                    iterations=iterations, relaxation=relaxation, positivity=positivity,
                    ctf=_ctf(defocus, voltage_kV, cs_mm, amplitude_contrast),
                    dose=_dose(dose, dose_per_tilt, tilt_order, tilt_start, tilt_group),
                    slab_rows=slab_rows, session=session,
                    slab_runner=_slab_runner(workers, scheduler),
                    refine_alignment=refine_alignment)


def reconstruct(stack, angles=None, *, thickness: int, output=None,
                width: int | None = None, binning: int = 1, contrast: str = "dark",
                output_contrast: str = "input", pixel_size: float | None = None,
                force: bool = False, arch: str | None = None, threads: int | None = None,
                workers: int | None = None, scheduler: str | None = None,
                read: dict | None = None, refine_alignment: bool | None = None,
                **settings: Any):
    """The Gaussian reconstruction (``taichi-etgs reconstruct``).

    stack, angles, thickness, output, width, binning, contrast, output_contrast,
    pixel_size, force, arch, threads, workers, scheduler: as :func:`wbp`.
    read: more reading options (``xf``, ``aln``, ``apply_aln``, ``aligned``, ``mdoc``,
        ``exclude_views``; ``erase_outliers=False`` as ``--keep-outliers``, arrays too).
    refine_alignment: refine the views' residual shifts and write them as
        ``<output stem>.xf`` / ``.tlt``. None (auto, as the command): in a whole-volume
        run, with views found aligned within the noise used exactly as given, and the
        files written only when a view moved and where they replace nothing of the
        input's (nor, without ``force``, an existing file); off in slabs, on a resume of
        a run that did not refine, and from a model seed. True: always (refused with
        slabs). False: never. The sidecar's ``alignment`` says what was done.
    settings: :class:`~taichi_etgs.pipeline.gaussian.GaussianSettings` fields:
        ``iterations``, ``max_gaussians``, ``views_per_step``, ``init``, ``tilt_weight``,
        ``seed``, ``heldout_every``, ``defocus_um`` (micrometres, or a defocus file; and
        ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``), ``dose`` (an .mdoc or DOSE
        PRIOR_DOSE file) or ``dose_per_tilt`` with ``tilt_order``, ``tilt_start``,
        ``tilt_group`` (the views' exposure filter in the model), ``voxel_size``, ``halves``,
        ``state`` (default with an output: OUTPUT.state.h5), ``save_every``, ``resume``,
        ``slab_rows`` (``--slab-rows``: slabs along Y fitted independently and blended;
        ``.volume`` None and ``.run`` None then), or ``config`` (a whole
        :class:`~taichi_etgs.gaussian.fit.ReconstructConfig`).

    Returns a :class:`~taichi_etgs.pipeline.gaussian.ReconstructResult` (``.volume``,
    ``.run`` with the model, ``.validation``).
    """
    from .pipeline.gaussian import GaussianSettings, run_reconstruct

    session = _session("reconstruct", locals(), arch, threads)
    return run_reconstruct(
        _source(stack, angles, pixel_size, contrast, dict(read or {}, binning=binning)),
        _target(thickness, output, width, output_contrast, force),
        GaussianSettings(**settings, refine_alignment=refine_alignment), session=session,
        slab_runner=_slab_runner(workers, scheduler))


def simulate(output_dir=None, *, force: bool = False, arch: str | None = None,
             threads: int | None = None, **config: Any):
    """Simulate a tilt series with its ground truth (``taichi-etgs simulate``).

    output_dir: where to write ``tilts.mrc``, ``tilts.tlt``, ``ground_truth.mrc`` and
        ``simulation.json`` (None: nothing is written).
    config: :class:`~taichi_etgs.simulation.simulate.SimulationConfig` fields (``shape_zyx``,
        ``pixel_size_A``, ``tilt_min_deg``, ``noise``, ``snr``, ``seed``, ...).

    Returns a :class:`~taichi_etgs.pipeline.simulation.Simulated` (``.result.tilts``,
    ``.result.tilts_deg``, ``.result.ground_truth``, ``.files``).
    """
    from .pipeline.simulation import run_simulate
    from .simulation.simulate import SimulationConfig

    session = _session("simulate", locals(), arch, threads)
    return run_simulate(SimulationConfig(**config), output_dir, force=force, session=session)


def evaluate(recon, reference=None, *, half2=None, voxel_size: float | None = None,
             max_tilt: float | None = None, angles=None, json_path=None, figure_path=None,
             force: bool = False):
    """Score a tomogram (``taichi-etgs evaluate``): against a reference (PSNR, SSIM, FSC,
    missing-wedge FSC) or, with ``half2``, a half-map FSC. Volumes are MRC files or
    arrays (z, y, x).

    Returns a :class:`~taichi_etgs.pipeline.simulation.Evaluation` (``.metrics``).
    """
    from .pipeline.simulation import run_evaluate

    session = _session("evaluate", locals(), None, None)
    return run_evaluate(recon, reference, half2=half2, voxel_size=voxel_size,
                        max_tilt=max_tilt, angles=angles, json_path=json_path,
                        figure_path=figure_path, force=force, session=session)


def batch(inputs, *, method: str, output_dir, thickness: int | None = None,
          width: int | None = None, binning: int = 1, contrast: str = "dark",
          output_contrast: str = "input", pixel_size: float | None = None,
          apply_aln: bool = False, aligned: bool = False, exclude_views: str | None = None,
          workers: int | None = None, threads: int | None = None, scheduler: str | None = None,
          retries: int = 2, force: bool = False, arch: str = "auto", **options: Any):
    """Many tilt series, one Dask task each (``taichi-etgs batch``; docs/batch.md).

    inputs: folders, globs, stacks or tables (CSV, STAR), as the command's INPUT.
    method: "wbp", "sirt" or "reconstruct". output_dir: the folder for the tomograms
        (``<stem>.mrc`` with sidecars) and ``batch_summary.csv``/``.json``.
    thickness, width, binning, contrast, output_contrast, pixel_size, apply_aln, aligned,
        exclude_views, force: as the command's options (``thickness`` for series whose
        table gives none).
    workers, threads, scheduler, retries, arch: the cluster (an embedded one sized to the
        machine, or the Dask scheduler at ``scheduler``).
    options: the method's own (``radial``, ``fake_sirt``; ``iterations``, ``relaxation``,
        ``positivity``; ``max_gaussians``, ...; ``defocus`` as a number, ``voltage_kV``,
        ``dose_per_tilt``, ...: :data:`taichi_etgs.batch.tasks.METHOD_OPTIONS`).

    Returns a :class:`~taichi_etgs.batch.runner.BatchResult` (``.outcomes``, ``.ok``); a
    series that fails does not raise: its outcome says why. Called as
    ``taichi_etgs.api.batch``: ``taichi_etgs.batch`` is the subpackage that runs it.
    """
    from .batch import BatchSettings, find_series, run_batch

    session = _session("batch", locals(), None, None)
    settings = BatchSettings(method=method, thickness=thickness, width=width,
                             output_contrast=output_contrast, binning=binning,
                             contrast=contrast, pixel_size=pixel_size, apply_aln=apply_aln,
                             aligned=aligned, exclude_views=exclude_views, options=options,
                             force=force, arch=arch)
    return run_batch(find_series(list(inputs)), settings, output_dir, workers=workers,
                     threads=threads, scheduler=scheduler, retries=retries, session=session)
