"""GGUF import: the default model's store entry, and clear errors that leave nothing behind."""

from __future__ import annotations

import errno
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest

from rbee.errors import ModelError, UsageError
from rbee.models import importer
from rbee.models.importer import (
    DEFAULT_MODEL,
    PRECISIONS,
    default_model_path,
    ensure_model,
    import_gguf,
    name_from_path,
)
from rbee.models.store import Manifest, ModelStore
from rbee.wire.hive import FileEntry
from rbee.wire.worker import Precision
from tests.models.helpers import Synthetic, write_synthetic_gguf, write_tiny_gguf


def assert_nothing_left(root: Path) -> None:
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.slow
def test_default_model_in_store_is_complete_and_verified(model_store: Path) -> None:
    store = ModelStore(model_store)
    manifest = store.get(DEFAULT_MODEL)
    assert manifest.architecture == "llama"
    assert manifest.context_length == 8192
    assert manifest.vocab_size == 49152
    assert manifest.precisions == ["int4", "fp32", "fp16"]
    assert manifest.stop_token_ids == [0, 2]
    assert "<|im_start|>" in manifest.chat_template
    assert set(manifest.files) == {
        "tokenizer.json",
        "model.int4.onnx",
        "model.int4.onnx.data",
        "model.fp32.onnx",
        "model.fp32.onnx.data",
        "model.fp16.onnx",
        "model.fp16.onnx.data",
    }
    store.verify(DEFAULT_MODEL)
    assert not [p for p in model_store.iterdir() if p.name.startswith(".staging")]


@pytest.mark.slow
def test_ensure_model_finds_the_default_and_refuses_unknown_names(model_store: Path) -> None:
    store = ModelStore(model_store)
    assert ensure_model(store, DEFAULT_MODEL).name == DEFAULT_MODEL
    with pytest.raises(ModelError, match="rbee model import"):
        ensure_model(store, "no-such-model")


def test_default_model_path_is_the_packaged_gguf() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1"),
        ("My Model (v2)!.gguf", "my-model-v2"),
        ("__x__.GGUF", "x"),
    ],
)
def test_name_from_path(filename: str, expected: str) -> None:
    assert name_from_path(Path("/somewhere") / filename) == expected


def test_bad_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid model name"):
        import_gguf(ModelStore(tmp_path / "store"), default_model_path(), name="../evil")


def test_random_bytes_are_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "random.gguf"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match="is not a GGUF file"):
        import_gguf(ModelStore(tmp_path / "store"), bad)
    assert_nothing_left(tmp_path / "store")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        import_gguf(ModelStore(tmp_path / "store"), tmp_path / "absent.gguf")
    assert_nothing_left(tmp_path / "store")


@pytest.mark.parametrize("keep", [100, 50_000_000])
def test_truncated_gguf(tmp_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.gguf"
    with default_model_path().open("rb") as src:
        cut.write_bytes(src.read(keep))
    with pytest.raises(ModelError, match="truncated"):
        import_gguf(ModelStore(tmp_path / "store"), cut)
    assert_nothing_left(tmp_path / "store")


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "mamba.gguf", arch="mamba")
    with pytest.raises(
        ModelError,
        match=r"unsupported architecture 'mamba' \(supported: llama, qwen2, qwen3, gemma3, phi3\)",
    ):
        import_gguf(ModelStore(tmp_path / "store"), path)
    assert_nothing_left(tmp_path / "store")


def test_a_gguf_without_a_tokenizer_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "bare.gguf")
    with pytest.raises(
        ModelError,
        match=r"bare\.gguf: no tokenizer in the GGUF metadata "
        r"\(tokenizer\.ggml\.model, tokenizer\.ggml\.tokens missing\)",
    ):
        import_gguf(ModelStore(tmp_path / "store"), path)
    assert_nothing_left(tmp_path / "store")


def test_phi3_with_long_rope_factors_is_refused_naming_them(tmp_path: Path) -> None:
    spec = Synthetic("phi3", layers=1, rope_factors=True)
    path = write_synthetic_gguf(tmp_path / "phi3.gguf", spec)
    with pytest.raises(ModelError, match=r"rope_factors_long\.weight is not supported in phi3"):
        import_gguf(ModelStore(tmp_path / "store"), path)
    assert_nothing_left(tmp_path / "store")


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "iq4.gguf", odd_tensor="blk.0.ffn_up.weight")
    with pytest.raises(
        ModelError, match=r"blk\.0\.ffn_up\.weight has unsupported type IQ4_NL \(supported: .*Q4_K"
    ):
        import_gguf(ModelStore(tmp_path / "store"), path)
    assert_nothing_left(tmp_path / "store")


def test_full_disk_is_named_and_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*args: object) -> list[str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importer, "build_graph", no_space)
    with pytest.raises(ModelError, match="out of disk space"):
        import_gguf(ModelStore(tmp_path / "store"), default_model_path(), name="m")
    assert_nothing_left(tmp_path / "store")


def test_failed_import_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    old = store.dir("m")
    old.mkdir(parents=True)
    (old / "rbee-model.toml").write_text("kept")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ModelError):
        import_gguf(store, bad, name="m")
    assert (old / "rbee-model.toml").read_text() == "kept"
    shutil.rmtree(old)
    assert_nothing_left(store.root)


def test_the_wire_names_every_precision_the_importer_builds() -> None:
    assert set(typing.get_args(Precision)) == set(PRECISIONS)


def test_a_manifest_reduced_to_some_precisions_keeps_only_their_graphs() -> None:
    graphs = {f"model.{p}.onnx{end}" for p in ("int4", "fp16") for end in ("", ".data")}
    files = {n: FileEntry(size=1, sha256="0" * 64) for n in (*graphs, "tokenizer.json")}
    manifest = Manifest(
        name="m",
        architecture="llama",
        context_length=8,
        vocab_size=8,
        precisions=["int4", "fp16"],
        files=files,
    )
    reduced = manifest.with_precisions(["fp16"])
    assert reduced.precisions == ["fp16"]
    assert set(reduced.files) == {"model.fp16.onnx", "model.fp16.onnx.data", "tokenizer.json"}
    assert manifest.with_precisions([]) == manifest
    with pytest.raises(ModelError, match=r"has no fp32 graph \(has: int4, fp16\)"):
        manifest.with_precisions(["fp16", "fp32"])
