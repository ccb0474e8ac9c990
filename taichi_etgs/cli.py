"""The ``taichi-etgs`` command line: parse options, call the library, report.

Heavy modules (Taichi, the kernels) are imported inside commands so that ``--help`` is fast.

Messages: results go to stdout, progress, warnings and errors to stderr; ``-v`` adds
detail (what was read, the settings, memory estimates, timings) through Python's
``logging`` (the ``taichi_etgs`` logger), and ``--log FILE`` appends everything, with
timestamps, to FILE. Every MRC, state or model file written gets a JSON sidecar
(``<output>.json``, see :mod:`taichi_etgs.provenance`).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import click
import numpy as np

from . import __version__
from .errors import InputError

__all__ = ["main", "cli"]

log = logging.getLogger("taichi_etgs.cli")
_PACKAGE_LOGGER = "taichi_etgs"
# Commands in the order a newcomer meets them (click would sort them alphabetically).
_COMMAND_ORDER = ("demo", "info", "wbp", "sirt", "reconstruct", "project", "voxelize",
                  "gaussianize", "export", "simulate", "evaluate")


class RunFailure(Exception):
    """A run that could not finish for a reason outside the input (a full disk): the CLI
    prints ``error: <message>`` and exits with 1."""


# -- logging --


class _ConsoleHandler(logging.Handler):
    """Log records on stderr, resolved at each record (test captures, pipes) and written
    between progress-bar redraws."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never break a run
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


def _not_echoed(record: logging.LogRecord) -> bool:
    # Messages already printed by _echo go to the log file only.
    return not getattr(record, "echoed", False)


def _close_logging() -> None:
    """Remove and close the handlers the CLI installed (a file handler holds the file)."""
    logger = logging.getLogger(_PACKAGE_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_taichi_etgs_cli", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.NOTSET)


def _setup_logging(verbosity: int, log_file: Path | None) -> None:
    """stderr: warnings (-v: info, -vv: debug); ``log_file``: everything, appended."""
    _close_logging()
    logger = logging.getLogger(_PACKAGE_LOGGER)
    logger.setLevel(logging.DEBUG)
    console = _ConsoleHandler(level=(logging.WARNING, logging.INFO)[verbosity]
                              if verbosity < 2 else logging.DEBUG)
    console.addFilter(_not_echoed)
    console.setFormatter(_ConsoleFormatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        try:
            file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot be opened for the log ({exc.strerror or exc})",
                             log_file) from None
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(message)s"))
        handlers.append(file_handler)
    for handler in handlers:
        handler._taichi_etgs_cli = True
        logger.addHandler(handler)


def _echo(message: str = "", err: bool = False, level: int = logging.INFO, bar=None) -> None:
    """Print a message (stdout, or stderr with ``err``; above a progress ``bar`` if given)
    and append it to the ``--log`` file."""
    if bar is not None:
        bar.write(message, file=sys.stderr if err else sys.stdout)
    else:
        click.echo(message, err=err)
    log.log(level, message, extra={"echoed": True})


def _warn(message: str) -> None:
    _echo(f"warning: {message}", err=True, level=logging.WARNING)


# -- the group --


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(self.commands)
        return ([n for n in _COMMAND_ORDER if n in names]
                + [n for n in names if n not in _COMMAND_ORDER])


_VERBOSE_HELP = ("More detail on stderr: what was read, the settings, memory estimates and "
                 "timings (-vv: debugging detail).")
_LOG_HELP = "Also append every message, with timestamps, to FILE (kept across runs)."


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(__version__, prog_name="taichi-etgs")
@click.option("-v", "--verbose", count=True, help=_VERBOSE_HELP)
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", default=None, help=_LOG_HELP)
@click.pass_context
def cli(ctx: click.Context, verbose: int, log_file: Path | None) -> None:
    """Cryo-ET tomograms from a tilt series: adaptive 3D Gaussians, WBP and SIRT.

    \b
    Start here:
      taichi-etgs demo                  the whole job on a built-in example, no files needed
      taichi-etgs info TS_01.mrc        what a tilt series holds: check this first
      taichi-etgs wbp TS_01.mrc --binning 4 --thickness 300 -o TS_01_wbp.mrc
      taichi-etgs reconstruct TS_01.mrc --binning 4 --thickness 300 -o TS_01_gs.mrc

    Tilt angles come from --angles or a file next to the stack (TS_01.tlt, .rawtlt,
    .mdoc). Tomograms are MRC files (Z, Y, X): XY slices are the top view, the tilt axis
    is Y. Every file written gets a sidecar OUTPUT.json with the command line, version
    and parameters that made it. -v and --log also work after the command name.
    Each command has its own --help.
    """
    obj = ctx.ensure_object(dict)
    obj["verbose"] = verbose
    obj["log"] = log_file


def _command(func):
    """Options and set-up shared by every subcommand: -v/--log (also accepted after the
    command name), logging, and the provenance of what the command writes."""

    @click.option("-v", "--verbose", "cmd_verbose", count=True, help=_VERBOSE_HELP)
    @click.option("--log", "cmd_log", type=click.Path(dir_okay=False, path_type=Path),
                  metavar="FILE", default=None, help=_LOG_HELP)
    @functools.wraps(func)
    def wrapper(*args, cmd_verbose: int = 0, cmd_log: Path | None = None, **kwargs):
        from .provenance import Provenance

        ctx = click.get_current_context()
        obj = ctx.find_object(dict)
        if obj is None:
            obj = ctx.ensure_object(dict)
        verbosity = max(int(obj.get("verbose") or 0), cmd_verbose)
        log_file = cmd_log or obj.get("log")
        _setup_logging(verbosity, log_file)
        command_line = obj.get("command_line") or ["taichi-etgs", *sys.argv[1:]]
        # In the order the command declares them (ctx.params follows the command line).
        names = [p.name for p in ctx.command.params if p.name in ctx.params]
        params = {k: ctx.params[k] for k in names if k not in ("cmd_verbose", "cmd_log")}
        params.update(verbose=verbosity, log=log_file)
        obj["provenance"] = Provenance(command=ctx.info_name or func.__name__,
                                       command_line=list(command_line),
                                       parameters=params, version=__version__)
        log.info("taichi-etgs %s: %s", __version__, shlex.join(command_line))
        log.info("settings: %s", ", ".join(f"{k}={v}" for k, v in params.items()))
        start = time.perf_counter()
        result = func(*args, **kwargs)
        log.info("%s done in %.1f s", ctx.info_name, time.perf_counter() - start)
        return result

    # click lists options in decoration order, reversed: put -v and --log last, by --help.
    params = wrapper.__click_params__
    params[:] = params[-2:] + params[:-2]
    return wrapper


def _provenance():
    """The current command's :class:`~taichi_etgs.provenance.Provenance`."""
    obj = click.get_current_context().find_object(dict)
    return obj["provenance"]


def _write_sidecar(path: Path, result: dict) -> None:
    sidecar = _provenance().write(path, result)
    log.info("wrote %s", sidecar)


# -- shared options --


_STACK_META = "taichi_etgs.stack_options"
# Largest angle (degrees) between an .mdoc's tilt axis and the image Y axis (or -Y) at
# which a stack is reconstructed as it is.
_AXIS_TOLERANCE_DEG = 5.0


def _stack_options(func):
    """Options that say how to read a tilt series (every command that takes a STACK).

    ``--aligned`` and ``--pixel-size`` are not passed to the command: :func:`_load` reads
    them from the context.
    """

    @functools.wraps(func)
    def wrapper(*args, aligned: bool = False, pixel_size: float | None = None, **kwargs):
        click.get_current_context().meta[_STACK_META] = {"aligned": aligned,
                                                         "pixel_size": pixel_size}
        return func(*args, **kwargs)

    decorators = [
        click.argument("stack", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--angles", "angles", type=click.Path(dir_okay=False, path_type=Path),
                     help="Tilt angles: .tlt/.rawtlt (one per line, degrees), SerialEM .mdoc "
                          "or AreTomo .aln. Default: STACK's sibling .tlt/.rawtlt/.mdoc. "
                          "Not with --aln, which gives the angles itself."),
        click.option("--xf", "xf", type=click.Path(dir_okay=False, path_type=Path),
                     help="IMOD .xf transforms (one line per raw view) applied on load."),
        click.option("--aln", "aln", type=click.Path(dir_okay=False, path_type=Path),
                     help="AreTomo .aln: tilt angles and the sections it kept."),
        click.option("--apply-aln", is_flag=True,
                     help="Also apply the .aln's rotation (ROT) and shifts (TX, TY): for a raw, "
                          "unaligned stack."),
        click.option("--aligned", is_flag=True,
                     help="STACK is aligned (tilt axis along Y) although its SerialEM .mdoc "
                          "gives a tilt axis away from Y: reconstruct it as it is."),
        click.option("--exclude-views", default=None, metavar="LIST",
                     help="Views to leave out, 0-based indices into STACK: '0,1,40' or '0-2,40'."),
        click.option("--binning", type=click.IntRange(min=1), default=1, show_default=True,
                     metavar="B",
                     help="Average-bin the images by this factor in X and Y on load "
                          "(reconstruct binned first: 10-20 A voxels)."),
        click.option("--pixel-size", "pixel_size", metavar="A", default=None,
                     type=click.FloatRange(min=0, min_open=True, max=1e6),
                     help="Pixel size of STACK in A, before --binning [default: the MRC "
                          "header's, else the .mdoc's PixelSpacing]."),
        click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
                     show_default=True,
                     help="How density looks in the images: dark (raw cryo-EM) or bright."),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


def _stack_meta() -> dict:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_STACK_META, {}) if ctx is not None else {}


