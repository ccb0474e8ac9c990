"""What a new user (with IMOD/AreTomo habits) stumbled over (issue 9): one test per item."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taichi_etgs.cli import main


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _run_process(args):
    """The CLI in a fresh interpreter: no pytest logging handlers on the root logger."""
    done = subprocess.run([sys.executable, "-m", "taichi_etgs.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


# -- 1. usage errors and the bare command print once --


def test_usage_error_is_printed_once(tmp_path):
    code, out, err = _run_process(["wbp", tmp_path / "x.mrc", "-o", tmp_path / "y.mrc"])
    assert code == 2
    assert err.count("Missing option '--thickness'") == 1, err


def test_bare_command_prints_the_help_once():
    code, out, err = _run_process([])
    assert (out + err).count("Usage: taichi-etgs") == 1, out + err
    assert (out + err).count("Start here:") == 1
