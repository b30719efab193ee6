"""Workers on demand, unit level: idle tracking, keep-alive, memory pressure, hive lookups.

The hive here is an `httpx.MockTransport` that records what the queen asks; the real chain
(queen, local hive, worker processes) is proven in tests/test_main_job.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from rbee import wire
from rbee.errors import ApiError, ModelError, NotFoundError
from rbee.models.importer import DEFAULT_MODEL
from rbee.models.store import ModelStore
from rbee.queen.provision import Hives
from rbee.queen.registry import Registry
from rbee.wire.queen import HiveHeartbeat, HostTelemetry, WorkerStatus
from tests.hive.fakes import make_model

GB = 1024


def worker(
    wid: str, model: str, *, busy: int = 0, state: str = "ready", pinned: bool = False
) -> WorkerStatus:
    return WorkerStatus(
        pinned=pinned,
        id=wid,
        pid=1000,
        model=model,
        device="cpu",
        url=f"http://127.0.0.1:9/{wid}",
        state=state,  # type: ignore[arg-type]
        slots_total=4,
        slots_free=4 - busy,
    )


def beat(
    workers: list[WorkerStatus],
    *,
    hive: str = "h1",
    free_mb: int = 8 * GB,
    models: list[str] | None = None,
) -> HiveHeartbeat:
    if models is None:
        models = []
    return HiveHeartbeat(
        hive=hive,
        url=f"http://{hive}.test:7835",
        host=HostTelemetry(cpu_count=8, load_1m=0.0, ram_total_mb=16 * GB, ram_free_mb=free_mb),
        workers=workers,
        models=models,
    )


class FakeHive:
    """Answers the hive API's spawn and retire, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.pulls: list[dict[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if request.method == "DELETE":
            wid = request.url.path.rsplit("/", 1)[1]
            return httpx.Response(200, json={"id": wid, "exit_code": 0})
        if request.method == "POST" and request.url.path == "/v1/workers":
            body = json.loads(request.content)
            assert body["wait"] is True  # the queen routes to it as soon as it is ready
            status = worker("w-new", body["model"])
            return httpx.Response(202, content=wire.encode(status))
        if request.method == "POST" and request.url.path == "/v1/models/pull":
            self.pulls.append(json.loads(request.content))
            pulled = b'{"type":"pulled","name":"new","size_bytes":5,"downloaded_bytes":5,'
            pulled += b'"resumed_bytes":0}'
            body = b"data: " + pulled + b"\n\ndata: [DONE]\n\n"
            return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})
        return httpx.Response(404, json={"error": {"message": "no such route"}})


@pytest.fixture
def fake_hive() -> FakeHive:
    return FakeHive()


@pytest.fixture
async def hives(fake_hive: FakeHive) -> Hives:
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake_hive.handler))
    return Hives(Registry(trio.current_time), client, client, keep_alive_s=60.0)


async def test_last_used_follows_jobs_and_busy_reports(autojump_clock: trio.abc.Clock) -> None:
    registry = Registry(trio.current_time)
    registry.heartbeat(beat([worker("a", "m1"), worker("b", "m1")]))
    await trio.sleep(10)
    registry.acquire("a")
    await trio.sleep(5)
    assert [w.id for w in registry.idle_longer_than(12)] == ["b"]
    registry.release("a")
    await trio.sleep(10)
    # b reports a request that did not come through the queen: that is a use too.
    registry.heartbeat(beat([worker("a", "m1"), worker("b", "m1", busy=1)]))
    await trio.sleep(3)
    registry.heartbeat(beat([worker("a", "m1"), worker("b", "m1")]))
    assert [w.id for w in registry.idle_longer_than(9)] == ["a"]
    assert registry.idle_longer_than(14) == []  # a: idle 13 s, b: 3 s


async def test_eviction_order_is_least_recently_used_model_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = Registry(trio.current_time)
    registry.heartbeat(beat([worker("a1", "alpha"), worker("b1", "beta"), worker("b2", "beta")]))
    registry.heartbeat(beat([worker("g1", "alpha")], hive="h2"))
    await trio.sleep(1)
    registry.acquire("b1")
    registry.release("b1")
    await trio.sleep(1)
    order = registry.eviction_order("h1")
    assert [[w.id for w in group] for group in order] == [["a1"], ["b1", "b2"]]
    # alpha used on another hive since: now beta is the least recently used model.
    registry.acquire("g1")
    order = registry.eviction_order("h1")
    assert [[w.id for w in group] for group in order] == [["b1", "b2"], ["a1"]]
    # A worker with a job is never a candidate.
    assert all(w.id != "g1" for group in registry.eviction_order("h2") for w in group)


