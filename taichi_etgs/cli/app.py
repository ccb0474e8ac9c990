"""The command group, the set-up every command shares, messages and exit codes.

Messages: results go to stdout, progress, warnings and errors to stderr; ``-v`` adds
detail (what was read, the settings, memory estimates, timings) through Python's
``logging`` (the ``taichi_etgs`` logger), and ``--log FILE`` appends everything, with
timestamps, to FILE. Every MRC, state or model file written gets a JSON sidecar
(``<output>.json``, see :mod:`taichi_etgs.provenance`).
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import click

from .. import __version__
from ..errors import InputError, RunFailure

__all__ = ["cli", "command", "echo", "main", "session", "warn"]

log = logging.getLogger("taichi_etgs.cli")
_PACKAGE_LOGGER = "taichi_etgs"
# Commands in the order a newcomer meets them (click would sort them alphabetically).
_COMMAND_ORDER = ("demo", "info", "wbp", "sirt", "reconstruct", "batch", "project", "voxelize",
                  "gaussianize", "export", "simulate", "evaluate")


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
    # Messages already on the console (pipeline.session.SHOWN) go to the log file only.
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


def echo(message: str = "", err: bool = False, level: int = logging.INFO) -> None:
    """Print a message (stdout, or stderr with ``err``; above any progress bar) and append
    it to the ``--log`` file."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        tqdm_module.tqdm.write(message, file=sys.stderr if err else sys.stdout)
    else:
        click.echo(message, err=err)
    log.log(level, message, extra={"echoed": True})


def warn(message: str) -> None:
    echo(f"warning: {message}", err=True, level=logging.WARNING)


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


def command(func):
    """Options and set-up shared by every subcommand: -v/--log (also accepted after the
    command name), logging, and the pipeline session (messages, provenance)."""

    @click.option("-v", "--verbose", "cmd_verbose", count=True, help=_VERBOSE_HELP)
    @click.option("--log", "cmd_log", type=click.Path(dir_okay=False, path_type=Path),
                  metavar="FILE", default=None, help=_LOG_HELP)
    @functools.wraps(func)
    def wrapper(*args, cmd_verbose: int = 0, cmd_log: Path | None = None, **kwargs):
        from ..pipeline.session import Session
        from ..provenance import Provenance

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
        provenance = Provenance(command=ctx.info_name or func.__name__,
                                command_line=list(command_line), parameters=params,
                                version=__version__)
        obj["session"] = Session(provenance=provenance, result=echo,
                                 note=functools.partial(echo, err=True), warning=warn,
                                 bars=True)
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


def session():
    """The current command's :class:`~taichi_etgs.pipeline.session.Session`."""
    return click.get_current_context().find_object(dict)["session"]


# -- the entry point --


def main(args: list[str] | None = None) -> int:
    """Entry point; returns the exit code (so tests can call it without a subprocess).

    Exit codes: 0 success; 2 bad input or options (``error: ...``, one line, nothing
    written); 1 a run that could not finish (full disk, out of memory, internal error);
    130 Ctrl-C and 143 SIGTERM (the state of a reconstruction is saved first).
    """
    from ..pipeline.checkpoint import Terminated
    from ..pipeline.outputs import os_reason

    argv = list(sys.argv[1:] if args is None else args)
    obj = {"command_line": ["taichi-etgs", *(str(a) for a in argv)]}
    try:
        # The console handler from the start: a message printed before a command sets up
        # logging (usage errors, bare `taichi-etgs`) must not be printed again by
        # Python's last-resort handler when it is logged.
        _setup_logging(0, None)
        cli.main(args=argv, prog_name="taichi-etgs", standalone_mode=False, obj=obj)
    except InputError as exc:
        echo(f"error: {exc}", err=True, level=logging.ERROR)
        return 2
    except RunFailure as exc:
        echo(f"error: {exc}", err=True, level=logging.ERROR)
        return 1
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns KeyboardInterrupt (and so SIGTERM's Terminated) into Abort.
        if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
            echo("terminated", err=True, level=logging.WARNING)
            return 143
        echo("interrupted", err=True, level=logging.WARNING)
        return 130
    except click.ClickException as exc:
        exc.show()
        log.error("%s", exc.format_message(), extra={"echoed": True})
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except MemoryError:
        echo("error: out of memory; reduce the problem (e.g. --binning 2 or a smaller "
             "--thickness)", err=True, level=logging.ERROR)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        echo(f"error: {where}{os_reason(exc)}", err=True, level=logging.ERROR)
        return 1
    except Exception as exc:
        log.debug("internal error", exc_info=True, extra={"echoed": True})
        if os.environ.get("TAICHI_ETGS_DEBUG"):
            raise
        echo(f"error: internal error ({type(exc).__name__}: {exc}); please report it. "
             "Set TAICHI_ETGS_DEBUG=1 to see the traceback.", err=True, level=logging.ERROR)
        return 1
    finally:
        _close_logging()
    return 0
