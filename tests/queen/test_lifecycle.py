"""The queen's records outlive it: restart keeps every job, queued ones run after; draining."""

from __future__ import annotations

import dataclasses
import functools

import httpx
import trio

from rbee.config import QueenConfig
from tests.helpers import eventually
from tests.queen.conftest import read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, register

BODY = {"operation": "infer", "model": "fake-model", "prompt": "hi"}


async def draining(http: httpx.AsyncClient, url: str) -> bool:
    """Whether the queen at ``url`` has begun to drain."""
    return bool((await http.get(f"{url}/v1/status")).json()["draining"])


async def test_restart_keeps_every_record_and_runs_the_queued_jobs(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, drain_grace_s=0.1)
    worker = await FakeWorker(slots=1, tokens=200, delay=0.01).start(nursery)
    first = await start_queen(nursery, config)
    await register(first.url, "hive-a", worker)
    worker.tokens = 3
    done = (await http.post(f"{first.url}/v1/jobs", json=BODY)).json()["job_id"]
    assert (await read_stream(http, f"{first.url}/v1/jobs/{done}/stream"))[-1] == "[DONE]"
    worker.tokens = 200
    running = (await http.post(f"{first.url}/v1/jobs", json=BODY)).json()["job_id"]
    queued = [
        (await http.post(f"{first.url}/v1/jobs", json={**BODY, "prompt": p})).json()["job_id"]
        for p in ("q1", "q2")
    ]
    # A job stopped after its first token fails; one stopped before it would be queued again.
    streaming = trio.Event()
    async with trio.open_nursery() as follow:
        url = f"{first.url}/v1/jobs/{running}/stream"
        follow.start_soon(functools.partial(read_stream, http, url, first_token=streaming))
        await streaming.wait()
        await first.shutdown()
    assert len(worker.posts) == 2

    worker.tokens = 3
    second = await start_queen(nursery, config)
    jobs = (await http.get(f"{second.url}/v1/jobs")).json()["jobs"]
    states = {j["id"]: j["state"] for j in jobs}
    assert states[done] == "completed"
    assert states[running] == "failed"
    assert [states[q] for q in queued] == ["queued", "queued"]
    record = (await http.get(f"{second.url}/v1/jobs/{running}")).json()
    assert record["error"] == "the queen shut down while the job ran"
    assert record["attempt_log"][0]["error"] == "shutdown"

    await register(second.url, "hive-a", worker)
    for job_id in queued:
        assert (await read_stream(http, f"{second.url}/v1/jobs/{job_id}/stream"))[-1] == "[DONE]"
        assert (await http.get(f"{second.url}/v1/jobs/{job_id}")).json()["state"] == "completed"
    assert [p.prompt for p in worker.posts[2:]] == ["q1", "q2"]
    await second.shutdown()


async def test_drain_lets_running_jobs_finish_and_refuses_new_ones(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=20, delay=0.02).start(nursery)
    queen = await start_queen(nursery, queen_config)
    await register(queen.url, "hive-a", worker)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    payloads: list[str] = []

    async def follow() -> None:
        payloads.extend(await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream"))

    async with trio.open_nursery() as inner:
        inner.start_soon(follow)
        await eventually(lambda: len(worker.posts) == 1)
        queen.stop.set()
        await eventually(functools.partial(draining, http, queen.url))
        refused = await http.post(f"{queen.url}/v1/jobs", json=BODY)
        assert refused.status_code == 503
        assert "shutting down" in refused.json()["error"]["message"]
    await queen.stopped.wait()
    assert payloads[-1] == "[DONE]"
    assert sum(1 for p in payloads if '"token"' in p) == 20


async def test_a_stopped_job_without_tokens_is_queued_again(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, drain_grace_s=0.05)
    slow = await FakeWorker(tokens=1, delay=5.0).start(nursery)
    first = await start_queen(nursery, config)
    await register(first.url, "hive-a", slow)
    job_id = (await http.post(f"{first.url}/v1/jobs", json=BODY)).json()["job_id"]
    await eventually(lambda: len(slow.posts) == 1)
    await first.shutdown()
    assert slow.deletes
    second = await start_queen(nursery, config)
    assert (await http.get(f"{second.url}/v1/jobs/{job_id}")).json()["state"] == "queued"
    await second.shutdown()
