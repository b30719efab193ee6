"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's real config, data and model store."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("RBEE_CONFIG", raising=False)
    for var in [v for v in os.environ if v.startswith("RBEE_")]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rbee.pyz`` built once per test session with the project's own build script."""
    out = tmp_path_factory.mktemp("pyz") / "rbee.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "build" / "build.py"), "--output", str(out)],
        check=True,
        capture_output=True,
    )
    return out
