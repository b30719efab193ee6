"""``rbee model import``: a local conversion into the store, with progress and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbee.models.importer import default_model_path
from rbee.models.store import ModelStore
from tests.helpers import run_rbee
from tests.models.helpers import Synthetic, write_synthetic_gguf, write_tiny_gguf


@pytest.mark.slow
def test_import_into_models_dir_with_progress(tmp_path: Path) -> None:
    result = run_rbee(
        "model",
        "import",
        str(default_model_path()),
        "--models-dir",
        str(tmp_path),
        "--precision",
        "int4",
        "--name",
        "tiny-chat",
    )
    assert result.returncode == 0, result.stderr
    assert "importing tiny-chat: 100%" in result.stderr
    assert result.stdout.startswith("imported tiny-chat (int4, ")
    store = ModelStore(tmp_path)
    assert store.get("tiny-chat").precisions == ["int4"]
    store.verify("tiny-chat")


def test_bad_file_exits_1_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("just text, no model here\n" * 10)
    store = tmp_path / "store"
    result = run_rbee("model", "import", str(bad), "--models-dir", str(store))
    assert result.returncode == 1
    assert result.stderr.startswith("rbee: error: ")
    assert "is not a GGUF file" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not store.exists() or list(store.iterdir()) == []


def test_a_gguf_without_a_tokenizer_exits_1_with_one_line(tmp_path: Path) -> None:
    bare = write_tiny_gguf(tmp_path / "bare.gguf")
    store = tmp_path / "store"
    result = run_rbee("model", "import", str(bare), "--models-dir", str(store))
    assert result.returncode == 1
    assert result.stderr.startswith(f"rbee: error: {bare}: no tokenizer in the GGUF metadata")
    assert "tokenizer.ggml.tokens" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not store.exists() or list(store.iterdir()) == []


@pytest.mark.slow
def test_models_dir_defaults_to_the_worker_setting(tmp_path: Path) -> None:
    store = tmp_path / "configured"
    result = run_rbee(
        "model",
        "import",
        str(default_model_path()),
        "--precision",
        "fp16",
        env={**os.environ, "RBEE_WORKER_MODELS_DIR": str(store)},
    )
    assert result.returncode == 0, result.stderr
    assert ModelStore(store).get("smollm2-135m-instruct.q4_1").precisions == ["fp16"]


@pytest.mark.parametrize(
    ("options", "built"),
    [
        ((), ["int4", "fp16"]),
        (("--precision", "fp32", "--precision", "int4"), ["int4", "fp32"]),
        (("--precision", "all"), ["int4", "fp32", "fp16"]),
    ],
)
def test_import_builds_the_packed_graphs_unless_told(
    tmp_path: Path, options: tuple[str, ...], built: list[str]
) -> None:
    """fp32, 4-8 times the file's size, is built only on request."""
    spec = Synthetic(arch="llama", layers=1, kv_heads=2, head_dim=16, context=32)
    source = write_synthetic_gguf(tmp_path / "m.gguf", spec)
    store = tmp_path / "store"
    result = run_rbee("model", "import", str(source), "--models-dir", str(store), *options)
    assert result.returncode == 0, result.stderr
    assert ModelStore(store).get("m").precisions == built
    assert sorted(p.name for p in (store / "m").glob("*.onnx")) == sorted(
        f"model.{p}.onnx" for p in built
    )


def test_bad_precision_is_a_usage_error(tmp_path: Path) -> None:
    result = run_rbee("model", "import", "x.gguf", "--precision", "int8")
    assert result.returncode == 2
    assert "int8" in result.stderr
