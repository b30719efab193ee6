"""The zipapp: built by build/build.py, answering on its own in another directory."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

from rbee import __version__

pytestmark = pytest.mark.slow


def run(pyz: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pyz), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )


def test_pyz_copied_alone_answers_version_and_help(pyz: Path, tmp_path: Path) -> None:
    alone = tmp_path / "elsewhere" / "rbee.pyz"
    alone.parent.mkdir()
    shutil.copy2(pyz, alone)
    version = run(alone, "--version", cwd=alone.parent)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"rbee {__version__}"
    helped = run(alone, "--help", cwd=alone.parent)
    assert helped.returncode == 0, helped.stderr
    assert "config" in helped.stdout


def test_pyz_shebang_pins_python_311(pyz: Path) -> None:
    first_line = pyz.read_bytes().split(b"\n", 1)[0]
    assert first_line == b"#!/usr/bin/env python3.11"


def _other_python() -> str | None:
    """A working interpreter other than 3.11 (pyenv shims may name one that is not enabled)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (12, 13, 10)]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.1[02]*/bin/python3")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def test_pyz_refuses_another_python_with_a_clear_message(pyz: Path, tmp_path: Path) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("no Python other than 3.11 on this machine to try the version check with")
    result = subprocess.run(
        [other, str(pyz), "--version"], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 1
    assert "needs Python 3.11" in result.stderr
