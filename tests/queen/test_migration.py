"""Streams that survive their worker, on fake workers: the queen continues a stream cut off mid-way
on another worker, resuming from the token ids it relayed, and the client sees one seamless stream.

The real worker and model are in `tests/queen/test_faults.py`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from tests.helpers import eventually
from tests.queen.conftest import QueenHandle, read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, Mode, register

WHOLE = "tok0 tok1 tok2 tok3 tok4 "


@pytest.fixture
def queen_config(tmp_path: Any) -> QueenConfig:
    # Silence is a stall after 0.2 s once a worker streams: the stall tests wait that long.
    return QueenConfig(
        port=0,
        db=str(tmp_path / "queen.db"),
        retry_backoff_s=0.01,
        drain_grace_s=2.0,
        stall_floor_s=0.2,
        first_event_timeout_s=5.0,
    )


async def run_job(
    http: httpx.AsyncClient, queen: QueenHandle, first_token: trio.Event | None = None
) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 50}
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=body)).json()["job_id"]
    payloads = await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream", first_token)
    record: dict[str, Any] = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    return [json.loads(p) for p in payloads[:-1]], payloads[-1], record


async def with_spare(
    nursery: trio.Nursery, queen: QueenHandle, mode: Mode
) -> tuple[FakeWorker, FakeWorker]:
    """A worker that misbehaves as ``mode`` says and a sound one, both on hive-a, in that order."""
    bad = await FakeWorker(mode=mode).start(nursery)
    spare = await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", bad, spare)
    return bad, spare


def text(events: list[dict[str, Any]]) -> str:
    return "".join(e["t"] for e in events if e["type"] == "token")


@pytest.mark.parametrize(
    ("mode", "error"),
    [("die", "dropped the stream"), ("stall", "stalled"), ("garbage", "broke")],
)
async def test_a_stream_cut_off_mid_way_continues_on_another_worker(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient, mode: Mode, error: str
) -> None:
    bad, spare = await with_spare(nursery, queen, mode)
    events, end, record = await run_job(http, queen)
    assert end == "[DONE]"
    assert text(events) == WHOLE
    assert [e["type"] for e in events] == ["started"] + ["token"] * 5 + ["finished"]
    assert [e["i"] for e in events if e["type"] == "token"] == list(range(5))
    assert events[-1]["usage"]["completion_tokens"] == 5
    resumed = spare.posts[0]
    assert resumed.resume is not None
    assert (resumed.resume.emitted_ids, resumed.max_tokens) == ([0], 49)
    assert resumed.seed == bad.posts[0].seed is not None
    assert (record["state"], record["attempts"], record["worker"]) == ("completed", 2, spare.id)
    assert error in record["attempt_log"][0]["error"]


async def test_a_stalled_worker_is_taken_out_of_rotation(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    stalled, spare = await with_spare(nursery, queen, "stall")
    assert (await run_job(http, queen))[1] == "[DONE]"
    # Its hive still reports it ready: that does not bring it back while it does not answer.
    await register(queen.url, "hive-a", stalled, spare)
    for _ in range(3):
        _, end, record = await run_job(http, queen)
        assert (end, record["worker"], record["attempts"]) == ("[DONE]", spare.id, 1)
    assert len(stalled.posts) == 1
    workers = (await http.get(f"{queen.url}/v1/status")).json()["workers"]
    assert {w["worker"]["id"]: w["stalled"] for w in workers} == {stalled.id: True, spare.id: False}


async def test_a_stalled_worker_that_answers_again_is_back_in_rotation(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker, _ = await with_spare(nursery, queen, "stall")
    assert (await run_job(http, queen))[1] == "[DONE]"
    worker.mode = "ok"

    async def back() -> bool:
        workers = (await http.get(f"{queen.url}/v1/status")).json()["workers"]
        return not any(w["stalled"] for w in workers)

    await eventually(back, what="the worker back in rotation")
    _, end, record = await run_job(http, queen)
    assert (end, record["attempts"]) == ("[DONE]", 1)


async def test_with_no_worker_left_the_stream_ends_with_the_reason(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    die = trio.Event()
    dying = await FakeWorker(mode="die", die_when=die).start(nursery)
    await register(queen.url, "hive-a", dying)
    first_token = trio.Event()
    result: list[Any] = []

    async def job() -> None:
        result.extend(await run_job(http, queen, first_token))

    async with trio.open_nursery() as inner:
        inner.start_soon(job)
        await first_token.wait()
        await register(queen.url, "hive-a")  # its hive reports it gone
        die.set()
    events, end, record = result
    assert text(events) == "tok0 "
    assert end.startswith("[ERROR] no worker serves model 'fake-model'")
    assert (record["state"], record["error"]) == ("failed", end.removeprefix("[ERROR] "))


async def test_a_stream_that_no_worker_takes_up_in_time_ends_with_the_reason(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, migrate_timeout_s=0.3)
    queen = await start_queen(nursery, config)
    dying = await FakeWorker(mode="die").start(nursery)
    hold = trio.Event()
    busy = await FakeWorker(slots=1, hold=hold).start(nursery)
    await register(queen.url, "hive-a", busy)
    body = {"operation": "infer", "model": "fake-model", "prompt": "hold"}
    held = (await http.post(f"{queen.url}/v1/jobs", json=body)).json()["job_id"]
    await register(queen.url, "hive-a", busy, dying)
    events, end, record = await run_job(http, queen)
    hold.set()
    assert text(events) == "tok0 "
    assert end.startswith("[ERROR] the stream broke off after 1 tokens")
    assert "within 0.3 s" in end
    assert record["state"] == "failed"
    payloads = await read_stream(http, f"{queen.url}/v1/jobs/{held}/stream")
    assert payloads[-1] == "[DONE]"


async def test_a_worker_that_dies_after_the_last_token_ends_the_job_as_completed(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    dying = await FakeWorker(mode="die").start(nursery)
    spare = await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", dying, spare)
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 1}
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=body)).json()["job_id"]
    payloads = await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream")
    events = [json.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == "[DONE]"
    assert text(events) == "tok0 "
    assert events[-1]["type"] == "finished"
    assert (events[-1]["finish_reason"], events[-1]["usage"]["completion_tokens"]) == ("length", 1)
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert (record["state"], record["tokens_out"]) == ("completed", 1)
    assert spare.posts == []
