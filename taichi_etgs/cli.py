"""The ``taichi-etgs`` command line: parse options, call the library, report.

Heavy modules (Taichi, the kernels) are imported inside commands so that ``--help`` is fast.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import InputError

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="taichi-etgs")
def cli() -> None:
    """Cryo-ET tomograms from a tilt series: adaptive 3D Gaussians, WBP and SIRT.

    Volumes are written as MRC (Z, Y, X): XY slices are the top view; the tilt axis is Y.
    Run `taichi-etgs demo` for a complete example without any input files.
    """


# -- commands: foundation (wbp, sirt, info, demo) --

# -- commands: simulate, evaluate --

# -- commands: gaussian engine --


def main(args: list[str] | None = None) -> int:
    """Entry point; returns the exit code (so tests can call it without a subprocess).

    User errors print one line, ``error: ...``, and return 2; Ctrl-C returns 130.
    """
    try:
        cli.main(args=args, prog_name="taichi-etgs", standalone_mode=False)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
