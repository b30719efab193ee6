"""Fixtures for the queen's tests: a queen running in the test's own trio loop, fake workers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.decisions import Scheduler
from rbee.queen.daemon import run_queen
from rbee.queen.dispatcher import Provisioner
from rbee.queen.keys import secret_path
from tests.queen.fake_worker import QUEEN_SECRETS
from tests.queen.real_parts import RealWorker, real_worker


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
    *,
    provision: bool = False,
    store_dir: Path | None = None,
    local_hive: Sequence[str] | None = None,
) -> QueenHandle:
    """Run a queen in ``nursery`` until its handle's `shutdown` (options as for `run_queen`)."""
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[str]) -> None:
        try:
            await run_queen(
                config,
                scheduler=scheduler,
                provisioner=provisioner,
                provision=provision,
                store_dir=store_dir,
                local_hive=local_hive,
                shutdown=stop.wait,
                task_status=task_status,
            )
        finally:
            stopped.set()

    url: str = await nursery.start(run)
    QUEEN_SECRETS[url] = secret_path(config).read_text(encoding="ascii").strip()
    return QueenHandle(url, config, stop, stopped)


@pytest.fixture
def queen_config(tmp_path: Path) -> QueenConfig:
    return QueenConfig(
        port=0,
        db=str(tmp_path / "queen.db"),
        retry_backoff_s=0.01,
        drain_grace_s=2.0,
        reconnect_grace_s=0.0,
    )


@pytest.fixture
async def queen(nursery: trio.Nursery, queen_config: QueenConfig) -> QueenHandle:
    return await start_queen(nursery, queen_config)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def read_stream(
    client: httpx.AsyncClient, url: str, first_token: trio.Event | None = None
) -> list[str]:
    """Every ``data:`` payload of an SSE stream, up to and including its terminal marker.

    ``first_token`` is set as the first token event arrives.
    """
    payloads: list[str] = []
    async with client.stream("GET", url) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
                if first_token is not None and '"type":"token"' in line:
                    first_token.set()
    return payloads


@pytest.fixture(scope="session")
def shared_worker(model_store: Path) -> Iterator[RealWorker]:
    """A real worker on the default model for the tests that only use it (never kill it)."""
    with real_worker(model_store, "real-0") as worker:
        yield worker
