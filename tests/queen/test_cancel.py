"""Cancellation reaches the worker: by DELETE, and when the client goes away."""

from __future__ import annotations

import json

import h11
import httpx
import trio

from tests.helpers import eventually
from tests.queen.conftest import QueenHandle, read_stream
from tests.queen.fake_worker import FakeWorker, register

BODY = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 1000}


async def test_delete_cancels_at_the_worker(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=1000, delay=0.01).start(nursery)
    await register(queen.url, "hive-a", worker)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    payloads: list[str] = []
    streaming = trio.Event()

    async def follow() -> None:
        url = f"{queen.url}/v1/jobs/{job_id}/stream"
        payloads.extend(await read_stream(http, url, first_token=streaming))

    async with trio.open_nursery() as inner:
        inner.start_soon(follow)
        await streaming.wait()
        record = (await http.delete(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert record["state"] == "cancelled"
    assert payloads[-1] == "[CANCELLED]"
    assert len(worker.deletes) == 1
    await eventually(lambda: len(worker.stopped) == 1)
    assert worker.finished == []


async def test_cancelling_a_waiting_job_never_reaches_a_worker(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(slots=1, tokens=1000, delay=0.01).start(nursery)
    await register(queen.url, "hive-a", worker)
    running = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    waiting = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    record = (await http.delete(f"{queen.url}/v1/jobs/{waiting}")).json()
    assert record["state"] == "cancelled"
    assert await read_stream(http, f"{queen.url}/v1/jobs/{waiting}/stream") == ["[CANCELLED]"]
    await http.delete(f"{queen.url}/v1/jobs/{running}")
    assert len(worker.posts) == 1


async def test_a_client_that_disconnects_cancels_its_job(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=1000, delay=0.01).start(nursery)
    await register(queen.url, "hive-a", worker)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    # A raw connection, so that the test closes it exactly when it wants.
    host, port = queen.url.removeprefix("http://").split(":")
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_tcp_stream(host, int(port)) as sock:
        request = h11.Request(
            method="GET", target=f"/v1/jobs/{job_id}/stream", headers=[("Host", host)]
        )
        await sock.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        received = b""
        while b'"type":"token"' not in received:
            received += await sock.receive_some(4096)
    await eventually(lambda: len(worker.deletes) == 1)
    await eventually(lambda: len(worker.stopped) == 1)
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert record["state"] == "cancelled"


async def test_a_client_that_disconnects_from_a_one_call_stream_cancels_its_job(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=1000, delay=0.01).start(nursery)
    await register(queen.url, "hive-a", worker)
    host, port = queen.url.removeprefix("http://").split(":")
    body = json.dumps(BODY).encode()
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", host),
        ("Accept", "text/event-stream"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    request = h11.Request(method="POST", target="/v1/jobs", headers=headers)
    async with await trio.open_tcp_stream(host, int(port)) as sock:
        data = conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await sock.send_all(data)
        received = b""
        while b'"type":"token"' not in received:
            received += await sock.receive_some(4096)
    job_id = received.split(b"rbee-job-id: ")[1].split(b"\r\n")[0].decode()
    await eventually(lambda: len(worker.deletes) == 1)
    await eventually(lambda: len(worker.stopped) == 1)
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert record["state"] == "cancelled"
