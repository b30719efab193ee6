"""Tenants share the queue within a priority: the order itself, then a real queen in platform mode."""

from __future__ import annotations

import dataclasses

import httpx
import trio

from rbee.config import QueenConfig
from rbee.queen.jobs import AdmissionQueue, Job
from rbee.wire.queen import InferOperation, Priority
from tests.queen.conftest import read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, register
from tests.queen.test_keys import bearer, create_key, secret


def job(seq: int, tenant: str, priority: Priority = "interactive") -> Job:
    request = InferOperation(model="m", prompt=f"{tenant}{seq}", priority=priority)
    return Job(
        id=f"{tenant}{seq}", seq=seq, request=request, created_at=0, admitted_at=0, tenant=tenant
    )


def serve(queue: AdmissionQueue, n: int) -> list[str]:
    """Take the head ``n`` times, as the dispatcher does when a slot frees up."""
    served = []
    for _ in range(n):
        head = queue.in_order()[0]
        queue.take(head.id)
        served.append(head.id)
    return served


def test_one_job_is_not_starved_by_a_hundred() -> None:
    queue = AdmissionQueue()
    for seq in range(1, 101):
        queue.push(job(seq, "a"))
    queue.push(job(101, "b"))
    assert [j.id for j in queue.in_order()[:3]] == ["a1", "b101", "a2"]
    assert serve(queue, 3) == ["a1", "b101", "a2"]


def test_tenants_alternate_while_both_have_jobs() -> None:
    queue = AdmissionQueue()
    for seq in range(1, 5):
        queue.push(job(seq, "a"))
    for seq in range(5, 9):
        queue.push(job(seq, "b"))
    assert serve(queue, 6) == ["a1", "b5", "a2", "b6", "a3", "b7"]


def test_priority_comes_before_turns_and_one_tenant_keeps_its_order() -> None:
    queue = AdmissionQueue()
    queue.push(job(1, "a", "batch"))
    queue.push(job(2, "a"))
    queue.push(job(3, "b", "batch"))
    queue.push(job(4, "a"))
    assert serve(queue, 4) == ["a2", "a4", "a1", "b3"]


def test_a_returning_tenant_starts_level_with_the_others() -> None:
    queue = AdmissionQueue()
    for seq in range(1, 4):
        queue.push(job(seq, "a"))
    assert serve(queue, 3) == ["a1", "a2", "a3"]
    for seq in range(4, 8):
        queue.push(job(seq, "b"))
    # a had 3 turns while nobody else wanted one: b starts at a's last turn, not 3 turns ahead.
    queue.push(job(8, "a"))
    assert serve(queue, 3) == ["b4", "b5", "a8"]
    queue.push(job(9, "a"))
    assert serve(queue, 3) == ["b6", "a9", "b7"]


async def test_platform_queen_serves_the_small_tenant_next(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, dataclasses.replace(queen_config, platform=True))
    worker = await FakeWorker(slots=1, tokens=1, hold=trio.Event()).start(nursery)
    await register(queen.url, "hive-a", worker, token=secret(queen))
    big = await create_key(http, queen, "big")
    small = await create_key(http, queen, "small")
    ids = []
    for n in range(20):
        body = {"operation": "infer", "model": "fake-model", "prompt": f"big{n}"}
        answer = await http.post(f"{queen.url}/v1/jobs", json=body, headers=bearer(big))
        ids.append((big, answer.json()["job_id"]))
    body = {"operation": "infer", "model": "fake-model", "prompt": "small"}
    answer = await http.post(f"{queen.url}/v1/jobs", json=body, headers=bearer(small))
    ids.append((small, answer.json()["job_id"]))
    assert worker.hold is not None
    worker.hold.set()
    for key, job_id in ids:
        async with httpx.AsyncClient(headers=bearer(key)) as client:
            payloads = await read_stream(client, f"{queen.url}/v1/jobs/{job_id}/stream")
        assert payloads[-1] == "[DONE]"
    assert [p.prompt for p in worker.posts][:3] == ["big0", "small", "big1"]
