"""``info`` (what a tilt series holds) and ``demo`` (the whole job on a built-in example)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..errors import InputError
from ..pipeline.info import describe_stack
from .app import cli, command, echo, session
from .options import runtime_options, stack_options


@cli.command()
@command
@stack_options(outliers=False)
def info(source):
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
    description = describe_stack(source, session())
    echo(description.text())
    for message in description.warnings:
        echo(f"warning: {message}", level=logging.WARNING)


@cli.command()
@command
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("taichi-etgs-demo"), show_default=True,
              help="Folder for the simulated tilt series, ground truth and tomograms.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N",
              help="Seed of the simulation.")
@click.option("--force", is_flag=True, help="Overwrite the files of an earlier demo.")
@runtime_options
def demo(output_dir, seed, force):
    """Run the whole job on a built-in example (no input files needed).

    Simulates a small specimen (vesicles, filaments, particles in ice; 41 tilts, -60..60
    deg, noisy), reconstructs it with WBP, SIRT and adaptive Gaussians, writes the
    tomograms and prints how each compares with the ground truth. A few minutes on a
    laptop CPU.
    """
    from .. import demo as demo_module

    if output_dir.exists() and not output_dir.is_dir():
        raise InputError("exists and is not a folder", output_dir)
    result = demo_module.run_demo(output_dir, force=force, seed=seed, report=echo,
                                  session=session())
    echo("")
    echo(demo_module.metrics_table(result.metrics, result.seconds))
    echo(f"\nfiles in {output_dir}/: " + ", ".join(sorted(p.name for p in
                                                          result.files.values())))
