"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.ssh_hosts"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's real config, data and model store."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RBEE_CONFIG", raising=False)
    for var in [v for v in os.environ if v.startswith("RBEE_")]:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rbee.pyz`` built once per test session with the project's own build script."""
    if os.environ.get("DEV_PYZ"):
        return Path(os.environ["DEV_PYZ"])
    out = tmp_path_factory.mktemp("pyz") / "rbee.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "build" / "build.py"), "--output", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store root holding the default model, imported once in every precision.

    The model is ``rbee.models.importer.DEFAULT_MODEL`` (``smollm2-135m-instruct``), with the
    ``int4``, ``fp16`` and ``fp32`` graphs; tests must not change the store.
    """
    from rbee.models.importer import DEFAULT_MODEL, PRECISIONS, default_model_path, import_gguf
    from rbee.models.store import ModelStore

    root = tmp_path_factory.mktemp("models")
    import_gguf(ModelStore(root), default_model_path(), name=DEFAULT_MODEL, precisions=PRECISIONS)
    return root
