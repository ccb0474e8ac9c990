"""Options several commands share, and the parsers of option texts.

Shared options become pipeline objects before the command sees them: the STACK options
a :class:`~taichi_etgs.pipeline.inputs.StackSource` (``source``), the tomogram options
a :class:`~taichi_etgs.pipeline.tomograms.VolumeTarget` (``target``), and ``--arch`` and
``--threads`` settings of the session (Taichi starts when a run needs it, after its
cheap checks).
"""

from __future__ import annotations

import functools
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from ..errors import InputError
from .app import session, warn

__all__ = ["ctf_options", "dose_options", "given_options", "parse_angles", "parse_int_triple",
           "parse_radial", "parse_size", "parse_tilt_range", "require", "runtime_options",
           "stack_options", "volume_options"]

STACK_NAMES = ("stack", "angles", "xf", "aln", "apply_aln", "aligned", "mdoc",
               "exclude_views", "binning", "pixel_size", "contrast", "erase_outliers")
KEEP_OUTLIERS_HELP = ("Keep X-ray hits and hot pixels (patches of up to 4 pixels at least 10 "
                      "noise standard deviations brighter than their neighbours), which "
                      "are otherwise replaced by their neighbours' median.")
VOLUME_NAMES = ("output", "thickness", "width", "output_contrast", "force")