def _check_alignment(stack: Path, angles, xf, aln, refuse: bool) -> None:
    """Refuse (or, for ``info``, warn about) a stack whose SerialEM .mdoc puts the tilt
    axis away from Y when no alignment (--xf, --aln) is given and --aligned is not set."""
    from .io import read_mdoc
    from .io.tilt_series import stack_mdoc

    if xf is not None or aln is not None or _stack_meta().get("aligned"):
        return
    if stack.suffix.lower() == ".ali":  # IMOD's aligned stack
        return
    mdoc = stack_mdoc(stack, angles)
    if mdoc is None:
        return
    try:
        axis = read_mdoc(mdoc)["tilt_axis_deg"]
    except InputError:
        if angles is not None and _same_file(mdoc, angles):
            raise
        return  # a sibling .mdoc not used for the angles: nothing to learn from it
    if axis is None:
        return
    off = abs((axis + 90.0) % 180.0 - 90.0)  # from the Y axis or -Y
    if off <= _AXIS_TOLERANCE_DEG:
        return
    message = (f"its SerialEM {mdoc.name} puts the tilt axis at {axis:g} degrees, "
               f"{off:.1f} degrees from the image Y axis: the stack looks unaligned and "
               f"would reconstruct as a blur; "
               f"align it first and pass the alignment (IMOD: --xf {stack.stem}.xf; AreTomo: "
               f"--aln {stack.stem}.aln --apply-aln), or pass --aligned if the tilt axis is "
               f"already along Y")
    if refuse:
        raise InputError(message, stack)
    _warn(f"{stack}: {message}")


def _volume_options(func):
    decorators = [
        click.option("-o", "--output", required=True, type=click.Path(dir_okay=False,
                     path_type=Path),
                     help="Tomogram to write (MRC, Z Y X), with its sidecar OUTPUT.json."),
        click.option("--thickness", required=True, type=click.IntRange(min=1), metavar="NZ",
                     help="Tomogram thickness NZ in (binned) voxels."),
        click.option("--width", type=click.IntRange(min=1), default=None, metavar="NX",
                     help="Tomogram width NX in voxels (default: the image width)."),
        click.option("--output-contrast", type=click.Choice(["input", "bright", "dark"]),
                     default="input", show_default=True,
                     help="Polarity of the tomogram: like the input images, or as asked."),
        click.option("--force", is_flag=True,
                     help="Overwrite the output if it exists; also accept tilt angles that "
                          "look like radians (all under 2 degrees) as degrees."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _runtime_options(func):
    @click.option("--arch", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                  show_default=True, help="Compute device: auto picks CUDA when a GPU is usable.")
    @click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                  help="CPU threads (default: all cores).")
    @functools.wraps(func)
    def wrapper(*args, arch: str, threads: int | None, **kwargs):
        from . import runtime

        start = time.perf_counter()
        config = runtime.init(arch, threads=threads)
        _echo(f"compute: {config.arch}", err=True)
        log.info("started Taichi (%s, %s threads) in %.1f s", config.arch,
                 config.threads or "all", time.perf_counter() - start)
        return func(*args, **kwargs)

    return wrapper


def _echo_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    messages = []
    for w in caught:
        messages.append(str(w.message))
        _warn(str(w.message))
    return messages


# -- reading the input --


class _StackHeader:
    """What the stack's header says, before anything is loaded."""

    def __init__(self, n_raw: int, ny: int, nx: int, dtype: np.dtype, pixel_A: float,
                 binning: int) -> None:
        self.n_raw, self.ny_raw, self.nx_raw = n_raw, ny, nx
        self.dtype, self.pixel_A, self.binning = dtype, pixel_A, binning
        self.ny, self.nx = ny // binning, nx // binning


def _peek_stack(stack: Path, binning: int) -> _StackHeader:
    """The stack's sizes from its header (a memory map: nothing is read), binned.

    Raises the reader's InputError for a file that is not a readable stack; its warnings
    come again, once, when the stack is loaded.
    """
    from .io import read_stack
    from .io.binning import check_binning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, pixel = read_stack(stack)
    n_raw, ny, nx = data.shape
    b = check_binning(binning, ny, nx)
    return _StackHeader(n_raw, ny, nx, data.dtype, pixel, b)


def _load(stack: Path, angles, xf, aln, apply_aln, exclude_views, binning,
          force: bool | None = None):
    """Load the tilt series, print its warnings, log what was read; returns
    ``(series, warning messages)``.

    ``force``: None only reports (info); False refuses angles that look like radians,
    True uses them with a warning.
    """
    from .io import load_tilt_series
    from .io.angles import AngleWarning, looks_like_radians

    if angles is not None and aln is not None and not _same_file(angles, aln):
        raise InputError(f"--angles {angles} and --aln {aln} both give tilt angles; pass "
                         f"only one: --aln alone uses the .aln's TILT column (AreTomo's "
                         f"refined angles and the views it kept), --angles alone uses that "
                         f"file's angles without the .aln")
    _check_alignment(stack, angles, xf, aln, refuse=force is not None)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = load_tilt_series(stack, angles, xf_path=xf, aln_path=aln, apply_aln=apply_aln,
                                  exclude_views=exclude_views, binning=binning)
    if force is False and looks_like_radians(series.tilts_deg):
        _echo_warnings([w for w in caught if not (issubclass(w.category, AngleWarning)
                                                  and "radians" in str(w.message))])
        largest = float(np.max(np.abs(series.tilts_deg)))
        raise InputError(f"the tilt angles look like radians (the largest |angle| is "
                         f"{largest:.3g}, but degrees are expected); give them in degrees "
                         f"(radians x 57.2958), or pass --force to use them as degrees",
                         series.angles_source or None)
    messages = _echo_warnings(caught)
    pixel_option = _stack_meta().get("pixel_size")
    if pixel_option is not None:
        given = series.pixel_size_A / binning
        if series.pixel_size_A > 0 and abs(given - pixel_option) > 1e-3 * pixel_option:
            _warn(f"{series.source}: the {series.pixel_size_source or 'file'} says {given:g} A "
                  f"per pixel; using --pixel-size {pixel_option:g}")
        series.pixel_size_A = float(pixel_option) * binning
        series.pixel_size_source = "--pixel-size"
    n, ny, nx = series.data.shape
    tilts = np.asarray(series.tilts_deg)
    log.info("read %s in %.1f s: %d views of %d x %d pixels (X x Y, binning %d), pixel size "
             "%s, tilts %.2f to %.2f deg from %s, views kept %s", series.source,
             time.perf_counter() - start, n, nx, ny, binning,
             f"{series.pixel_size_A:g} A" if series.pixel_size_A > 0 else "unknown",
             float(tilts.min()), float(tilts.max()), series.angles_source or "-",
             _ranges(series.kept_views))
    prov = _provenance()
    prov.add_input("stack", stack)
    for role, path in (("angles", series.angles_source or angles), ("xf", xf), ("aln", aln)):
        if path:
            prov.add_input(role, path)
    return series, messages


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a) == Path(b)


def _probe_writable(folder: Path, path: Path) -> None:
    """Create and remove a file in ``folder``: the only reliable writability test (root,
    read-only mounts, network file systems)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".taichi-etgs-probe-", dir=folder)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            why = "you have no permission to create files there"
        elif exc.errno == errno.EROFS:
            why = "it is on a read-only file system"
        elif exc.errno == errno.ENOSPC:
            why = "the disk is full"
        elif exc.errno == errno.ENOENT:  # the folder exists: a virtual one, such as /proc
            why = "it does not accept new files (a system or virtual folder?)"
        else:
            why = f"creating a file there fails: {exc.strerror or exc}"
        raise InputError(f"cannot be written in the folder {folder}: {why}", path) from None
    os.close(fd)
    os.unlink(name)


def _check_output(path: Path, force: bool) -> None:
    """Refuse before any work is done if the output cannot be written."""
    if path.is_dir():
        raise InputError("is a folder; give a file name for the output", path)
    if path.exists() and not force:
        raise InputError("exists; use --force to overwrite", path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot be written: the folder {folder} does not exist", path)
    _probe_writable(folder, path)


def _volume_shape(ny: int, nx: int, thickness: int, width: int | None,
                  source) -> tuple[int, int, int]:
    """The tomogram's (z, y, x) from the binned image size and the options."""
    if width is not None and width > nx:
        raise InputError(f"the stack is {nx} pixels wide (after binning) but --width asks for "
                         f"{width}; reconstruct at most {nx} wide or bin less", source)
    if thickness > 4 * nx:
        raise InputError(f"--thickness {thickness} is over 4x the image width {nx}: check the "
                         "binning (thickness is in binned voxels)")
    nx_out = nx if width is None else width
    return (thickness, ny, nx_out)


def _warn_shape(shape: tuple[int, int, int]) -> None:
    thickness, _, width = shape
    if thickness > width:
        _warn(f"--thickness {thickness} is larger than the tomogram width {width}: specimens "
              "are slabs thinner than they are wide, so check the binning (thickness is in "
              "binned voxels); reconstructing anyway")


def _pixel_size(series) -> float:
    """The stack's pixel size in A; 1.0 when the files give none (info warns about it)."""
    return series.pixel_size_A if series.pixel_size_A > 0 else 1.0


def _run_size(method: str, n_tilts: int, ny: int, nx: int, shape, binning: int, **extra):
    from .resources import RunSize

    return RunSize(method=method, n_tilts=n_tilts, ny=ny, nx=nx, thickness=shape[0],
                   width=shape[2], binning=binning, **extra)


def _check_resources(size, folders: list[Path], final: bool, advice: str | None = None) -> None:
    """Refuse a run that will not fit (memory, disk); log the estimate on the final check."""
    from .resources import available_memory_bytes, check_resources, format_bytes

    estimate = check_resources(size, [f if str(f) else Path(".") for f in folders],
                               advice=advice)
    if final:
        available = available_memory_bytes()
        log.info("memory: this run needs %s; %s available", estimate.describe(),
                 format_bytes(available) if available is not None else "unknown")


