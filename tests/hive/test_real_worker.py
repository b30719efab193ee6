"""The real thing: ``rbee hive`` (the CLI) spawning ``rbee worker`` for the default model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from rbee import wire
from rbee.models.importer import DEFAULT_MODEL
from rbee.wire.hive import WorkerList, WorkerRetired
from rbee.wire.queen import WorkerStatus
from rbee.wire.worker import WorkerInfo
from tests.helpers import RBEE, eventually, gone
from tests.hive.fakes import StandInQueen

pytestmark = pytest.mark.slow

LISTENING = "rbee hive listening on "


@pytest.fixture
async def hive_process(
    nursery: trio.Nursery, queen: StandInQueen, model_store: Path, tmp_path: Path
) -> AsyncIterator[tuple[trio.Process, str]]:
    command = [
        *RBEE,
        "hive",
        "daemon",
        "--queen",
        queen.url,
        "--name",
        "real-hive",
        "--port",
        "0",
        "--models-dir",
        str(model_store),
        "--state-dir",
        str(tmp_path / "state"),
        "--heartbeat-interval",
        "0.2",
    ]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with trio.fail_after(20):
        line = (await proc.stdout.receive_some(4096)).decode()
    assert line.startswith(LISTENING), line
    try:
        yield proc, line.removeprefix(LISTENING).strip()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await proc.stdout.aclose()


async def test_real_worker_supervised_end_to_end(
    hive_process: tuple[trio.Process, str], queen: StandInQueen
) -> None:
    proc, url = hive_process
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        response = await client.post("/v1/workers", json={"model": DEFAULT_MODEL, "wait": True})
        assert response.status_code == 201, response.text
        first = wire.decode(response.content, WorkerStatus)
        assert first.state == "ready"
        info = wire.decode((await client.get(f"{first.url}/v1/info")).content, WorkerInfo)
        assert (info.model, info.pid) == (DEFAULT_MODEL, first.pid)

        await queen.wait_for(
            lambda: any(
                w.id == first.id and w.state == "ready" and w.rss_mb > 50
                for w in queen.heartbeats[-1].workers
            )
        )
        listed = wire.decode((await client.get("/v1/workers")).content, WorkerList)
        [status] = listed.workers
        assert status.pid == first.pid
        assert status.rss_mb > 50
        assert status.uptime_s > 0
        assert status.slots_total == info.slots_total

        retired = wire.decode(
            (await client.delete(f"/v1/workers/{first.id}")).content, WorkerRetired
        )
        assert (retired.exit_code, retired.killed) == (0, False)
        assert gone(first.pid)

        # A spawn may name the graph: the worker runs that one, not its device's default.
        body = {"model": DEFAULT_MODEL, "wait": True, "precision": "fp16"}
        response = await client.post("/v1/workers", json=body)
        second = wire.decode(response.content, WorkerStatus)
        info = wire.decode((await client.get(f"{second.url}/v1/info")).content, WorkerInfo)
        assert (info.precision, info.device) == ("fp16", "cpu")
        killed_at = trio.current_time()
        os.kill(second.pid, signal.SIGKILL)
        await queen.wait_for(lambda: bool(queen.exits), within=1.0)
        at, report = queen.exits[0]
        assert at - killed_at < 1.0
        assert (report.worker_id, report.exit_code) == (second.id, -signal.SIGKILL)
        assert any("rbee worker ready" in line for line in report.log_tail)

        response = await client.post("/v1/workers", json={"model": DEFAULT_MODEL, "wait": True})
        third = wire.decode(response.content, WorkerStatus)
    proc.kill()
    await proc.wait()
    await eventually(lambda: gone(third.pid), within=3.0)


async def test_the_zipapp_hive_runs_workers_from_the_same_zipapp(
    nursery: trio.Nursery, pyz: Path, model_store: Path, tmp_path: Path
) -> None:
    command = [sys.executable, str(pyz), "hive", "daemon", "--queen", "http://127.0.0.1:9"]
    command += ["--port", "0"]
    command += ["--models-dir", str(model_store), "--state-dir", str(tmp_path)]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with trio.fail_after(120):  # the first start of a zipapp unpacks it
            line = (await proc.stdout.receive_some(4096)).decode()
        url = line.removeprefix(LISTENING).strip()
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            response = await client.post("/v1/workers", json={"model": DEFAULT_MODEL, "wait": True})
            assert response.status_code == 201, response.text
            worker = wire.decode(response.content, WorkerStatus)
        cmdline = psutil.Process(worker.pid).cmdline()
        assert cmdline[:4] == [sys.executable, str(pyz), "worker", "daemon"]
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
        assert gone(worker.pid)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await proc.stdout.aclose()
