"""A hive on a mixed GPU host, through a stand-in NVML: telemetry, VRAM estimates, room checks."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from rbee import wire
from rbee.errors import ApiError
from rbee.hive.telemetry import Gpus
from rbee.models.store import Manifest, describe_files, write_manifest
from rbee.models.vram import model_vram_required
from rbee.wire.hive import ModelList, SpawnRequest, WorkerList
from rbee.wire.queen import HiveHeartbeat, WorkerStatus
from tests.hive.conftest import MODEL, Hive
from tests.hive.fake_nvml import FakeGpu, FakeNvml

KV_MODEL = "kv"


def mixed_host() -> FakeNvml:
    """A small card that is nearly full and a big one that is nearly empty."""
    return FakeNvml(
        [
            FakeGpu("NVIDIA GeForce RTX 3060", 12288, used_mb=11800, util_pct=97, power_mw=170_000),
            FakeGpu("NVIDIA H100 80GB HBM3", 81559, used_mb=559, temperature_c=41),
        ]
    )


@pytest.fixture
def nvml() -> FakeNvml:
    return mixed_host()


def write_kv_model(directory: Path) -> Manifest:
    """A model whose graph has the KV cache inputs of 2 layers, 4 KV heads of 128 (float32)."""
    directory.mkdir(parents=True)
    cache = [
        helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT, ["b", 4, "c", 128])
        for i in range(2)
        for kind in ("key", "value")
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, "c", 128])
    node = helper.make_node("Identity", ["past_key.0"], ["y"])
    onnx.save(
        helper.make_model(helper.make_graph([node], "g", cache, [out])),
        str(directory / "model.int4.onnx"),
    )
    (directory / "model.int4.onnx.data").write_bytes(b"\0" * (1 << 20))
    manifest = Manifest(
        name=KV_MODEL,
        architecture="llama",
        context_length=2048,
        vocab_size=100,
        precisions=["int4"],
        files=describe_files(directory),
    )
    write_manifest(directory, manifest)
    return manifest


@pytest.fixture
def kv_model(hive: Hive) -> Manifest:
    return write_kv_model(hive.store_root / KV_MODEL)


def test_gpus_reports_each_gpu_of_a_mixed_host(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpus = Gpus()
    small, big = gpus.telemetry()
    assert (small.index, small.name, small.vram_total_mb, small.vram_used_mb) == (
        0,
        "NVIDIA GeForce RTX 3060",
        12288,
        11800,
    )
    assert (small.util_pct, small.power_w, small.temperature_c) == (97.0, 170.0, None)
    assert (big.index, big.name, big.vram_total_mb, big.vram_used_mb) == (
        1,
        "NVIDIA H100 80GB HBM3",
        81559,
        559,
    )
    assert (big.power_w, big.temperature_c) == (None, 41.0)
    nvml.gpus[0].processes = {4242: 300}
    nvml.gpus[1].processes = {4242: 1000, 777: 50}
    assert gpus.per_process() == {4242: (0.0, 1300.0), 777: (0.0, 50.0)}
    gpus.close()
    assert not nvml.initialised


def test_without_the_driver_there_are_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([mixed_host().gpus[0]], driver=False))
    gpus = Gpus()
    assert (gpus.count, gpus.telemetry(), gpus.per_process()) == (0, [], {})


async def test_the_heartbeat_lists_both_gpus_and_each_models_vram_need(
    hive: Hive, kv_model: Manifest
) -> None:
    beat = wire.decode((await hive.client.get("/v1/status")).content, HiveHeartbeat)
    assert [(g.name, g.vram_total_mb) for g in beat.host.gpus] == [
        ("NVIDIA GeForce RTX 3060", 12288),
        ("NVIDIA H100 80GB HBM3", 81559),
    ]
    need = model_vram_required(hive.store_root / KV_MODEL, kv_model, precision="int4", slots=4)
    # Two layers of keys and values, 4 heads of 128 floats, 2049 rows, 4 slots: 32 MB.
    assert need.kv_cache_mb == pytest.approx(2 * 4 * 128 * 2 * 4 * 2049 * 4 / 2**20)
    # The stand-in model's graph is random bytes: no estimate, and no error either.
    assert beat.model_vram_mb == {KV_MODEL: round(need.total_mb, 1)}
    models = wire.decode((await hive.client.get("/v1/models")).content, ModelList)
    assert {m.name: m.vram_required_mb for m in models.models} == {
        KV_MODEL: round(need.total_mb, 1),
        MODEL: None,
    }


async def test_a_spawn_on_a_gpu_without_room_is_refused_with_the_need_and_the_free_vram(
    hive: Hive, kv_model: Manifest
) -> None:
    response = await hive.client.post("/v1/workers", json={"model": KV_MODEL, "device": "cuda:0"})
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert message.startswith(
        "hive test-hive: not enough free VRAM on cuda:0 for model kv: it needs about "
    )
    assert "4 slots x 2048 tokens" in message
    assert message.endswith("cuda:0 has 488 MB free; use fewer slots, another GPU or the CPU")
    assert hive.state.supervisor.workers == {}


async def test_a_worker_on_the_gpu_with_room_reports_its_vram_from_nvml(
    hive: Hive, kv_model: Manifest, nvml: FakeNvml
) -> None:
    response = await hive.client.post(
        "/v1/workers", json={"model": KV_MODEL, "device": "cuda:1", "wait": True}
    )
    assert response.status_code == 201, response.text
    worker = wire.decode(response.content, WorkerStatus)
    assert worker.device == "cuda:1"
    nvml.gpus[1].processes = {worker.pid: 612}
    listed = wire.decode((await hive.client.get("/v1/workers")).content, WorkerList)
    assert [(w.id, w.vram_mb) for w in listed.workers] == [(worker.id, 612.0)]
    one = wire.decode((await hive.client.get(f"/v1/workers/{worker.id}")).content, WorkerStatus)
    assert one.vram_mb == 612.0


async def test_workers_still_loading_on_a_gpu_count_against_its_room(
    hive: Hive, kv_model: Manifest, nvml: FakeNvml
) -> None:
    supervisor = hive.state.supervisor
    need = supervisor.vram_need(KV_MODEL)
    assert need is not None
    # Room for one worker, not two.
    nvml.gpus[1].used_mb = 81559 - int(need.total_mb * 1.5)
    first = supervisor.spawn(SpawnRequest(model=KV_MODEL, device="cuda:1"))
    assert first.state == "loading"
    with pytest.raises(ApiError) as refused:
        supervisor.spawn(SpawnRequest(model=KV_MODEL, device="cuda:1"))
    assert refused.value.status == 409
    assert str(refused.value).endswith(
        f"({need.total_mb:.0f} MB of it are promised to workers still loading)"
    )
    assert list(supervisor.workers) == [first.id]