def _views(series, contrast: str) -> np.ndarray:
    """Positive-density views (:func:`~taichi_etgs.preprocess.density_views`), refused
    when values overflow float32 once each view's mean is removed."""
    from .preprocess import density_views

    with np.errstate(over="ignore", invalid="ignore"):  # checked right below
        views = density_views(series.data, contrast)
    if not np.isfinite(views).all():
        raise InputError(f"pixel values up to {float(np.abs(series.data).max()):.3g} overflow "
                         "32-bit floats once each view's mean is removed; rescale the stack "
                         "(e.g. IMOD's newstack -scale)", series.source)
    if not views.any():
        _refuse_no_signal(series)
    return views


def _refuse_no_signal(series) -> None:
    from .io.tilt_series import _only_denormals

    if _only_denormals(series.data, list(range(series.n_tilts))):
        # Taichi sets the CPU to flush denormals to zero: they would reconstruct as zero.
        raise InputError("holds only denormal values (magnitudes below 1.2e-38, which compute "
                         "as zero); rescale the stack (e.g. IMOD's newstack -scale)",
                         series.source)
    raise InputError("contains no signal: every view is constant", series.source)


def _density_views(series, contrast: str) -> tuple[np.ndarray, float]:
    """Positive-density views divided by their standard deviation, and that factor.

    Working at unit scale keeps float32 arithmetic away from overflow (values near 1e30)
    and from underflow (values down to float32's smallest normal numbers, 1e-38); the
    linear reconstructions are scaled back afterwards (:func:`_rescaled`).
    """
    views = _views(series, contrast)
    sum_sq = sum(float(np.square(v, dtype=np.float64).sum()) for v in views)
    scale = float(np.sqrt(sum_sq / max(views.size, 1)))
    if not (np.isfinite(scale) and scale > 0):
        _refuse_no_signal(series)
    for t in range(views.shape[0]):
        views[t] = views[t].astype(np.float64) / scale
    return views, scale


def _rescaled(volume: np.ndarray, scale: float, source) -> np.ndarray:
    """``volume * scale`` in float32, in place (no extra copy of a large volume), refused
    if anything is not finite."""
    volume = np.asarray(volume, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # checked right below
        volume *= np.float32(scale)
    _check_finite(volume, source)
    return volume


def _check_finite(volume: np.ndarray, source) -> None:
    for k in range(volume.shape[0]):
        if not np.isfinite(volume[k]).all():
            raise InputError(f"the reconstruction holds NaN or Inf values (first in section "
                             f"{k}), so nothing was written; check the input's values with "
                             f"`taichi-etgs info`", source)


def _write_tomogram(path: Path, volume, pixel: float, contrast: str, output_contrast: str,
                    force: bool, what: str, result: dict | None = None) -> None:
    from .io import write_volume
    from .preprocess import to_output_polarity

    _check_finite(volume, None)
    start = time.perf_counter()
    out = to_output_polarity(volume, contrast, output_contrast)
    write_volume(path, out, pixel, force=force, labels=_provenance().labels(what))
    nz, ny, nx = volume.shape
    polarity = contrast if output_contrast == "input" else output_contrast
    _write_sidecar(path, {"what": what, "shape_zyx": [nz, ny, nx],
                          "voxel_size_A": float(f"{pixel:.6g}"),
                          "contrast": polarity, **(result or {})})
    log.info("wrote %s in %.1f s", path, time.perf_counter() - start)
    _echo(f"wrote {path} ({nz} x {ny} x {nx} voxels, Z Y X; {pixel:g} A/voxel)")


def _prepare_classical(method: str, stack, angles, xf, aln, apply_aln, exclude_views, binning,
                       output, thickness, width, force):
    """Everything wbp and sirt do before computing: checks, resources, the loaded series."""
    _check_output(output, force)
    header = _peek_stack(stack, binning)
    shape = _volume_shape(header.ny, header.nx, thickness, width, stack)
    _check_resources(_run_size(method, header.n_raw, header.ny, header.nx, shape, binning),
                     [output.parent], final=False)
    series, _ = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning, force)
    _warn_shape(shape)
    max_tilt = float(np.max(np.abs(series.tilts_deg)))
    _check_resources(_run_size(method, series.n_tilts, *series.data.shape[1:], shape, binning,
                               max_tilt_deg=max_tilt), [output.parent], final=True)
    return series, shape


# -- commands: foundation (wbp, sirt, info, demo) --


@cli.command()
@_command
@_stack_options
@_volume_options
@click.option("--radial", default="0.35,0.035", show_default=True, metavar="CUTOFF,FALLOFF",
              help="IMOD radial filter: the ramp is flat to CUTOFF, then falls as a Gaussian "
                   "of width FALLOFF (both cycles/pixel, Nyquist = 0.5).")
@click.option("--fake-sirt", "fake_sirt", type=click.IntRange(min=0), default=0, metavar="N",
              show_default=True,
              help="Shape the filter like N SIRT iterations (IMOD's FakeSIRTiterations): "
                   "smoother, higher-contrast tomograms. 0 = plain weighted back-projection.")
@_runtime_options
def wbp(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast, output, thickness,
        width, output_contrast, force, radial, fake_sirt):
    """Weighted back-projection of STACK into a tomogram (fast; the classical baseline).

    STACK is an MRC tilt series (.mrc, .st, .ali; one view per section) with the tilt
    axis along Y: aligned (IMOD .ali) or aligned on load with --xf or --aln --apply-aln.

    Each view is filtered with the ramp times IMOD's radial low-pass, then smeared back
    through the volume. Seconds to minutes; sharp but noisy and streaky along the
    missing wedge. The memory it needs is checked before it starts (-v shows the estimate).

    \b
    Example:
      taichi-etgs wbp TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 -o TS_01_wbp.mrc
    """
    from .wbp import weighted_back_projection

    radial_pair = _parse_radial(radial)
    series, shape = _prepare_classical("wbp", stack, angles, xf, aln, apply_aln, exclude_views,
                                       binning, output, thickness, width, force)
    views, scale = _density_views(series, contrast)
    start = time.perf_counter()
    volume = weighted_back_projection(views, series.tilts_deg, shape[0], radial=radial_pair,
                                      fake_sirt_iterations=fake_sirt, width=shape[2])
    del views
    _echo(f"weighted back-projection: {time.perf_counter() - start:.1f} s", err=True)
    volume = _rescaled(volume, scale, series.source)
    _write_tomogram(output, volume, _pixel_size(series), contrast, output_contrast, force, "wbp",
                    {"n_views": series.n_tilts, "binning": binning})


def _parse_radial(text: str) -> tuple[float, float]:
    try:
        cutoff, falloff = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--radial {text!r}: expected CUTOFF,FALLOFF, e.g. 0.35,0.035") from None
    if not (np.isfinite(cutoff) and np.isfinite(falloff)):
        raise InputError(f"--radial {text!r}: CUTOFF and FALLOFF must be finite numbers")
    return cutoff, falloff


@cli.command()
@_command
@_stack_options
@_volume_options
@click.option("--iterations", type=click.IntRange(min=1), metavar="N", default=20,
              show_default=True,
              help="SIRT iterations: more sharpens detail and noise alike (10-30 is usual).")
@click.option("--relaxation", type=float, default=1.0, show_default=True,
              help="Step size lambda, in (0, 2).")
@click.option("--positivity", is_flag=True,
              help="Clamp negative density to zero each iteration (only meaningful when the "
                   "background is zero, e.g. isolated simulated specimens).")
@_runtime_options
def sirt(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast, output, thickness,
         width, output_contrast, force, iterations, relaxation, positivity):
    """SIRT reconstruction of STACK (row- and column-normalised, from zero).

    STACK is an MRC tilt series with the tilt axis along Y, as for wbp.

    Iterative: each iteration projects the volume, compares with the views and
    back-projects the difference. Smoother and higher in contrast than WBP, at
    about two WBPs per iteration. Shows a progress bar with the residual.

    \b
    Example:
      taichi-etgs sirt TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          --iterations 20 -o TS_01_sirt.mrc
    """
    from tqdm import tqdm

    from . import sirt as sirt_module

    if not 0.0 < relaxation < 2.0:
        raise InputError(f"--relaxation must be in (0, 2), got {relaxation}")
    series, shape = _prepare_classical("sirt", stack, angles, xf, aln, apply_aln,
                                       exclude_views, binning, output, thickness, width, force)
    views, scale = _density_views(series, contrast)
    start = time.perf_counter()
    with tqdm(total=iterations, desc="SIRT", unit="it", file=sys.stderr,
              disable=None) as bar:
        def progress(iteration: int, residual: float) -> None:
            bar.set_postfix(residual=f"{residual * scale:.4g}")
            bar.update(1)
            log.debug("SIRT iteration %d: residual %.6g", iteration, residual * scale)

        result = sirt_module.sirt(views, series.tilts_deg, shape[0], iterations=iterations,
                                  relaxation=relaxation, positivity=positivity, width=shape[2],
                                  progress=progress)
    del views
    log.info("SIRT: %d iterations in %.1f s", iterations, time.perf_counter() - start)
    residuals = [r * scale for r in result.residuals]
    if residuals and not np.isfinite(residuals[-1]):
        raise InputError("the SIRT residual became NaN or Inf: the input holds extreme "
                         "values; check it with `taichi-etgs info`", series.source)
    volume = _rescaled(result.volume, scale, series.source)
    _write_tomogram(output, volume, _pixel_size(series), contrast, output_contrast, force,
                    f"sirt {iterations} it", {"n_views": series.n_tilts, "binning": binning,
                                              "final_residual": residuals[-1]})


