"""Resumable job streams: every event has an SSE id, and a client that lost its connection gets
the rest with ``Last-Event-ID``, while the queen keeps the job's events."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import h11
import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.queen.client import QueenClient
from rbee.wire.queen import InferOperation
from rbee.wire.worker import Finished, Token
from tests.helpers import eventually
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import FakeWorker, register

BODY = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 50}


@pytest.fixture
async def queen(nursery: trio.Nursery, queen_config: QueenConfig) -> QueenHandle:
    config = dataclasses.replace(queen_config, reconnect_grace_s=30.0)
    return await start_queen(nursery, config)


async def events(
    url: str, headers: dict[str, str] | None = None, stop: int = 0
) -> list[tuple[str, str]]:
    """(id, data) of each event of a stream; the connection is closed after ``stop`` events.

    A raw connection, so that the test closes it exactly when it wants.
    """
    parts = httpx.URL(url)
    conn = h11.Connection(h11.CLIENT)
    sent = [("Host", parts.host), *(headers or {}).items()]
    request = h11.Request(method="GET", target=parts.raw_path, headers=sent)
    got: list[tuple[str, str]] = []
    event_id, body, pending = "", b"", b""
    async with await trio.open_tcp_stream(parts.host, parts.port or 80) as sock:
        await sock.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        while stop == 0 or len(got) < stop:
            if not (data := await sock.receive_some(4096)):
                break
            conn.receive_data(data)
            while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                if isinstance(event, h11.Response):
                    assert event.status_code == 200, event
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
            *lines, pending = (pending + body).split(b"\n")
            body = b""
            for line in (raw.decode() for raw in lines):
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    got.append((event_id, line[6:]))
            if got and got[-1][1] == "[DONE]":
                break
    return got[:stop] if stop else got


async def test_every_event_has_an_id_and_last_event_id_gives_the_rest(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=6, delay=0.01).start(nursery)
    await register(queen.url, "hive-a", worker)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    url = f"{queen.url}/v1/jobs/{job_id}/stream"
    head = await events(url, stop=3)
    assert [i for i, _ in head] == ["1", "2", "3"]
    rest = await events(url, {"Last-Event-ID": "3"})
    whole = head + rest
    assert [i for i, _ in whole] == [str(n) for n in range(1, 10)]
    assert whole[-1][1] == "[DONE]"
    tokens = [json.loads(d)["t"] for _, d in whole[:-1] if json.loads(d)["type"] == "token"]
    assert "".join(tokens) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert record["state"] == "completed"
    assert worker.deletes == []
    # A finished job's events are still there for a late reader.
    assert await events(url, {"Last-Event-ID": "8"}) == [("9", "[DONE]")]


async def test_a_last_event_id_the_job_never_sent_is_400(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=1).start(nursery)
    await register(queen.url, "hive-a", worker)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    url = f"{queen.url}/v1/jobs/{job_id}/stream"
    assert (await events(url))[-1][1] == "[DONE]"
    for bad in ("99", "x1"):
        r = await http.get(url, headers={"Last-Event-ID": bad})
        assert r.status_code == 400
        assert f"invalid Last-Event-ID header: {bad!r}" in r.json()["error"]["message"]


async def test_a_finished_jobs_events_go_after_events_kept_s(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, dataclasses.replace(queen_config, events_kept_s=0.0))
    worker = await FakeWorker(tokens=1).start(nursery)
    await register(queen.url, "hive-a", worker)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    url = f"{queen.url}/v1/jobs/{job_id}/stream"
    assert (await events(url))[-1][1] == "[DONE]"

    async def gone() -> bool:
        return (await http.get(url)).status_code == 410

    await eventually(gone, what="the stream dropped")


class DropOnce(httpx.BaseTransport):
    """A real transport whose first streamed answer breaks after ``after`` bytes."""

    def __init__(self, after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after = after
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        if len(self.requests) == 1:
            response.stream = _Breaking(response.stream, self.after)  # type: ignore[arg-type]
        return response


class _Breaking(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, after: int) -> None:
        self.inner, self.after = inner, after

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) > self.after:
                yield chunk[: self.after - sent]
                raise httpx.ReadError("connection reset by the test")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


async def test_the_client_reconnects_by_itself_and_loses_nothing(
    nursery: trio.Nursery, queen: QueenHandle
) -> None:
    worker = await FakeWorker(tokens=8, delay=0.02).start(nursery)
    await register(queen.url, "hive-a", worker)
    transport = DropOnce(after=300)
    job = InferOperation(model="fake-model", prompt="hi", max_tokens=50)

    def run() -> list[Any]:
        with QueenClient(queen.url, transport=transport) as client:
            return list(client.run(job))

    got = await trio.to_thread.run_sync(run)
    tokens = [e for e in got if isinstance(e, Token)]
    assert "".join(t.t for t in tokens) == "".join(f"tok{i} " for i in range(8))
    assert [t.i for t in tokens] == list(range(8))
    assert isinstance(got[-1], Finished)
    assert [r.method for r in transport.requests] == ["POST", "GET"]
    last = int(transport.requests[1].headers["last-event-id"])
    assert 1 <= last < 10
    assert worker.deletes == []
