"""The VRAM estimate: weights from the store, KV cache from the graph's cache inputs, a margin."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from rbee.config import WorkerConfig
from rbee.errors import ModelError
from rbee.models.importer import PRECISIONS, import_gguf
from rbee.models.store import Manifest, ModelStore, describe_files
from rbee.models.vram import (
    ACTIVATION_FRACTION,
    MB,
    RUNTIME_OVERHEAD_MB,
    ensure_room,
    gpu_precision,
    model_vram_required,
    no_room_message,
)
from rbee.worker.daemon import load_model
from tests.hive.fake_nvml import FakeGpu, FakeNvml
from tests.models.helpers import Synthetic, write_synthetic_gguf

SPEC = Synthetic(arch="llama", layers=3, kv_heads=2, head_dim=64, context=64)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """A three-layer synthetic llama imported in both precisions."""
    root = tmp_path_factory.mktemp("vram")
    source = write_synthetic_gguf(root / "syn.gguf", SPEC)
    store = ModelStore(root / "store")
    manifest = import_gguf(store, source, name="syn", precisions=PRECISIONS)
    return store.dir("syn"), manifest


def test_the_kv_cache_is_layers_heads_dims_keys_values_slots_and_context(
    synthetic: tuple[Path, Manifest],
) -> None:
    directory, manifest = synthetic
    need = model_vram_required(directory, manifest, precision="fp32", slots=3)
    # float32 cache of context + 1 rows per slot (the engine's scratch row).
    expected = SPEC.layers * SPEC.kv_heads * SPEC.head_dim * 2 * 4 * 3 * (SPEC.context + 1)
    assert need.kv_cache_mb * MB == pytest.approx(expected)
    assert (need.slots, need.context_length, need.precision) == (3, SPEC.context, "fp32")
    # The imported fp16 graph keeps its cache in half precision.
    half = model_vram_required(directory, manifest, precision="fp16", slots=3)
    assert half.kv_cache_mb == pytest.approx(need.kv_cache_mb / 2)
    shorter = model_vram_required(directory, manifest, precision="fp32", slots=3, context_length=31)
    assert shorter.kv_cache_mb == pytest.approx(need.kv_cache_mb * 32 / 65)


def test_the_weights_are_the_precisions_graph_and_its_data_on_disk(
    synthetic: tuple[Path, Manifest],
) -> None:
    directory, manifest = synthetic
    sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
    for precision in ("int4", "fp32"):
        need = model_vram_required(directory, manifest, precision=precision, slots=1)
        files = [n for n in sizes if n.startswith(f"model.{precision}.onnx")]
        assert len(files) == 2
        assert need.weights_mb * MB == sum(sizes[n] for n in files)
        assert need.overhead_mb == pytest.approx(
            RUNTIME_OVERHEAD_MB + ACTIVATION_FRACTION * need.weights_mb
        )
        assert need.total_mb == pytest.approx(need.weights_mb + need.kv_cache_mb + need.overhead_mb)


def test_a_float16_cache_takes_two_bytes_an_element(tmp_path: Path) -> None:
    cache = [
        helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT16, ["b", 4, "c", 128])
        for i in range(5)
        for kind in ("key", "value")
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["b", 4, "c", 128])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["past_key.0"], ["y"])], "g", cache, [out]
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.fp16.onnx"))
    manifest = Manifest(
        name="half",
        architecture="llama",
        context_length=1000,
        vocab_size=10,
        precisions=["fp16"],
        files=describe_files(tmp_path),
    )
    need = model_vram_required(tmp_path, manifest, precision="fp16", slots=2)
    assert need.kv_cache_mb * MB == 5 * 4 * 128 * 2 * 2 * 2 * 1001


def test_a_missing_precision_or_a_broken_graph_is_a_model_error(
    synthetic: tuple[Path, Manifest], tmp_path: Path
) -> None:
    directory, manifest = synthetic
    with pytest.raises(ModelError, match="has no fp8 graph"):
        model_vram_required(directory, manifest, precision="fp8", slots=1)
    (tmp_path / "model.int4.onnx").write_bytes(b"\x00not a graph")
    broken = Manifest(
        name="broken",
        architecture="llama",
        context_length=8,
        vocab_size=10,
        precisions=["int4"],
        files=describe_files(tmp_path),
    )
    with pytest.raises(ModelError, match="cannot read the graph"):
        model_vram_required(tmp_path, broken, precision="int4", slots=1)


@pytest.mark.parametrize(
    ("precisions", "configured", "expected"),
    [
        (["int4", "fp16"], "int4", "int4"),
        (["int4", "fp16"], "", "fp16"),
        (["int4", "fp16"], "fp32", "fp16"),
        (["int4", "fp32"], "", "int4"),
    ],
)
def test_a_gpu_worker_loads_the_configured_precision_else_fp16_else_the_first(
    precisions: list[str], configured: str, expected: str
) -> None:
    manifest = Manifest(
        name="m", architecture="llama", context_length=8, vocab_size=10, precisions=precisions
    )
    assert gpu_precision(manifest, configured) == expected


def test_the_refusal_names_the_need_its_parts_and_the_free_vram(
    synthetic: tuple[Path, Manifest],
) -> None:
    directory, manifest = synthetic
    need = model_vram_required(directory, manifest, precision="int4", slots=2)
    message = no_room_message(need, "cuda:1", 300.0)
    assert message.startswith("not enough free VRAM on cuda:1 for model syn: it needs about ")
    assert f"{need.total_mb:.0f} MB" in message
    assert "KV cache" in message
    assert "2 slots x 64 tokens" in message
    assert "cuda:1 has 300 MB free" in message


@pytest.fixture
def nearly_full_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """NVML with one 4 GB GPU of which 300 MB are free."""
    nvml = FakeNvml([FakeGpu("NVIDIA T4", 4096, used_mb=3796)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def test_a_worker_refuses_a_gpu_without_room_before_loading(
    synthetic: tuple[Path, Manifest], nearly_full_gpu: FakeNvml
) -> None:
    directory, _ = synthetic
    config = WorkerConfig(device="cuda:0", slots=2)
    with pytest.raises(ModelError) as caught:
        load_model("syn", config, directory.parent)
    assert str(caught.value).startswith(
        "not enough free VRAM on cuda:0 for model syn: it needs about "
    )
    assert str(caught.value).endswith(
        "cuda:0 has 300 MB free; use fewer slots, another GPU or the CPU"
    )
    assert not nearly_full_gpu.initialised


def test_room_is_checked_only_on_a_gpu_that_nvml_knows(
    synthetic: tuple[Path, Manifest], nearly_full_gpu: FakeNvml
) -> None:
    directory, manifest = synthetic
    ensure_room(directory, manifest, device="cpu", precision="int4", slots=64)
    ensure_room(directory, manifest, device="cuda:3", precision="int4", slots=64)
    nearly_full_gpu.gpus[0].used_mb = 0
    ensure_room(directory, manifest, device="cuda:0", precision="int4", slots=2)
    with pytest.raises(ModelError, match="cuda:0 has 4096 MB free"):
        ensure_room(directory, manifest, device="cuda:0", precision="int4", slots=30_000)