@cli.command()
@_command
@_stack_options
def info(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast):
    """What a tilt series holds: sizes, pixel size, angles, missing wedge, statistics.

    STACK is an MRC tilt series (.mrc, .st, .ali; one view per section); its angles come
    from --angles or a sibling STACK.tlt/.rawtlt/.mdoc.

    Checks what a user checks first and warns about what looks wrong (unsorted or
    duplicated angles, angles that look like radians, uneven steps, blank views,
    unknown pixel size). Reads the stack once; writes nothing.

    \b
    Example:
      taichi-etgs info TS_01.mrc --angles TS_01.tlt
    """
    from .io import stack_summary

    header = _peek_stack(stack, binning)
    _check_resources(_run_size("info", header.n_raw, header.ny, header.nx, (1, 1, 1), binning),
                     [], final=True)
    series, load_warnings = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning)
    summary = stack_summary(series)
    pixel = summary.get("pixel_size_A", 0.0)
    size = stack.stat().st_size
    tilts = np.asarray(series.tilts_deg, dtype=np.float64)
    steps = np.diff(tilts)
    repeated = " (with repeated angles)" if (steps == 0).any() else ""
    if tilts.size > 2 and (steps >= 0).all():
        order = "ascending" + repeated
    elif tilts.size > 2 and (steps <= 0).all():
        order = "descending" + repeated
    else:
        order = "not sorted (dose-symmetric?)" if tilts.size > 2 else "-"
    lines = [
        ("stack", str(series.source)),
        ("file", f"{_size_text(size)}, {header.n_raw} sections of {header.nx_raw} x "
                 f"{header.ny_raw} pixels, {np.dtype(header.dtype).name}"),
        ("angles from", series.angles_source or "-"),
        ("views", f"{summary['n_tilts']} (kept of the raw stack: "
                  f"{_ranges(series.kept_views)})"),
        ("image size", f"{summary['nx']} x {summary['ny']} pixels (X x Y)"
                       + (f", binned {binning}" if binning > 1 else "")),
        ("pixel size", _pixel_text(pixel, series.pixel_size_source)),
        ("tilt range", f"{summary['tilt_min_deg']:.2f} to {summary['tilt_max_deg']:.2f} deg, "
                       f"mean step {summary['mean_step_deg']:.2f} deg"),
        ("tilt order", order),
        ("missing wedge", f"{summary['missing_wedge_deg']:.1f} deg"),
        ("min / max", f"{summary['min']:.4g} / {summary['max']:.4g}"),
        ("mean / std", f"{summary['mean']:.4g} / {summary['std']:.4g}"),
    ]
    if 0 < pixel < 10:
        b = next((b for b in (2, 3, 4, 6, 8, 12, 16) if pixel * b >= 10), 16)
        lines.append(("binning hint", f"--binning {b} gives {pixel * b:.3g} A voxels and "
                                      f"{summary['nx'] // b} x {summary['ny'] // b} pixels "
                                      "(reconstructions are done at 10-20 A)"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        _echo(f"{key:<{width}}  {value}")
    # The loader already warned about duplicated angles and radians: say it once.
    said = " ".join(load_warnings)
    for message in summary.get("warnings", []):
        if ("duplicated" in message and "more than once" in said) or (
                "radians" in message and "radians" in said):
            continue
        _echo(f"warning: {message}", level=logging.WARNING)


def _pixel_text(pixel: float, source: str) -> str:
    """``7.5 A (from the header)``: the pixel size and where it came from."""
    if not pixel > 0:
        return "unknown (1.0 A assumed; give it with --pixel-size)"
    if source.startswith("mdoc "):
        source = source[len("mdoc "):]
    return f"{pixel:g} A (from {source or 'the files'})".replace("from header",
                                                                  "from the header")


def _size_text(n: int) -> str:
    from .resources import format_bytes

    return format_bytes(n)


@cli.command()
@_command
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("taichi-etgs-demo"), show_default=True,
              help="Folder for the simulated tilt series, ground truth and tomograms.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seed of the simulation.")
@click.option("--force", is_flag=True, help="Overwrite the files of an earlier demo.")
@_runtime_options
def demo(output_dir, seed, force):
    """Run the whole job on a built-in example (no input files needed).

    Simulates a small specimen (vesicles, filaments, particles in ice; 41 tilts, -60..60
    deg, noisy), reconstructs it with WBP, SIRT and adaptive Gaussians, writes the
    tomograms and prints how each compares with the ground truth. A few minutes on a
    laptop CPU.
    """
    from tqdm import tqdm

    from .demo import DEMO_GAUSSIAN_ITERATIONS, run_demo

    if output_dir.exists() and not output_dir.is_dir():
        raise InputError("exists and is not a folder", output_dir)
    with tqdm(total=DEMO_GAUSSIAN_ITERATIONS, desc="Gaussians", unit="it", file=sys.stderr,
              disable=None, dynamic_ncols=True) as bar:
        def progress(info) -> None:
            bar.set_postfix(loss=f"{info.loss:.4f}", n=info.n_gaussians, refresh=False)
            bar.update(info.iteration - bar.n)

        result = run_demo(output_dir, force=force, seed=seed,
                          report=lambda line: _echo(line, bar=bar),
                          progress=progress)
    for name, path in result.files.items():
        if Path(path).suffix.lower() == ".mrc":
            _write_sidecar(Path(path), {"what": f"demo {name}",
                                        "metrics": result.metrics.get(name, {}),
                                        "seconds": result.seconds.get(name)})
    _echo("")
    _echo(_metrics_table(result.metrics, result.seconds))
    _echo(f"\nfiles in {output_dir}/: " + ", ".join(sorted(p.name for p in
                                                           result.files.values())))


def _metrics_table(metrics: dict[str, dict], seconds: dict[str, float]) -> str:
    """Methods as rows, the headline metrics as columns (fixed-width text)."""
    header = (f"{'method':<10} {'time (s)':>8} {'PSNR':>7} {'SSIM':>6} {'corr':>6} "
              f"{'FSC 0.5 (A)':>11} {'wedge FSC':>9}")
    rows = [header, "-" * len(header)]
    for name, m in metrics.items():
        rows.append(f"{name:<10} {seconds.get(name, float('nan')):>8.1f} {m['psnr']:>7.2f} "
                    f"{m['ssim']:>6.3f} {m['correlation']:>6.3f} "
                    f"{m['fsc05_resolution_A']:>11.1f} {m['wedge_fsc']:>9.3f}")
    return "\n".join(rows)


def _ranges(indices) -> str:
    """0,1,2,5 -> '0-2,5'."""
    indices = [int(i) for i in indices]
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)

# -- commands: simulate, evaluate --


@cli.command()
@_command
@click.option("-o", "--output-dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tilts.mrc, tilts.tlt, ground_truth.mrc, simulation.json.")
@click.option("--shape", default="64,128,128", show_default=True, metavar="NZ,NY,NX",
              help="Tomogram (and ground truth) size in voxels.")
@click.option("--pixel-size", type=float, default=10.0, show_default=True,
              help="Voxel and detector pixel size in A.")
@click.option("--tilt-range", default="-60:60:3", show_default=True, metavar="START:STOP:STEP",
              help="Tilt range and step in degrees, STOP included (as `project --angles`; "
                   "the former MIN,MAX,STEP still works).")
@click.option("--dose-symmetric", is_flag=True,
              help="Acquire in the dose-symmetric order (dose accumulates accordingly).")
@click.option("--dose", type=float, default=120.0, show_default=True,
              help="Total dose in e/A^2, split evenly over the views.")
@click.option("--noise", type=click.Choice(["gaussian", "physical", "none"]), default="gaussian",
              show_default=True,
              help="gaussian: white noise at --snr; physical: CTF, radiation damage and "
                   "Poisson counts at --dose; none: noise-free.")
@click.option("--snr", type=float, default=0.5, show_default=True,
              help="Per-pixel SNR of the 0 deg view (gaussian noise).")
@click.option("--defocus", type=float, default=3.0, show_default=True,
              help="Defocus in um (physical noise).")
@click.option("--isolated", is_flag=True,
              help="Specimen only inside the box (SHREC-style); by default it extends "
                   "laterally, so high tilts see material from outside, as in real data.")
@click.option("--structure", "structures", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Atomic model (mmCIF/PDB, gzipped or not) to scatter in the ice; repeat "
                   "for several. Default: procedural particles.")
@click.option("--particles", type=click.IntRange(min=0), default=None,
              help="Number of particles [default: by area].")
@click.option("--vesicles", type=click.IntRange(min=0), default=None,
              help="Number of vesicles [default: by area].")
@click.option("--filaments", type=click.IntRange(min=0), default=None,
              help="Number of filaments [default: by area].")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seed: the same seed gives the same files.")
