"""A worker app served in the test's trio loop on the fake engine, and a client for it."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from rbee import server
from rbee.worker.app import WorkerState, create_worker_app
from rbee.worker.scheduler import Scheduler
from tests.helpers import eventually
from tests.worker.fakes import FakeEngine, FakeTokenizer

__all__ = ["Worker", "start_worker"]


class Worker:
    def __init__(self, url: str, state: WorkerState, engine: FakeEngine) -> None:
        self.url = url
        self.state = state
        self.engine = engine
        self.client = httpx.AsyncClient(base_url=url, timeout=10)

    async def start(self, body: dict[str, Any]) -> str:
        r = await self.client.post("/v1/inference", json=body)
        assert r.status_code == 202, r.text
        sse_url: str = r.json()["sse_url"]
        assert sse_url == f"/v1/inference/{r.json()['job_id']}/stream"
        assert r.json()["job_id"].startswith("job-")
        return sse_url

    async def events(self, sse_url: str) -> list[str]:
        async with self.client.stream("GET", sse_url) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            return [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]

    async def info(self) -> dict[str, Any]:
        r = await self.client.get("/v1/info")
        assert r.status_code == 200
        data: dict[str, Any] = r.json()
        return data

    async def wait_slots_free(self, n: int) -> None:
        async def reached() -> bool:
            return bool((await self.info())["slots_free"] == n)

        await eventually(reached, what=f"{n} free slots")


async def start_worker(
    nursery: trio.Nursery,
    engine: FakeEngine,
    tokenizer: FakeTokenizer | None = None,
    *,
    queue_size: int = 4,
    unopened_timeout_s: float = 30.0,
    ready: bool = True,
) -> Worker:
    tokenizer = tokenizer or FakeTokenizer()
    state = WorkerState(model="fake", precision="fp32", device="cpu", slots=engine.slots)
    if ready:
        scheduler = Scheduler(
            engine, tokenizer, queue_size=queue_size, unopened_timeout_s=unopened_timeout_s
        )
        nursery.start_soon(scheduler.run)
        state.ready(scheduler, tokenizer, "FakeProvider")
    stop = trio.Event()
    url: str = await nursery.start(
        lambda task_status: server.serve(
            create_worker_app(state), "127.0.0.1", 0, shutdown=stop.wait, task_status=task_status
        )
    )
    return Worker(url, state, engine)
