"""The overview's live events and a worker's log through the queen (`rbee.queen.ui`)."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator

import httpx
import msgspec
import trio
from quart import Response, request

from rbee import sse, wire
from rbee.errors import ModelError
from rbee.queen.ui import RATE_WINDOW_S, tokens_per_s
from rbee.server import create_app, json_response, serve
from rbee.wire.hive import Importing, Pulled, PullRequest, WorkerLog
from rbee.wire.queen import GpuTelemetry, HostTelemetry, JobInfo
from rbee.wire.ui import Overview
from tests.queen.conftest import QueenHandle, read_stream
from tests.queen.fake_worker import FakeWorker, heartbeat, hive_auth


async def first_events(url: str, count: int) -> list[Overview]:
    """The first ``count`` events of the overview stream, read off a plain socket.

    (An httpx stream left before its end leaves a generator for the garbage collector.)
    """
    address = httpx.URL(url)
    assert address.host
    assert address.port
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        request = f"GET /v1/ui/events HTTP/1.1\r\nHost: {address.host}\r\n\r\n"
        await stream.send_all(request.encode())
        received = b""
        while received.count(b"\ndata: ") < count + 1:
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/event-stream" in head.lower()
    payloads = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    return [wire.decode(p, Overview) for p in payloads[:count]]


async def test_the_overview_streams_hives_gpus_workers_and_their_token_rates(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=7).start(nursery)
    gpu = GpuTelemetry(
        index=0, name="RTX 4090", util_pct=40.0, vram_total_mb=24564, vram_used_mb=8000,
        power_w=210.0, temperature_c=61.0,
    )  # fmt: skip
    beat = heartbeat("hive-a", [worker.status()])
    host = HostTelemetry(cpu_count=8, load_1m=1.5, ram_total_mb=32000, ram_free_mb=9000, gpus=[gpu])
    beat = msgspec.structs.replace(beat, host=host)
    posted = await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(beat), headers=hive_auth(queen.url)
    )
    assert posted.status_code == 204
    job = {"operation": "infer", "model": "fake-model", "prompt": "hi"}
    accepted = (await http.post(f"{queen.url}/v1/jobs", json=job)).json()
    assert (await read_stream(http, queen.url + accepted["sse_url"]))[-1] == "[DONE]"

    first, second = await first_events(queen.url, 2)
    assert second.at > first.at
    status = first.status
    assert [h.name for h in status.hives] == ["hive-a"]
    assert status.hives[0].host.gpus == [gpu]
    assert [(e.hive, e.worker.id) for e in status.workers] == [("hive-a", worker.id)]
    assert first.tokens_per_s == {worker.id: 7 / RATE_WINDOW_S}


def test_token_rates_count_the_jobs_that_ended_within_the_window() -> None:
    def job(worker: str | None, finished_at: float | None, tokens: int | None) -> JobInfo:
        return JobInfo(
            id="j", operation="infer", model="m", priority="interactive", state="completed",
            created_at=0.0, worker=worker, finished_at=finished_at, tokens_out=tokens,
        )  # fmt: skip

    jobs = [
        job("w1", 95.0, 30),
        job("w1", 99.0, 20),
        job("w2", 80.0, 100),  # ended before the window
        job(None, 99.0, 10),  # never ran on a worker
        job("w3", 98.0, None),  # no count: none produced
    ]
    assert tokens_per_s(jobs, now=100.0, window_s=10.0) == {"w1": 5.0, "w3": 0.0}


async def test_a_workers_log_is_read_from_its_hive(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    hive = create_app("fake-hive")
    asked: list[str] = []

    @hive.get("/v1/workers/<worker_id>/log")
    async def log(worker_id: str) -> Response:
        asked.append(worker_id)
        return json_response(WorkerLog(id=worker_id, lines=["loading", "ready"], path="/x/log"))

    url = await nursery.start(
        functools.partial(serve, hive, "127.0.0.1", 0, shutdown=trio.sleep_forever)
    )
    worker = FakeWorker(url="http://127.0.0.1:1")
    beat = msgspec.structs.replace(heartbeat("hive-a", [worker.status()]), url=url)
    await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(beat), headers=hive_auth(queen.url)
    )
    answer = await http.get(f"{queen.url}/v1/workers/{worker.id}/log")
    assert answer.status_code == 200
    assert json.loads(answer.text) == {
        "id": worker.id,
        "lines": ["loading", "ready"],
        "path": "/x/log",
    }
    assert asked == [worker.id]
    unknown = await http.get(f"{queen.url}/v1/workers/nobody/log")
    assert unknown.status_code == 404
    assert "nobody" in unknown.json()["error"]["message"]


async def test_an_import_streams_the_hives_progress_for_a_gguf_on_its_host(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    hive = create_app("fake-hive")
    asked: list[PullRequest] = []

    async def events() -> AsyncGenerator[bytes, None]:
        yield sse.event(wire.encode(Importing(file="model.int4.onnx", step=1, steps=2)))
        yield sse.event(wire.encode(Pulled(name="copy", size_bytes=10, downloaded_bytes=0, resumed_bytes=0)))  # fmt: skip
        yield sse.event(sse.DONE)

    @hive.post("/v1/models/pull")
    async def pull() -> Response:
        asked.append(wire.decode(await request.get_data(), PullRequest))
        if asked[-1].source == "/models/bad.gguf":
            raise ModelError("/models/bad.gguf has no tokenizer in its metadata")
        return Response(events(), headers=sse.SSE_HEADERS)

    url = await nursery.start(
        functools.partial(serve, hive, "127.0.0.1", 0, shutdown=trio.sleep_forever)
    )
    beat = msgspec.structs.replace(heartbeat("hive-a", []), url=url)
    await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(beat), headers=hive_auth(queen.url)
    )
    body = {"name": "copy", "path": "/models/x.gguf"}
    payloads = await read_stream_post(http, f"{queen.url}/v1/hives/hive-a/models/import", body)
    assert [json.loads(p)["type"] for p in payloads[:-1]] == ["import", "pulled"]
    assert payloads[-1] == "[DONE]"
    assert asked == [PullRequest(name="copy", source="/models/x.gguf")]

    relative = {"name": "copy", "path": "x.gguf"}
    refused = await http.post(f"{queen.url}/v1/hives/hive-a/models/import", json=relative)
    assert refused.status_code == 400
    assert "$.path" in refused.json()["error"]["message"]
    unknown = await http.post(f"{queen.url}/v1/hives/hive-b/models/import", json=body)
    assert unknown.status_code == 404
    bad_name = await http.post(f"{queen.url}/v1/hives/hive%20a/models/import", json=body)
    assert bad_name.status_code == 400
    assert "name" in bad_name.json()["error"]["message"]

    # The hive's refusal is the answer's status, not an error event in a 200 stream.
    bad = {"name": "copy", "path": "/models/bad.gguf"}
    unreadable = await http.post(f"{queen.url}/v1/hives/hive-a/models/import", json=bad)
    assert unreadable.status_code == 422, unreadable.text
    assert "no tokenizer" in unreadable.json()["error"]["message"]


async def read_stream_post(http: httpx.AsyncClient, url: str, body: object) -> list[str]:
    async with http.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