def stack_options(func=None, *, required: bool = True, outliers: bool = True):
    """Options that say how to read a tilt series (every command that takes a STACK);
    the command receives them as ``source`` (None when STACK is not given).
    ``outliers``: offer --keep-outliers (commands that reconstruct)."""
    if func is None:
        return functools.partial(stack_options, required=required, outliers=outliers)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in STACK_NAMES if name in kwargs}
        from ..pipeline.inputs import StackSource

        source = None if values["stack"] is None else StackSource(**values)
        return func(*args, source=source, **kwargs)

    decorators = [
        click.argument("stack", type=click.Path(dir_okay=False, path_type=Path),
                       required=required),
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
        click.option("--mdoc", "mdoc", type=click.Path(dir_okay=False, path_type=Path),
                     help="SerialEM .mdoc of a raw STACK: the views are turned by minus its "
                          "tilt axis angle (after --xf's shifts) so that the axis lies "
                          "along Y; also the angles when no other file gives them. A "
                          "sibling .mdoc is undone by itself only after an .xf that only "
                          "shifts (IMOD's .prexg)."),
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
    if outliers:
        decorators.append(click.option("--keep-outliers", "erase_outliers", flag_value=False,
                                       default=True, help=KEEP_OUTLIERS_HELP))
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


def volume_options(func=None, *, required: bool = True, note: str = ""):
    """The tomogram's size, file and polarity; the command receives them as ``target``
    (None when the output or the thickness is not given)."""
    if func is None:
        return functools.partial(volume_options, required=required, note=note)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in VOLUME_NAMES}
        from ..pipeline.tomograms import VolumeTarget

        target = (None if values["output"] is None or values["thickness"] is None
                  else VolumeTarget(**values))
        return func(*args, target=target, **kwargs)

    decorators = [
        # dir_okay: an OME-Zarr output is a folder (check_writable refuses other folders)
        click.option("-o", "--output", required=required,
                     type=click.Path(path_type=Path),
                     help="Tomogram to write (MRC, Z Y X), with its sidecar OUTPUT.json; "
                          "a name ending in .zarr writes OME-Zarr (levels binned 1, 2, 4; "
                          "voxel size in A), as the CryoET Data Portal." + note),
        click.option("--thickness", required=required, type=click.IntRange(min=1),
                     metavar="NZ", help="Tomogram thickness NZ in (binned) voxels." + note),
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
        wrapper = decorator(wrapper)
    return wrapper


class DefocusParam(click.ParamType):
    """``--defocus``: a number (micrometres of underfocus) or a defocus file."""

    name = "UM|FILE"

    def convert(self, value, param, ctx):
        from ..pipeline.ctf import parse_defocus

        try:
            return parse_defocus(value)
        except InputError as exc:
            self.fail(str(exc).removeprefix(f"--defocus {value}: "), param, ctx)


def ctf_options(func=None, *, note: str = ""):
    """--defocus (a number or a file), --voltage, --cs, --amplitude-contrast; the command
    receives them as ``ctf`` (:class:`~taichi_etgs.pipeline.ctf.CtfSettings`)."""
    if func is None:
        return functools.partial(ctf_options, note=note)

    @functools.wraps(func)
    def wrapper(*args, defocus, voltage_kV, cs_mm, amplitude_contrast, **kwargs):
        from ..pipeline.ctf import CtfSettings

        return func(*args, ctf=CtfSettings(defocus, voltage_kV, cs_mm, amplitude_contrast),
                    **kwargs)

    decorators = [
        click.option("--defocus", type=DefocusParam(), default=None, metavar="UM|FILE",
                     help="The views' CTF: underfocus in micrometres (positive) for every "
                          "view, or a file with each view's defocus: IMOD ctfplotter "
                          ".defocus, CTFFIND4 output or AreTomo3 _CTF.txt (astigmatism "
                          "where the file gives it)" + note + " [default: none, for "
                          "phase-flipped or CTF-corrected stacks]."),
        click.option("--voltage", "voltage_kV", type=click.FloatRange(min=1), default=300.0,
                     show_default=True, metavar="KV", help="Acceleration voltage (with "
                                                           "--defocus or a dose)."),
        click.option("--cs", "cs_mm", type=click.FloatRange(min=0), default=2.7,
                     show_default=True, metavar="MM",
                     help="Spherical aberration (with --defocus)."),
        click.option("--amplitude-contrast", type=click.FloatRange(min=0, max=0.99),
                     default=0.07, show_default=True, metavar="W",
                     help="Amplitude contrast (with --defocus)."),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


TILT_ORDERS = ("sequential", "bidirectional", "dose-symmetric")


def dose_options(func=None, *, note: str = ""):
    """--dose FILE, --dose-per-tilt, --tilt-order, --tilt-start, --tilt-group; the command
    receives them as ``dose`` (:class:`~taichi_etgs.pipeline.dose.DoseSettings`)."""
    if func is None:
        return functools.partial(dose_options, note=note)

    @functools.wraps(func)
    def wrapper(*args, dose_file, dose_per_tilt, tilt_order, tilt_start, tilt_group, **kwargs):
        from ..pipeline.dose import DoseSettings

        return func(*args, dose=DoseSettings(dose_file, dose_per_tilt, tilt_order, tilt_start,
                                             tilt_group), **kwargs)

    decorators = [
        click.option("--dose", "dose_file", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, metavar="FILE",
                     help="Each view's exposure: a SerialEM .mdoc (ExposureDose, "
                          "PriorRecordDose or DateTime) or a DOSE PRIOR_DOSE file (e/A^2 per "
                          "line, as simulate writes tilts.dose)" + note + "."),
        click.option("--dose-per-tilt", type=click.FloatRange(min=0), default=None,
                     metavar="E", help="The exposure of every view, e/A^2 (instead of "
                                       "--dose FILE); the prior dose from --tilt-order."),
        click.option("--tilt-order", type=click.Choice(TILT_ORDERS), default=None,
                     help="Acquisition order, for --dose-per-tilt (or an .mdoc without "
                          "PriorRecordDose and DateTime) [default: sequential, from the "
                          "lowest tilt]."),
        click.option("--tilt-start", type=float, default=None, metavar="DEG",
                     help="Start angle of a bidirectional or dose-symmetric order "
                          "[default: 0]."),
        click.option("--tilt-group", type=click.IntRange(min=1), default=2, show_default=True,
                     metavar="N", help="Views per group of the dose-symmetric order."),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


def runtime_options(func):
    """--arch and --threads: the device the session starts when the run needs it."""

    @click.option("--arch", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                  show_default=True, help="Compute device: auto picks CUDA when a GPU is usable.")
    @click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                  help="CPU threads (default: all cores).")
    @functools.wraps(func)
    def wrapper(*args, arch: str, threads: int | None, **kwargs):
        current = session()
        current.arch, current.threads = arch, threads
        return func(*args, **kwargs)

    return wrapper


def given_options(ctx: click.Context, names) -> dict:
    """The options among ``names`` given on the command line (not left at their default)."""
    out = {}
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source not in (ParameterSource.DEFAULT,
                                                 ParameterSource.DEFAULT_MAP):
            out[name] = ctx.params[name]
    return out


def require(ctx: click.Context, *names: str) -> None:
    """Click's own "Missing option" usage error for the first of ``names`` not given."""
    for name in names:
        if ctx.params.get(name) is None:
            param = next(p for p in ctx.command.params if p.name == name)
            raise click.MissingParameter(ctx=ctx, param=param)


# -- option texts --


def parse_tilt_range(text: str, option: str, alternative: str = "",
                     old_commas: bool = False) -> tuple[float, float, float]:
    """``START:STOP:STEP`` in degrees (STOP included), the one range syntax of every
    command; with ``old_commas`` the former ``MIN,MAX,STEP`` still works, with a note."""
    separator = ":"
    if old_commas and ":" not in text and "," in text:
        separator = ","
        warn(f"{option} {text}: MIN,MAX,STEP is deprecated; write START:STOP:STEP "
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


def parse_angles(text: str):
    """``--angles`` of ``project``: an angles file (returned as a Path) or a range
    ``START:STOP:STEP`` (returned as the tilts)."""
    if Path(text).exists() or ":" not in text:
        return Path(text)
    start, stop, step = parse_tilt_range(text, "--angles", "a file or ")
    return np.arange(start, stop + step / 2, step)


def parse_radial(text: str) -> tuple[float, float]:
    try:
        cutoff, falloff = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--radial {text!r}: expected CUTOFF,FALLOFF, e.g. 0.35,0.035") from None
    if not (np.isfinite(cutoff) and np.isfinite(falloff)):
        raise InputError(f"--radial {text!r}: CUTOFF and FALLOFF must be finite numbers")
    return cutoff, falloff


def parse_int_triple(text: str, option: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"{option} {text!r}: expected three positive sizes NZ,NY,NX")
    return values


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--size {text!r}: expected W,H in pixels, e.g. 512,512") from None
    if width < 1 or height < 1:
        raise InputError(f"--size {text!r}: sizes must be positive")
    return width, height
