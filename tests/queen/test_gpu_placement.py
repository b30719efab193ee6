"""The queen places new workers by the hives' NVML telemetry and each model's VRAM estimate."""

from __future__ import annotations

import dataclasses

import httpx
import msgspec
import trio

from rbee import wire
from rbee.config import QueenConfig
from rbee.wire.queen import GpuTelemetry, HostTelemetry
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import heartbeat, hive_auth
from tests.queen.test_scheduling import BODY, FakeProvisioner, run

# A mixed host: a 12 GB card with 8 GB free and an 80 GB one with 79 GB free.
MIXED = HostTelemetry(
    cpu_count=16,
    load_1m=0.0,
    ram_total_mb=65536,
    ram_free_mb=60000,
    gpus=[
        GpuTelemetry(
            index=0, name="RTX 3060", util_pct=5.0, vram_total_mb=12288, vram_used_mb=4000
        ),
        GpuTelemetry(index=1, name="H100", util_pct=0.0, vram_total_mb=81559, vram_used_mb=559),
    ],
)


async def queen_with_mixed_hive(
    nursery: trio.Nursery,
    config: QueenConfig,
    http: httpx.AsyncClient,
    provisioner: FakeProvisioner,
    need_mb: float,
) -> QueenHandle:
    """A queen whose only hive has both GPUs and the model, which needs ``need_mb`` of VRAM."""
    queen = await start_queen(nursery, config, provisioner=provisioner)
    provisioner.queen_url = queen.url
    beat = msgspec.structs.replace(
        heartbeat("mixed", []),
        host=MIXED,
        models=["fake-model"],
        model_vram_mb={"fake-model": need_mb},
    )
    answer = await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(beat), headers=hive_auth(queen.url)
    )
    assert answer.status_code == 204
    return queen


async def test_a_model_that_fits_only_the_bigger_gpu_is_started_there(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    provisioner = FakeProvisioner(nursery)
    queen = await queen_with_mixed_hive(nursery, queen_config, http, provisioner, 20000.0)
    record = await run(http, queen.url)
    assert provisioner.calls == [("mixed", "fake-model", "cuda:1")]
    assert record["state"] == "completed"
    decisions = (await http.get(f"{queen.url}/v1/decisions", params={"last": 10})).json()
    spawn = decisions["decisions"][0]
    assert spawn["kind"] == "spawn"
    assert "model 'fake-model' needs about 20000 MB of VRAM" in spawn["reasons"]


async def test_a_model_that_fits_no_gpu_starts_on_the_cpu_by_default(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    provisioner = FakeProvisioner(nursery)
    queen = await queen_with_mixed_hive(nursery, queen_config, http, provisioner, 85000.0)
    record = await run(http, queen.url)
    assert provisioner.calls == [("mixed", "fake-model", "cpu")]
    assert record["state"] == "completed"


async def test_without_the_cpu_fallback_a_model_bigger_than_every_gpu_is_rejected(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, cpu_fallback=False)
    provisioner = FakeProvisioner(nursery)
    queen = await queen_with_mixed_hive(nursery, config, http, provisioner, 85000.0)
    response = await http.post(f"{queen.url}/v1/jobs", json=BODY)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "model 'fake-model' needs about 85000 MB of VRAM, more than any GPU has "
        "(the largest: 81559 MB on mixed cuda:1)"
    )
    assert provisioner.calls == []


async def test_without_the_cpu_fallback_a_model_waits_for_a_gpu_with_room(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, cpu_fallback=False)
    provisioner = FakeProvisioner(nursery)
    queen = await queen_with_mixed_hive(nursery, config, http, provisioner, 81500.0)
    job = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()
    assert (await http.get(f"{queen.url}/v1/jobs/{job['job_id']}")).json()["state"] == "queued"
    decisions = (await http.get(f"{queen.url}/v1/decisions", params={"last": 10})).json()
    [queued] = decisions["decisions"]
    assert queued["kind"] == "queue"
    assert queued["reasons"][-1] == (
        "model 'fake-model' needs about 81500 MB of VRAM and no GPU has room for it "
        "(most free: 81000 MB on mixed cuda:1): waiting for a GPU to free up"
    )
    assert provisioner.calls == []