async def test_low_memory_spawn_retires_the_lru_models_idle_workers_first(
    hives: Hives, fake_hive: FakeHive, autojump_clock: trio.abc.Clock
) -> None:
    registry = hives.registry
    workers = [
        worker("old1", "old"),
        worker("old2", "old"),
        worker("kept", "old", pinned=True),
        worker("hot", "recent"),
    ]
    registry.heartbeat(beat(workers, free_mb=GB, models=["old", "recent", "new"]))
    await trio.sleep(5)
    registry.acquire("hot")
    registry.release("hot")
    await hives.spawn("h1", "new", "cpu")
    deletes = sorted(path for method, path in fake_hive.calls if method == "DELETE")
    assert deletes == ["/v1/workers/old1", "/v1/workers/old2"]
    assert fake_hive.calls[-1] == ("POST", "/v1/workers")
    # The new worker is in the registry before the hive's next heartbeat lists it.
    assert {w.id for w in registry.workers()} == {"kept", "hot", "w-new"}


async def test_no_eviction_with_enough_memory(hives: Hives, fake_hive: FakeHive) -> None:
    hives.registry.heartbeat(beat([worker("w1", "old")], free_mb=8 * GB, models=["new"]))
    await hives.spawn("h1", "new", "cpu")
    assert fake_hive.calls == [("POST", "/v1/workers")]


async def test_keep_alive_retires_only_workers_idle_past_it(
    hives: Hives, fake_hive: FakeHive, autojump_clock: trio.abc.Clock
) -> None:
    registry = hives.registry
    registry.heartbeat(
        beat([worker("idle", "m"), worker("used", "m"), worker("pin", "m", pinned=True)])
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hives.keep_alive)
        for _ in range(5):  # a job every 20 s keeps "used" alive
            await trio.sleep(20)
            registry.acquire("used")
            registry.release("used")
        nursery.cancel_scope.cancel()
    assert fake_hive.calls == [("DELETE", "/v1/workers/idle")]
    assert [w.id for w in registry.workers()] == ["used", "pin"]


async def test_unknown_or_offline_hive_is_a_clear_error(
    hives: Hives, autojump_clock: trio.abc.Clock
) -> None:
    with pytest.raises(NotFoundError, match=r"no hive named 'nope' \(known hives: none\)"):
        hives.client("nope")
    hives.registry.heartbeat(beat([worker("w", "m")]))
    await trio.sleep(10)
    assert hives.registry.expire() == ["h1"]
    with pytest.raises(ApiError, match="hive h1 is offline"):
        hives.client("h1")
    with pytest.raises(NotFoundError, match="no worker 'w'"):
        await hives.retire("w")


async def test_spawn_of_a_model_nowhere_to_be_found_says_so(hives: Hives) -> None:
    hives.registry.heartbeat(beat([]))
    with pytest.raises(ModelError, match="neither on hive h1 nor in the queen's store"):
        await hives.spawn("h1", "missing-model", "cpu")


async def test_a_model_the_hive_lacks_is_pulled_from_the_queens_store_first(
    hives: Hives, fake_hive: FakeHive, tmp_path: Path
) -> None:
    make_model(tmp_path / "store" / "new", "new", {"model.int4.onnx": 5})
    hives.store = ModelStore(tmp_path / "store")
    hives.registry.heartbeat(beat([], models=["other"]))
    await hives.spawn("h1", "new", "cpu")
    assert fake_hive.pulls == [{"name": "new", "source": "queen:", "precisions": ["int4"]}]
    assert fake_hive.calls == [("POST", "/v1/models/pull"), ("POST", "/v1/workers")]
    # The default model is imported by the worker itself: no pull.
    fake_hive.calls.clear()
    await hives.spawn("h1", DEFAULT_MODEL, "cpu")
    assert fake_hive.calls == [("POST", "/v1/workers")]


async def test_a_gpu_workers_pull_takes_the_fp16_graph_only(
    hives: Hives, fake_hive: FakeHive, tmp_path: Path
) -> None:
    sizes = {"model.int4.onnx": 5, "model.fp16.onnx": 5}
    make_model(tmp_path / "store" / "both", "both", sizes, precisions=("int4", "fp16"))
    make_model(tmp_path / "store" / "cpu-only", "cpu-only", {"model.int4.onnx": 5})
    hives.store = ModelStore(tmp_path / "store")
    hives.registry.heartbeat(beat([], models=["other"]))
    await hives.spawn("h1", "both", "cuda:0")
    assert fake_hive.pulls == [{"name": "both", "source": "queen:", "precisions": ["fp16"]}]
    # Refused before anything is sent: the store has no graph such a worker could run.
    fake_hive.calls.clear()
    with pytest.raises(ModelError, match=r"model cpu-only has no fp16 graph \(has: int4\)"):
        await hives.spawn("h1", "cpu-only", "cuda:0")
    assert fake_hive.calls == []


async def test_a_just_spawned_worker_survives_a_heartbeat_built_before_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    registry = Registry(trio.current_time)
    registry.heartbeat(beat([]))
    registry.add_worker("h1", worker("fresh", "m"))
    registry.heartbeat(beat([]))  # built by the hive before it started "fresh"
    assert [w.id for w in registry.workers()] == ["fresh"]
    await trio.sleep(3.5)  # the hive has reported for 3 intervals without it: it is gone
    registry.heartbeat(beat([]))
    assert registry.workers() == []
