"""Retries: a worker that fails before the first token is replaced; after it, the job fails when
its tokens did not name their ids (`tests/queen/test_migration.py` has the streams that continue)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from rbee.wire.queen import WorkerStatus
from tests.queen.conftest import QueenHandle, read_stream
from tests.queen.fake_worker import FakeWorker, Mode, register


async def run_job(
    http: httpx.AsyncClient, queen: QueenHandle
) -> tuple[list[str], dict[str, object]]:
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi"}
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=body)).json()["job_id"]
    payloads = await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream")
    record: dict[str, object] = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    return payloads, record


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("refuse", "answered 500"),
        ("busy", "answered 429"),
        ("drop", "dropped the stream"),
        ("error", "the fake engine failed"),
    ],
)
async def test_failure_before_first_token_retries_on_another_worker(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient, mode: Mode, error: str
) -> None:
    bad = await FakeWorker(mode=mode).start(nursery)
    good = await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", bad, good)
    payloads, record = await run_job(http, queen)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    assert [e["type"] for e in events].count("started") == 1
    assert [e["type"] for e in events].count("token") == 5
    assert (record["state"], record["attempts"], record["worker"]) == ("completed", 2, good.id)
    log = record["attempt_log"]
    assert isinstance(log, list)
    assert [a["worker"] for a in log] == [bad.id, good.id]
    assert error in log[0]["error"]
    assert log[1]["error"] is None
    assert len(bad.posts) == 1
    assert len(good.posts) == 1


async def test_unreachable_worker_is_retried(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = WorkerStatus(
        id="gone",
        pid=2,
        model="fake-model",
        device="cpu",
        url=f"http://127.0.0.1:{port}",
        state="ready",
        slots_total=4,
        slots_free=4,
    )
    good = await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", gone, good)
    payloads, record = await run_job(http, queen)
    assert payloads[-1] == "[DONE]"
    assert record["attempts"] == 2
    log = record["attempt_log"]
    assert isinstance(log, list)
    assert "cannot reach worker gone" in log[0]["error"]


async def test_gives_up_after_max_attempts(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    bad = await FakeWorker(mode="refuse").start(nursery)
    await register(queen.url, "hive-a", bad)
    payloads, record = await run_job(http, queen)
    assert payloads[-1].startswith("[ERROR] gave up after 3 attempts")
    assert (record["state"], record["attempts"]) == ("failed", 3)
    assert len(bad.posts) == 3
    status = (await http.get(f"{queen.url}/v1/status")).json()
    assert any("answered 500" in e["message"] for e in status["recent_errors"])


async def test_failure_after_a_token_without_ids_is_not_retried(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    dying = await FakeWorker(mode="die", named_ids=False).start(nursery)
    spare = await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", dying, spare)
    payloads, record = await run_job(http, queen)
    assert json.loads(payloads[1]) == {"type": "token", "t": "tok0 ", "i": 0, "ids": []}
    assert payloads[-1].startswith("[ERROR]")
    assert "dropped the stream" in payloads[-1]
    assert (record["state"], record["attempts"]) == ("failed", 1)
    assert spare.posts == []
