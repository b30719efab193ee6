"""Fixtures for the hive tests: a stand-in queen and an in-process hive with stand-in workers."""

from __future__ import annotations

import io
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from rbee.config import HiveConfig
from rbee.hive.app import HiveState
from rbee.hive.daemon import run_hive
from tests.hive.fake_nvml import FakeNvml
from tests.hive.fakes import STANDIN_COMMAND, StandInQueen, make_model

MODEL = "tiny"


@pytest.fixture
async def queen(nursery: trio.Nursery) -> AsyncIterator[StandInQueen]:
    q = StandInQueen()
    q.url = await nursery.start(q.serve)
    yield q
    q.stop.set()


@dataclass
class Hive:
    state: HiveState
    client: httpx.AsyncClient
    stop: trio.Event
    stopped: trio.Event
    store_root: Path
    output: io.StringIO = field(default_factory=io.StringIO)


async def start_hive(
    nursery: trio.Nursery, tmp_path: Path, queen_url: str, **settings: object
) -> Hive:
    """A hive in this process whose workers are stand-ins; the model ``tiny`` is in its store."""
    store_root = tmp_path / "store"
    if not (store_root / MODEL).exists():
        make_model(store_root / MODEL, MODEL, {"model.int4.onnx": 1000, "tokenizer.json": 10})
    config = HiveConfig(
        host="127.0.0.1",
        port=0,
        name="test-hive",
        queen_url=queen_url,
        heartbeat_interval_s=0.2,
        # Long enough that a loaded machine never turns a clean stop into a kill.
        worker_stop_grace_s=10.0,
        worker_ready_timeout_s=10.0,
    )
    config = HiveConfig(**{**config.__dict__, **settings})
    stop, stopped = trio.Event(), trio.Event()
    out = io.StringIO()

    async def run(task_status: trio.TaskStatus[HiveState]) -> None:
        try:
            await run_hive(
                config,
                store_root,
                tmp_path / "state",
                worker_command=STANDIN_COMMAND,
                shutdown=stop.wait,
                out=out,
                task_status=task_status,
            )
        finally:
            stopped.set()

    state: HiveState = await nursery.start(run)
    client = httpx.AsyncClient(base_url=state.url, timeout=10.0)
    return Hive(state, client, stop, stopped, store_root, out)


@pytest.fixture
def nvml() -> FakeNvml | None:
    """The NVML the `hive` fixture's hive sees: the machine's own (None) unless overridden."""
    return None


@pytest.fixture
async def hive(
    nursery: trio.Nursery,
    tmp_path: Path,
    queen: StandInQueen,
    nvml: FakeNvml | None,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Hive]:
    if nvml is not None:
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
    h = await start_hive(nursery, tmp_path, queen.url)
    async with h.client:
        yield h
    h.stop.set()
    with trio.fail_after(10):
        await h.stopped.wait()