@click.option("--force", is_flag=True, help="Overwrite earlier files in the folder.")
@_runtime_options
def simulate(output_dir, shape, pixel_size, tilt_range, dose_symmetric, dose, noise, snr,
             defocus, isolated, structures, particles, vesicles, filaments, seed, force):
    """Simulate a tilt series with its ground truth (to test and compare methods).

    The specimen (macromolecules, vesicles, filaments in ice) is built and projected on a
    grid twice as fine as the output, then binned, so reconstructions are not tested with
    their own projector. Score a reconstruction of it with `taichi-etgs evaluate`.

    \b
    Example:
      taichi-etgs simulate -o sim --shape 64,256,256 --tilt-range -60:60:3
      taichi-etgs wbp sim/tilts.mrc --thickness 64 -o sim/wbp.mrc
      taichi-etgs evaluate sim/wbp.mrc --reference sim/ground_truth.mrc
    """
    from .simulate import SimulationConfig, simulate_tilt_series, write_simulation
    from .specimen import PlacementWarning

    shape_zyx = _int_triple(shape, "--shape")
    t_min, t_max, t_step = _parse_tilt_range(tilt_range, "--tilt-range", old_commas=True)
    config = SimulationConfig(shape_zyx=shape_zyx, pixel_size_A=pixel_size, tilt_min_deg=t_min,
                              tilt_max_deg=t_max, tilt_step_deg=t_step,
                              dose_symmetric=dose_symmetric, total_dose_e_per_A2=dose,
                              noise=noise, snr=snr, defocus_um=defocus, isolated=isolated,
                              structures=tuple(str(p) for p in structures),
                              n_particles=particles, n_vesicles=vesicles, n_filaments=filaments,
                              seed=seed)
    if not force:
        from .simulate import OUTPUT_FILES

        for name in OUTPUT_FILES:
            if (output_dir / name).exists():
                raise InputError("exists; use --force to overwrite", output_dir / name)
    for path in structures:
        _provenance().add_input("structure", path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PlacementWarning)
        result = simulate_tilt_series(config, progress=lambda m: _echo(m, err=True))
    _echo_warnings(caught)
    files = write_simulation(result, output_dir, force=force)
    for name, path in files.items():
        if Path(path).suffix.lower() == ".mrc":
            _write_sidecar(Path(path), {"what": name, "pixel_size_A": pixel_size,
                                        "shape_zyx": list(shape_zyx), "seed": seed})
    _echo(f"wrote {', '.join(str(p) for p in files.values())}")


def _int_triple(text: str, option: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"{option} {text!r}: expected three positive sizes NZ,NY,NX")
    return values


@cli.command()
@_command
@click.argument("recon", metavar="RECON|HALF1", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reference", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Ground truth volume of the same shape (e.g. from `simulate`): score "
                   "RECON against it.")
