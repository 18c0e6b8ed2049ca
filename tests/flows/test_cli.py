"""The ``mdgate`` app itself: ``--version`` (eager: it answers before any command or setting is read)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import mdgate
from flows.cli import app, installed_version


def test_version_prints_the_package_version_and_exits() -> None:
    res = CliRunner().invoke(app, ["--version"], catch_exceptions=False)
    assert res.exit_code == 0 and res.output == f"mdgate {installed_version()}\n"
    assert installed_version() == mdgate.__version__  # the installed metadata and the source agree
    # eager: answered even where a command would fail on its arguments
    assert CliRunner().invoke(app, ["--version", "gate"], catch_exceptions=False).exit_code == 0


def test_the_installed_script_answers_version() -> None:
    script = Path(sys.executable).parent / "mdgate"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"mdgate {mdgate.__version__}", out.stderr
