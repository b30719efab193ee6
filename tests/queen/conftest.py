"""Fixtures for the queen's tests: a queen running in the test's own trio loop, fake workers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.queen.daemon import run_queen
from rbee.queen.dispatcher import Provisioner
from rbee.queen.scheduler import Scheduler


@dataclasses.dataclass
class QueenHandle:
    url: str
    config: QueenConfig
    stop: trio.Event
    stopped: trio.Event

    async def shutdown(self) -> None:
        self.stop.set()
        await self.stopped.wait()


async def start_queen(
    nursery: trio.Nursery,
    config: QueenConfig,
    scheduler: Scheduler | None = None,
    provisioner: Provisioner | None = None,
) -> QueenHandle:
    """Run a queen in ``nursery`` until its handle's `shutdown`."""
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[str]) -> None:
        try:
            await run_queen(
                config,
                scheduler=scheduler,
                provisioner=provisioner,
                shutdown=stop.wait,
                task_status=task_status,
            )
        finally:
            stopped.set()

    url: str = await nursery.start(run)
    return QueenHandle(url, config, stop, stopped)


@pytest.fixture
def queen_config(tmp_path: Path) -> QueenConfig:
    return QueenConfig(
        port=0, db=str(tmp_path / "queen.db"), retry_backoff_s=0.01, drain_grace_s=2.0
    )


@pytest.fixture
async def queen(nursery: trio.Nursery, queen_config: QueenConfig) -> QueenHandle:
    return await start_queen(nursery, queen_config)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def read_stream(client: httpx.AsyncClient, url: str) -> list[str]:
    """Every ``data:`` payload of an SSE stream, up to and including its terminal marker."""
    payloads: list[str] = []
    async with client.stream("GET", url) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
    return payloads


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate()`` until it is true (for effects that land in another process's task)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the effect has no event to wait on
            await trio.sleep(0.01)