@click.option("--half2", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The other half map: the half-map FSC of HALF1 and HALF2 (two "
                   "independent reconstructions, from any program), no ground truth needed.")
@click.option("--voxel-size", type=float, default=None, metavar="A",
              help="Voxel size in A [default: from the MRC header, else 1].")
@click.option("--max-tilt", type=float, default=None,
              help="Largest tilt of the data in degrees, for the missing-wedge FSC "
                   "[default: from --angles, else 60].")
@click.option("--angles", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The data's angles file (gives --max-tilt).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write every metric and the FSC curves as JSON.")
@click.option("--figure", "figure_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write XY/XZ slices and FSC curves (PNG, PDF or SVG; "
                                 "with --reference).")
@click.option("--force", is_flag=True, help="Overwrite the JSON or figure if they exist.")
def evaluate(recon, reference, half2, voxel_size, max_tilt, angles, json_path, figure_path,
             force):
    """Score a reconstruction against a reference (PSNR, SSIM, FSC, missing-wedge FSC), or
    two half maps against each other (half-map FSC).

    With --reference, the reconstruction is first fitted to the reference by least squares
    (gain and offset, so units and polarity do not matter; a negative gain is reported as
    inverted contrast), then compared with the reference's range as data range. With
    --half2, no fit is needed (the FSC does not depend on gain). Both report the FSC 0.5
    and 0.143 resolutions and the band FSC, the mean FSC over features of 32-400 A.

    \b
    Example:
      taichi-etgs evaluate sim/wbp.mrc --reference sim/ground_truth.mrc --json wbp.json
      taichi-etgs evaluate even.mrc --half2 odd.mrc --json halves.json
    """
    import numpy as np

    from .io import read_tilt_angles, read_volume
    from .metrics import evaluate as evaluate_volumes
    from .metrics import half_map_fsc, write_metrics_json

    if (reference is None) == (half2 is None):
        raise InputError("give either --reference TRUTH (score against a ground truth) or "
                         "--half2 HALF2 (half-map FSC), "
                         + ("not both" if reference is not None else "one of them"))
    if half2 is not None and (figure_path is not None or max_tilt is not None
                              or angles is not None):
        raise InputError("--figure, --max-tilt and --angles need --reference; a half-map "
                         "FSC has no missing-wedge score or figure")
    if voxel_size is not None and not voxel_size > 0:
        raise InputError(f"--voxel-size must be a positive number of A, got {voxel_size}")
    for path in (json_path, figure_path):
        if path is not None:
            _check_output(path, force)
    volume, voxel = read_volume(recon)
    other_path = half2 if half2 is not None else reference
    other, other_voxel = read_volume(other_path)
    if voxel_size is None:
        if voxel and other_voxel and abs(voxel - other_voxel) > 1e-3 * max(voxel, other_voxel):
            _warn(f"the voxel sizes in the headers differ ({voxel:g} A in {recon.name}, "
                  f"{other_voxel:g} A in {other_path.name}); using {voxel:g} A "
                  "(set --voxel-size to choose)")
        voxel_size = voxel or other_voxel
        if not voxel_size:
            _warn("no voxel size in the MRC headers; resolutions are in voxels of 1 A "
                  "(set --voxel-size)")
            voxel_size = 1.0
    if half2 is not None:
        metrics = half_map_fsc(volume, other, voxel_size)
        _echo(f"half-map FSC 0.143: {metrics['fsc0143_resolution_A']:.1f} A   FSC 0.5: "
              f"{metrics['fsc05_resolution_A']:.1f} A   band FSC (32-400 A) "
              f"{metrics['band_fsc']:.3f}")
        if json_path is not None:
            write_metrics_json(metrics, json_path, force=force)
            _echo(f"wrote {json_path}")
        return
    if max_tilt is None:
        max_tilt = float(np.abs(read_tilt_angles(angles)).max()) if angles else 60.0
    metrics = evaluate_volumes(volume, other, voxel_size, max_tilt)
    _echo(f"PSNR {metrics['psnr']:.2f} dB   SSIM {metrics['ssim']:.3f}   correlation "
          f"{metrics['correlation']:.3f}")
    _echo(f"FSC 0.5: {metrics['fsc05_resolution_A']:.1f} A   FSC 0.143: "
          f"{metrics['fsc0143_resolution_A']:.1f} A   missing-wedge FSC "
          f"{metrics['wedge_fsc']:.3f}")
    _echo(f"band FSC (32-400 A) {metrics['band_fsc']:.3f}   wedge {metrics['wedge_band_fsc']:.3f}"
          f"   specimen {metrics['specimen_band_fsc']:.3f}   specimen wedge "
          f"{metrics['specimen_wedge_band_fsc']:.3f}")
    if metrics.get("contrast_inverted"):
        _echo("note: the reconstruction has inverted contrast relative to the reference")
    if json_path is not None:
        write_metrics_json(metrics, json_path, force=force)
        _echo(f"wrote {json_path}")
    if figure_path is not None:
        from .figures import evaluation_figure

        evaluation_figure(volume, other, metrics, figure_path, force=force,
                          title=f"{recon.name} vs {reference.name}")
        _echo(f"wrote {figure_path}")

# -- commands: gaussian engine --


@cli.command()
@_command
@_stack_options
@_volume_options
@click.option("--iterations", type=click.IntRange(min=1), metavar="N", default=None,
              help="Optimisation steps [default: 600; with --resume: the saved run's].")
@click.option("--max-gaussians", type=click.IntRange(min=1), default=60_000, show_default=True,
              metavar="N",
              help="Upper bound on the model's size (memory and time grow with it).")
@click.option("--views-per-step", type=click.IntRange(min=1), default=8, show_default=True,
              metavar="N",
              help="Tilt views rendered and compared per step.")
@click.option("--init", "init", default="sirt", show_default=True, metavar="sirt|wbp|FILE",
              help="What seeds the model: a SIRT or WBP reconstruction of the same data, a "
                   "tomogram (.mrc, same size and polarity as the output), or a state file "
                   "(.h5) to refine with new settings or data.")
@click.option("--tilt-weight", type=click.Choice(["cos", "uniform", "etgs"]), default="cos",
              show_default=True,
              help="Per-view weight of the loss: high tilts are thicker and noisier.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seeds initialisation, view order and densification.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="HDF5 state file, saved every --save-every steps, at the end and on Ctrl-C "
                   "[default: OUTPUT with .state.h5].")
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              metavar="N",
              help="Save the state every N steps (0: only at the end).")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Continue an interrupted run from its state file.")
@click.option("--voxel-size", type=float, default=None, metavar="A",
              help="Voxel size of the written tomogram in A [default: the stack's pixel size].")
@click.option("--halves", is_flag=True,
              help="Also reconstruct the odd and the even tilts independently: writes "
                   "OUTPUT_half1.mrc and OUTPUT_half2.mrc and their Fourier shell correlation "
                   "(in the log and the JSON sidecar), to judge the tomogram without a ground "
                   "truth or to feed a denoiser. About twice the time.")
@click.option("--heldout-every", type=click.IntRange(min=0), default=10, show_default=True,
              metavar="N",
              help="Hold one view in N (in tilt order) out of the fit to validate it: the "
                   "model that predicts them best is written (early stop). 0: fit all views.")
@click.option("--defocus", "defocus_um", type=click.FloatRange(min=0), default=0.0,
              metavar="UM",
              help="Underfocus of the series in micrometres (positive): puts the CTF in the "
                   "model, so that it fits the specimen's potential, not a CTF-filtered image "
                   "[default: none, for phase-flipped or CTF-corrected stacks].")
@click.option("--voltage", "voltage_kV", type=click.FloatRange(min=1), default=300.0,
              show_default=True, metavar="KV", help="Acceleration voltage (with --defocus).")
@click.option("--cs", "cs_mm", type=click.FloatRange(min=0), default=2.7, show_default=True,
              metavar="MM", help="Spherical aberration (with --defocus).")
@click.option("--amplitude-contrast", type=click.FloatRange(min=0, max=0.99), default=0.07,
              show_default=True, metavar="W", help="Amplitude contrast (with --defocus).")
@_runtime_options
def reconstruct(stack, angles, xf, aln, apply_aln, exclude_views, binning, contrast, output,
                thickness, width, output_contrast, force, iterations, max_gaussians,
                views_per_step, init, tilt_weight, seed, state_path, save_every, resume_path,
                voxel_size, halves, heldout_every, defocus_um, voltage_kV, cs_mm,
                amplitude_contrast):
    """Reconstruct STACK as adaptive 3D Gaussians (the CryoETGS method).

    STACK is an MRC tilt series with the tilt axis along Y, as for wbp.

    The model is seeded from a classical reconstruction, then fitted to the views through a
    differentiable projector (tilt-weighted L1 + D-SSIM), growing where the fit needs it.
    An ice slab (faces and ends fitted to the data), per-view gain and offset, and with
    --defocus the CTF, carry what is not specimen. One view in --heldout-every is kept out
    of the fit: the model that predicts those views best is written, so a noisy series is
    not over-fitted; the held-out scores go to the log and to OUTPUT.json. The tomogram is
    the model voxelised at the stack's pixel size (or --voxel-size).

    The run's state (model, optimiser, random generator) is saved to OUTPUT.state.h5
    every --save-every steps, at the end, and on Ctrl-C or SIGTERM (exit codes 130 and
    143); continue with --resume. The state never replaces an earlier run's without
    --force. Memory and disk are checked before any work: a run that will not fit is
    refused with the option that makes it fit.

    \b
    Example:
      taichi-etgs reconstruct TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          -o TS_01_gs.mrc
      taichi-etgs reconstruct TS_01.ali --angles TS_01.tlt --binning 4 --thickness 300 \\
          -o TS_01_gs.mrc --resume TS_01_gs.state.h5        # after an interruption
    """
    from .reconstruct import GaussianReconstruction, ReconstructConfig
    from .state import input_checksum, load_state

    prov = _provenance()
    _check_output(output, force)
    half_paths = _half_paths(output) if halves else []
    for path in half_paths:
        _check_output(path, force)
    state_path = state_path or output.with_name(output.name.removesuffix(".mrc") + ".state.h5")
    _check_state_output(state_path, resume_path, force)
    if voxel_size is not None and not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InputError(f"--voxel-size must be a positive number of A, got {voxel_size}")
    init_path = None if init in ("sirt", "wbp") else Path(init)
    if init_path is not None and not init_path.is_file():
        raise InputError("--init: file not found (expected sirt, wbp, a tomogram .mrc or a "
                         "state .h5)", init_path)
    state = None
    if resume_path is not None:
        state = load_state(resume_path)
        prov.add_input("resume", resume_path)
    header = _peek_stack(stack, binning)
    shape = _volume_shape(header.ny, header.nx, thickness, width, stack)

    def run_size(n_tilts, max_tilt=60.0, pixel=None):
        saved = state.config if state is not None else {}
        n_max = int(saved.get("max_gaussians", max_gaussians) or max_gaussians)
        out_shape = _output_shape(shape, voxel_size, pixel) if pixel else None
        seed_kind = ("model" if state is not None or (init_path is not None and
                                                       init_path.suffix.lower() in (".h5", ".hdf5"))
                     else "volume" if init_path is not None else init)
        return _run_size("reconstruct", n_tilts, header.ny, header.nx, shape, binning,
                         max_tilt_deg=max_tilt, max_gaussians=n_max,
                         views_per_step=int(saved.get("views_per_step", views_per_step)),
                         init=seed_kind, output_shape_zyx=out_shape,
                         iterations=int(iterations or saved.get("iterations", 600)))

    folders = [output.parent, state_path.parent]
    _check_resources(run_size(header.n_raw, pixel=header.pixel_A * header.binning or 1.0),
                     folders, final=False)
    series, _ = _load(stack, angles, xf, aln, apply_aln, exclude_views, binning,
                      force)
    _warn_shape(shape)
    pixel = _pixel_size(series)
    out_shape = _output_shape(shape, voxel_size, pixel)
    max_tilt = float(np.max(np.abs(series.tilts_deg)))
    _check_resources(run_size(series.n_tilts, max_tilt, pixel), folders, final=True)
    checksum = input_checksum(series.data)
    views = _views(series, contrast)

    if state is not None:
        _check_state_matches(state, checksum, shape, resume_path, force)
        config = _saved_config(state, resume_path, ReconstructConfig)
        if iterations is not None:
            config.iterations = iterations
        try:
            run = GaussianReconstruction(views, series.tilts_deg, shape[0], config,
                                         width=shape[2], params=state.params)
            run.restore(state)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(f"cannot be resumed: the state does not fit this run ({exc})",
                             resume_path) from None
        _echo(f"resuming {resume_path} at iteration {run.iteration}", err=True)
    else:
        config = ReconstructConfig(iterations=iterations or 600, max_gaussians=max_gaussians,
                                   views_per_step=views_per_step, tilt_weight=tilt_weight,
                                   seed=seed, init=init if init in ("sirt", "wbp") else "sirt",
                                   heldout_every=heldout_every, defocus_um=defocus_um,
                                   pixel_size_A=pixel if defocus_um > 0 else 0.0,
                                   voltage_kV=voltage_kV, cs_mm=cs_mm,
                                   amplitude_contrast=amplitude_contrast)
        initial_volume, params, params_view_scale = None, None, 1.0
        if init_path is not None:
            prov.add_input("init", init_path)
            if init_path.suffix.lower() in (".h5", ".hdf5"):
                init_state = load_state(init_path)
                _check_state_matches(init_state, checksum, shape, init_path, force=True)
                params = init_state.params
                params_view_scale = float(init_state.geometry.get("view_scale", 1.0))
            else:
                from .io import read_volume
                from .preprocess import to_output_polarity

                volume, _ = read_volume(init_path)
                # The tomogram is in the input's polarity (what this tool writes by default).
                initial_volume = to_output_polarity(volume, contrast, "input")
        seed_from = config.init if initial_volume is None and params is None else init
        _echo(f"seeding the model ({seed_from})", err=True)
        start = time.perf_counter()
        run = GaussianReconstruction(views, series.tilts_deg, shape[0], config, width=shape[2],
                                     initial_volume=initial_volume, params=params,
                                     params_view_scale=params_view_scale)
        log.info("seeded %d Gaussians in %.1f s", run.params.n, time.perf_counter() - start)
        _echo(f"{run.params.n} Gaussians to start with", err=True)
        if run.slab.density > 0:
            _echo(f"ice slab: faces at z {run.slab.z_lo:.1f} and {run.slab.z_hi:.1f}, ends at x "
                  f"{run.slab.x_lo:.1f} and {run.slab.x_hi:.1f} (voxels from the centre)",
                  err=True)
    if not halves:
        del views
    log.info("configuration: %s", run.config.to_dict())

    saved = {"iteration": None}
    state_geometry = {"pixel_size_A": series.pixel_size_A, "source": str(series.source)}

    def save(r: GaussianReconstruction) -> None:
        try:
            r.save_state(state_path, checksum, state_geometry)
            prov.write(state_path, {"what": "Gaussian model state", "iteration": r.iteration,
                                    "iterations": r.config.iterations,
                                    "n_gaussians": r.params.n, "input_checksum": checksum,
                                    "shape_zyx": list(shape)})
        except OSError as exc:
            kept = (f"the previous state (iteration {saved['iteration']}) is kept"
                    if saved["iteration"] is not None else "no state was saved")
            raise RunFailure(f"cannot save the state to {state_path} ({_os_reason(exc)}); "
                             f"{kept}") from exc
        saved["iteration"] = r.iteration
        log.debug("state saved at iteration %d", r.iteration)

    start = time.perf_counter()
    _run_with_progress(run, save, save_every, state_path)
    log.info("fitted %d iterations in %.1f s", run.iteration, time.perf_counter() - start)
    validation = run.validation_report()
    _report_validation(validation)
    factor = 1.0 if voxel_size is None else voxel_size / pixel
    volume = run.tomogram(voxel_size=factor, shape_zyx=out_shape)
    _check_finite(volume, series.source)
    if halves:
        validation.update(_write_halves(run, views, series, half_paths, factor, out_shape,
                                        pixel, contrast, output_contrast, force))
    try:
        _write_tomogram(output, volume, pixel * factor, contrast, output_contrast, force,
                        f"gaussians {run.params.n}",
                        {"n_views": series.n_tilts, "binning": binning,
                         "n_gaussians": run.params.n, "iterations": run.iteration,
                         "final_loss": run.losses[-1] if run.losses else None,
                         "state": str(state_path), "input_checksum": checksum,
                         "validation": validation})
    except OSError as exc:
        raise RunFailure(f"cannot write {output} ({_os_reason(exc)}); the fitted model is "
                         f"saved in {state_path}: make room, then rerun the same command with "
                         f"--resume {state_path} to write the tomogram") from exc


def _half_paths(output: Path) -> list[Path]:
    stem = output.name.removesuffix(".mrc")
    return [output.with_name(f"{stem}_half{k}.mrc") for k in (1, 2)]


def _report_validation(validation: dict) -> None:
    """The run's own account of its quality, in the log and on the terminal."""
    scores = validation["heldout_loss"]
    if not scores["iteration"]:
        return
    for it, value in zip(scores["iteration"], scores["value"]):
        log.info("held-out views at iteration %d: relative error %.5f", it, value)
    stop = " (stopped early)" if validation["stopped_early"] else ""
    _echo(f"held-out views {validation['heldout_views']}: relative error "
          f"{scores['value'][0]:.4f} at the start, best {validation['best_heldout_loss']:.4f} "
          f"at iteration {validation['best_iteration']}{stop}; that model is written",
          err=True)


def _write_halves(run, views, series, paths, factor, out_shape, pixel, contrast,
                  output_contrast, force) -> dict:
    """Fit the odd and the even tilts independently, write both, return their FSC."""
    from .metrics import half_map_fsc
    from .reconstruct import reconstruct_halves

    _echo("reconstructing the odd and the even tilts independently (--halves)", err=True)
    first, second = reconstruct_halves(views, series.tilts_deg, run.shape_zyx[0], run.config,
                                       width=run.shape_zyx[2])
    volumes = [r.tomogram(voxel_size=factor, shape_zyx=out_shape) for r in (first, second)]
    fsc = half_map_fsc(volumes[0], volumes[1], pixel * factor)
    for k, (path, volume, r) in enumerate(zip(paths, volumes, (first, second)), start=1):
        _check_finite(volume, series.source)
        _write_tomogram(path, volume, pixel * factor, contrast, output_contrast, force,
                        f"gaussians half {k} ({'odd' if k == 1 else 'even'} tilts)",
                        {"half": k, "n_views": int(r.measured.shape[0]),
                         "validation": r.validation_report()})
    _echo(f"half-map FSC: 0.143 at {fsc['fsc0143_resolution_A']:.1f} A, 0.5 at "
          f"{fsc['fsc05_resolution_A']:.1f} A, mean {fsc['band_fsc']:.3f} over "
          f"{1 / fsc['band_per_A'][0]:.0f}-{1 / fsc['band_per_A'][1]:.0f} A", err=True)
    log.info("half-map FSC: %s", fsc["fsc"])
    return {"half_fsc": {"freq_per_A": fsc["freq_per_A"], "fsc": fsc["fsc"]},
            "half_fsc0143_resolution_A": fsc["fsc0143_resolution_A"],
            "half_fsc05_resolution_A": fsc["fsc05_resolution_A"],
            "half_band_fsc": fsc["band_fsc"]}


def _output_shape(shape, voxel_size: float | None, pixel: float) -> tuple[int, int, int]:
    if voxel_size is None:
        return tuple(shape)
    factor = voxel_size / pixel
    return tuple(max(1, round(n / factor)) for n in shape)


def _check_state_output(state_path: Path, resume_path: Path | None, force: bool) -> None:
    """The state file must not replace an earlier run's (unless resumed or --force)."""
    if state_path.is_dir():
        raise InputError("is a folder; give a file name for the state (--state)", state_path)
    folder = state_path.parent if str(state_path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot be written: the folder {folder} does not exist", state_path)
    _probe_writable(folder, state_path)
    if not state_path.exists() or force:
        return
    if resume_path is not None and resume_path.exists() and os.path.samefile(resume_path,
                                                                             state_path):
        return
    raise InputError(f"exists: the state of an earlier run; continue it with --resume "
                     f"{state_path}, pass --state NEW.h5, or use --force to replace it",
                     state_path)


def _saved_config(state, path: Path, config_class):
    """The configuration a state was saved with, as ``config_class``; settings this
    version does not know are ignored with a warning."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_class)}
    saved = {k: v for k, v in state.config.items() if not k.startswith("_")}
    unknown = sorted(set(saved) - known)
    if unknown:
        _warn(f"{path}: settings unknown to taichi-etgs {__version__} are ignored: "
              f"{', '.join(unknown)}")
    try:
        return config_class(**{k: v for k, v in saved.items() if k in known})
    except (TypeError, ValueError) as exc:  # InputError included
        raise InputError(f"holds invalid settings ({exc})", path) from None


def _state_geometry(state, path: Path) -> tuple[tuple[int, int, int], float]:
    """Tomogram shape (z, y, x) and pixel size (A) a state was made for."""
    try:
        shape = tuple(int(n) for n in state.geometry.get("shape_zyx", ()))
        pixel = float(state.geometry.get("pixel_size_A", 0.0) or 0.0) or 1.0
    except (TypeError, ValueError):
        raise InputError("holds an unreadable geometry (shape_zyx, pixel_size_A)",
                         path) from None
    if len(shape) != 3 or min(shape) < 1:
        raise InputError("holds no tomogram geometry (shape_zyx)", path)
    if not (np.isfinite(pixel) and pixel > 0):
        pixel = 1.0
    return shape, pixel


@cli.command()
@_command
@click.argument("state_path", metavar="STATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--angles", required=True, metavar="F|LIST",
              help="Tilt angles to synthesise: an angles file (.tlt/.rawtlt/.mdoc/.aln) or a "
                   "range START:STOP:STEP in degrees (STOP included), e.g. -90:90:1.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Stack of synthetic views to write (MRC), with its sidecar OUTPUT.json.")
@click.option("--size", default=None, metavar="W,H",
              help="Detector width and height in pixels [default: the tomogram's X and Y].")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True, help="Polarity of the views: dark, like raw cryo-EM images.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@_runtime_options
def project(state_path, angles, output, size, contrast, force):
    """Synthesise projections of a fitted model at any tilts, measured or not.

    The angles are written beside the stack (OUTPUT with .tlt), one per line, as IMOD
    and this tool read them.

    \b
    Example:
      taichi-etgs project TS_01_gs.state.h5 --angles -90:90:2 -o TS_01_full_range.mrc
    """
    from .io import read_tilt_angles, write_stack
    from .kernels.gaussian_projector import project_gaussians
    from .state import load_state

    _check_output(output, force)
    tlt_path = output.with_suffix(".tlt")
    if tlt_path == output:
        raise InputError("is the name of the .tlt written beside the views; name the stack "
                         ".mrc", output)
    _check_output(tlt_path, force)
    state = load_state(state_path)
    _provenance().add_input("state", state_path)
    shape, pixel = _state_geometry(state, state_path)
    tilts = _parse_angles(angles, read_tilt_angles)
    if Path(angles).exists():
        _provenance().add_input("angles", angles)
    width, height = shape[2], shape[1]
    if size:
        try:
            width, height = (int(v) for v in size.split(","))
        except ValueError:
            raise InputError(f"--size {size!r}: expected W,H in pixels, e.g. 512,512") from None
        if width < 1 or height < 1:
            raise InputError(f"--size {size!r}: sizes must be positive")
    from .resources import RunSize

    # The views, their scaled and polarity copies: three stacks' worth.
    _check_resources(RunSize("wbp", 0, height, width, len(tilts), width), [output.parent],
                     final=True, advice="fewer views (--angles) or a smaller --size")
    start = time.perf_counter()
    views = project_gaussians(state.params, tilts, height, width)
    seconds = time.perf_counter() - start
    views *= float(state.geometry.get("view_scale", 1.0))
    if contrast == "dark":
        views = -views
    _check_finite(views, state_path)
    write_stack(output, views.astype("float32"), pixel, force=force,
                labels=_provenance().labels(f"project {state.params.n} Gaussians"))
    _write_sidecar(output, {"what": "synthetic views", "n_views": len(tilts),
                            "tilts_deg": np.asarray(tilts), "size_xy": [width, height],
                            "pixel_size_A": pixel, "contrast": contrast,
                            "n_gaussians": state.params.n, "angles_file": str(tlt_path)})
    from ._atomic import write_text_atomic

    write_text_atomic(tlt_path, "".join(f"{a:.4f}\n" for a in np.asarray(tilts, float)))
    _echo(f"wrote {output} ({len(tilts)} views of {width} x {height}; "
          f"{len(tilts) / max(seconds, 1e-9):.0f} views/s for {state.params.n} Gaussians) "
          f"and its angles {tlt_path}")


def _parse_angles(text: str, read_file):
    if Path(text).exists() or ":" not in text:
        return read_file(text)
    start, stop, step = _parse_tilt_range(text, "--angles", "a file or ")
    return np.arange(start, stop + step / 2, step)


def _parse_tilt_range(text: str, option: str, alternative: str = "",
                      old_commas: bool = False) -> tuple[float, float, float]:
    """``START:STOP:STEP`` in degrees (STOP included), the one range syntax of every
    command; with ``old_commas`` the former ``MIN,MAX,STEP`` still works, with a note."""
    separator = ":"
    if old_commas and ":" not in text and "," in text:
        separator = ","
        _warn(f"{option} {text}: MIN,MAX,STEP is deprecated; write START:STOP:STEP "
              f"({text.replace(',', ':')}), as everywhere else")
    try:
        start, stop, step = (float(v) for v in text.split(separator))
    except ValueError:
        raise InputError(f"{option} {text!r}: expected {alternative}START:STOP:STEP in "
                         f"degrees, e.g. -60:60:3") from None
    if not all(np.isfinite(v) for v in (start, stop, step)):
        raise InputError(f"{option} {text!r}: START, STOP and STEP must be finite")
    if step <= 0 or stop < start:
        raise InputError(f"{option} {text!r}: STEP must be positive and STOP >= START")
    if (stop - start) / step > 100_000:
        raise InputError(f"{option} {text!r}: more than 100000 views; use a larger STEP")
    return start, stop, step


@cli.command()
@_command
@click.argument("state_path", metavar="STATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Volume to write (MRC, Z Y X), with its sidecar OUTPUT.json.")
@click.option("--voxel-size", type=float, default=None, metavar="A",
              help="Voxel size in A [default: the reconstruction's].")
@click.option("--shape", default=None, metavar="NZ,NY,NX",
              help="Grid size [default: the tomogram's extent at that voxel size].")
@click.option("--output-contrast", type=click.Choice(["bright", "dark"]), default="bright",
              show_default=True, help="Polarity of the volume.")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@_runtime_options
def voxelize(state_path, output, voxel_size, shape, output_contrast, force):
    """Write a fitted model as a volume on any grid (finer, coarser, cropped).

    \b
    Example:
      taichi-etgs voxelize TS_01_gs.state.h5 --voxel-size 5 -o TS_01_gs_fine.mrc
    """
    from .kernels.voxelizer import voxelize_gaussians
    from .state import load_state

    _check_output(output, force)
    state = load_state(state_path)
    _provenance().add_input("state", state_path)
    model_shape, pixel = _state_geometry(state, state_path)
    voxel = pixel if voxel_size is None else voxel_size
    if not (np.isfinite(voxel) and voxel > 0):
        raise InputError(f"--voxel-size must be a positive number of A, got {voxel}")
    factor = voxel / pixel
    grid = tuple(max(1, round(n / factor)) for n in model_shape)
    if shape:
        try:
            grid = tuple(int(v) for v in shape.split(","))
        except ValueError:
            grid = ()
        if len(grid) != 3 or min(grid) < 1:
            raise InputError(f"--shape {shape!r}: expected three positive sizes NZ,NY,NX")
    from .resources import RunSize

    # The volume, its scaled copy and its polarity: three volumes, as for wbp.
    _check_resources(RunSize("wbp", 0, grid[1], grid[2], grid[0], grid[2]), [output.parent],
                     final=True, advice="a larger --voxel-size or a smaller --shape")
    volume = voxelize_gaussians(state.params, grid, voxel_size=factor)
    # Back to the units the model was fitted in, on the level it sits on.
    volume = (volume * float(state.geometry.get("view_scale", 1.0))
              + float(state.geometry.get("background", 0.0)))
    _write_tomogram(output, volume, voxel, "bright", output_contrast, force,
                    f"voxelize {state.params.n} Gaussians", {"n_gaussians": state.params.n})


@cli.command()
@_command
@click.argument("volume_path", metavar="VOLUME", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="State file to write (.h5): can seed `reconstruct --init`, or be exported.")
@click.option("--max-gaussians", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Number of Gaussians (the octree uses the whole budget).")
@click.option("--iterations", type=click.IntRange(min=0), metavar="N", default=300,
              show_default=True,
              help="Volume-loss fitting steps after the octree initialisation.")
@click.option("--contrast", type=click.Choice(["dark", "bright"]), default="dark",
              show_default=True,
              help="How density looks in VOLUME: dark (the raw images' polarity, what IMOD, "
                   "AreTomo and this tool write by default) or bright.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@_runtime_options
def gaussianize(volume_path, output, max_gaussians, iterations, contrast, seed, force):
    """Fit Gaussians to an existing tomogram (from any program).

    Seeds the model with the octree and fits it to the volume; prints how well the
    voxelised model reproduces it (PSNR). The model sits on the volume's median, which it
    does not represent (below-median voxels, mostly noise, come back as the median).

    \b
    Example:
      taichi-etgs gaussianize TS_01_sirt.mrc -o TS_01_model.h5 --max-gaussians 100000
      taichi-etgs export TS_01_model.h5 -o TS_01_model.ply
    """
    from tqdm import tqdm

    from .convert import gaussianize as fit
    from .io import read_volume
    from .state import input_checksum, save_state

    _check_output(output, force)
    volume, voxel = read_volume(volume_path)
    _provenance().add_input("volume", volume_path)
    if contrast == "dark":
        volume = -volume
    with tqdm(total=iterations, desc="fit", unit="it", file=sys.stderr, disable=None) as bar:
        result = fit(volume, max_gaussians=max_gaussians, iterations=iterations, seed=seed,
                     progress=lambda i, loss: (bar.set_postfix(loss=f"{loss:.4f}"),
                                               bar.update(i - bar.n)))
    geometry = {"shape_zyx": list(volume.shape), "model_shape_zyx": list(volume.shape),
                "pixel_size_A": voxel, "view_scale": 1.0, "background": result.background,
                "source": str(volume_path)}
    save_state(output, result.params, None, 0, np.random.default_rng(seed).bit_generator.state,
               {"gaussianize_iterations": iterations, "max_gaussians": max_gaussians},
               geometry, input_checksum(volume), force=True)
    _write_sidecar(output, {"what": "Gaussian model state (gaussianize)",
                            "n_gaussians": result.params.n, "psnr_db": result.psnr_db,
                            "shape_zyx": list(volume.shape), "voxel_size_A": voxel})
    _echo(f"wrote {output}: {result.params.n} Gaussians; the voxelised model reproduces "
          f"{volume_path.name} at PSNR {result.psnr_db:.1f} dB")


@cli.command()
@_command
@click.argument("state_path", metavar="STATE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write: .ply (3D Gaussian splatting viewers) or .csv.")
@click.option("--origin", type=click.Choice(["centre", "corner", "index"]), default="index",
              show_default=True,
              help="Coordinates in A from: the tomogram centre, its corner, or voxel 0's "
                   "centre (index: overlays the MRC in ChimeraX and napari).")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
def export(state_path, output, origin, force):
    """Export a model's Gaussians (centres, scales, rotations, densities) for viewers.

    \b
    Example:
      taichi-etgs export TS_01_gs.state.h5 -o TS_01_gs.ply
    """
    from .convert import export_gaussians
    from .state import load_state

    state = load_state(state_path)
    _provenance().add_input("state", state_path)
    shape, pixel = _state_geometry(state, state_path)
    export_gaussians(state.params, output, voxel_size_A=pixel, origin=origin, shape_zyx=shape,
                     force=force)
    _write_sidecar(output, {"what": "Gaussian model export", "n_gaussians": state.params.n,
                            "voxel_size_A": pixel, "origin": origin})
    _echo(f"wrote {output} ({state.params.n} Gaussians, {pixel:g} A/voxel)")


def _check_state_matches(state, checksum: str, shape, path: Path, force: bool) -> None:
    try:
        geometry_shape = tuple(int(n) for n in state.geometry.get("shape_zyx", ()))
    except (TypeError, ValueError):
        raise InputError("holds an unreadable geometry (shape_zyx)", path) from None
    if state.input_checksum != checksum and not force:
        raise InputError("was made from other data (input checksum differs); use --force to "
                         "use it anyway", path)
    if geometry_shape and geometry_shape != tuple(shape) and not force:
        raise InputError(f"was made for a {'x'.join(map(str, geometry_shape))} (z, y, x) "
                         f"tomogram, not {'x'.join(map(str, shape))}; use --force to use it "
                         "anyway", path)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system ending the job), handled like Ctrl-C but exiting with 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _run_with_progress(run, save, save_every: int, state_path: Path) -> None:
    """Iterate with a progress bar; save the state periodically, at the end and on Ctrl-C
    or SIGTERM."""
    import signal

    from tqdm import tqdm

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _iterate(run, save, save_every, state_path, tqdm)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _iterate(run, save, save_every: int, state_path: Path, tqdm) -> None:
    start_iteration = run.iteration
    total = run.config.iterations
    every = max(1, total // 20)
    with tqdm(total=total, initial=start_iteration, desc="Gaussians",
              unit="it", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        def progress(info) -> None:
            bar.set_postfix(loss=f"{info.loss:.4f}", n=info.n_gaussians, refresh=False)
            bar.update(info.iteration - bar.n)
            if info.message:
                _echo(info.message, err=True, bar=bar)
            if info.iteration % every == 0 or info.iteration == total:
                log.debug("iteration %d/%d: loss %.5f, %d Gaussians", info.iteration, total,
                          info.loss, info.n_gaussians)

        try:
            run.run(progress=progress, checkpoint=save, save_every=save_every)
        except KeyboardInterrupt:
            bar.close()
            save(run)
            _echo(f"interrupted at iteration {run.iteration}; state saved to "
                  f"{state_path}; continue with --resume {state_path}", err=True)
            raise
    save(run)
    _echo(f"state saved to {state_path}", err=True)


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += ": the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += ": no permission to write there"
    return reason


def main(args: list[str] | None = None) -> int:
    """Entry point; returns the exit code (so tests can call it without a subprocess).

    Exit codes: 0 success; 2 bad input or options (``error: ...``, one line, nothing
    written); 1 a run that could not finish (full disk, out of memory, internal error);
    130 Ctrl-C and 143 SIGTERM (the state of a reconstruction is saved first).
    """
    argv = list(sys.argv[1:] if args is None else args)
    obj = {"command_line": ["taichi-etgs", *(str(a) for a in argv)]}
    try:
        # The console handler from the start: a message printed before a command sets up
        # logging (usage errors, bare `taichi-etgs`) must not be printed again by
        # Python's last-resort handler when it is logged.
        _setup_logging(0, None)
        cli.main(args=argv, prog_name="taichi-etgs", standalone_mode=False, obj=obj)
    except InputError as exc:
        _echo(f"error: {exc}", err=True, level=logging.ERROR)
        return 2
    except RunFailure as exc:
        _echo(f"error: {exc}", err=True, level=logging.ERROR)
        return 1
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt (and so SIGTERM's Terminated) into Abort.
        if isinstance(exc.__cause__, Terminated):
            _echo("terminated", err=True, level=logging.WARNING)
            return 143
        _echo("interrupted", err=True, level=logging.WARNING)
        return 130
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            _echo("terminated", err=True, level=logging.WARNING)
            return 143
        _echo("interrupted", err=True, level=logging.WARNING)
        return 130
    except click.ClickException as exc:
        exc.show()
        log.error("%s", exc.format_message(), extra={"echoed": True})
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except MemoryError:
        _echo("error: out of memory; reduce the problem (e.g. --binning 2 or a smaller "
              "--thickness)", err=True, level=logging.ERROR)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _echo(f"error: {where}{_os_reason(exc)}", err=True, level=logging.ERROR)
        return 1
    except Exception as exc:
        log.debug("internal error", exc_info=True, extra={"echoed": True})
        if os.environ.get("TAICHI_ETGS_DEBUG"):
            raise
        _echo(f"error: internal error ({type(exc).__name__}: {exc}); please report it. "
              "Set TAICHI_ETGS_DEBUG=1 to see the traceback.", err=True, level=logging.ERROR)
        return 1
    finally:
        _close_logging()
    return 0


if __name__ == "__main__":
    sys.exit(main())
