"""Worker supervision through the hive's HTTP API, with stand-in workers (fast) and real processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import trio

from rbee import wire
from rbee.wire.hive import ShuttingDown, WorkerList, WorkerRetired
from rbee.wire.queen import HiveHeartbeat, WorkerStatus
from tests.helpers import eventually, gone
from tests.hive.conftest import MODEL, Hive, start_hive
from tests.hive.fake_nvml import FakeNvml
from tests.hive.fakes import StandInQueen


async def wait_state(hive: Hive, worker_id: str, state: str, within: float = 10.0) -> WorkerStatus:
    """The worker's status once the hive reports it in ``state``."""
    status: WorkerStatus | None = None

    async def reached() -> bool:
        nonlocal status
        response = await hive.client.get(f"/v1/workers/{worker_id}")
        status = wire.decode(response.content, WorkerStatus)
        return status.state == state

    await eventually(reached, within, f"worker {worker_id} {state}")
    assert status is not None
    return status


@pytest.fixture
def nvml() -> FakeNvml:
    """These hives run on a host without the NVIDIA driver, whatever this machine has."""
    return FakeNvml([], driver=False)


async def spawn(hive: Hive, headers: dict[str, str] | None = None, **body: object) -> WorkerStatus:
    response = await hive.client.post(
        "/v1/workers", json={"model": MODEL, **body}, headers=headers or {}
    )
    assert response.status_code in (201, 202), response.text
    return wire.decode(response.content, WorkerStatus)


async def test_spawn_ready_listed_with_telemetry_then_retired(hive: Hive) -> None:
    started = await spawn(hive)
    assert started.state == "loading"
    assert started.model == MODEL
    assert started.device == "cpu"
    ready = await wait_state(hive, started.id, "ready")
    assert ready.url.startswith("http://127.0.0.1:")

    await trio.sleep(0.3)
    listed = wire.decode((await hive.client.get("/v1/workers")).content, WorkerList).workers
    [status] = [w for w in listed if w.id == started.id]
    assert status.pid == started.pid
    assert psutil.Process(status.pid).cmdline()[2:5] == ["worker", "daemon", "--model"]
    assert status.rss_mb > 1
    assert status.uptime_s > 0.3
    assert (status.slots_total, status.slots_free) == (4, 4)

    response = await hive.client.delete(f"/v1/workers/{started.id}")
    assert response.status_code == 200
    retired = wire.decode(response.content, WorkerRetired)
    assert retired == WorkerRetired(id=started.id, exit_code=0, killed=False)
    assert gone(started.pid)
    assert (await hive.client.get(f"/v1/workers/{started.id}")).status_code == 404
    assert (await hive.client.delete(f"/v1/workers/{started.id}")).status_code == 404


async def test_spawn_wait_answers_when_ready_and_log_is_kept(hive: Hive) -> None:
    status = await spawn(hive, wait=True, slots=2)
    assert status.state == "ready"
    assert status.slots_total == 2
    assert not status.pinned
    log = (await hive.client.get(f"/v1/workers/{status.id}/log")).json()
    assert any("standin serving model=tiny" in line for line in log["lines"])
    log_file = Path(log["path"])
    await eventually(lambda: "standin serving" in log_file.read_text())


async def test_retire_kills_a_worker_that_ignores_sigterm(
    nursery: trio.Nursery,
    tmp_path: Path,
    queen: StandInQueen,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STANDIN_IGNORE_SIGTERM", "1")
    hive = await start_hive(nursery, tmp_path, queen.url, worker_stop_grace_s=1.0)
    async with hive.client:
        status = await spawn(hive, wait=True)
        start = trio.current_time()
        response = await hive.client.delete(f"/v1/workers/{status.id}")
        took = trio.current_time() - start
    retired = wire.decode(response.content, WorkerRetired)
    assert retired.killed
    assert retired.exit_code == -signal.SIGKILL
    assert took >= 1.0  # the whole grace period, then SIGKILL
    assert gone(status.pid)
    hive.stop.set()
    with trio.fail_after(10):
        await hive.stopped.wait()


async def test_kill_9_reaches_the_queen_within_a_second(hive: Hive, queen: StandInQueen) -> None:
    status = await spawn(hive, wait=True)
    killed_at = trio.current_time()
    os.kill(status.pid, signal.SIGKILL)
    await queen.wait_for(lambda: bool(queen.exits), within=1.0)
    at, report = queen.exits[0]
    assert at - killed_at < 1.0
    assert report.worker_id == status.id
    assert report.hive == "test-hive"
    assert report.model == MODEL
    assert report.exit_code == -signal.SIGKILL
    assert any("standin serving model=tiny" in line for line in report.log_tail)
    listed = wire.decode((await hive.client.get("/v1/workers")).content, WorkerList)
    assert listed.workers == []


async def test_a_worker_that_fails_to_load_is_a_clear_error_and_a_report(
    hive: Hive, queen: StandInQueen, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_EXIT_BEFORE_READY", "3")
    response = await hive.client.post("/v1/workers", json={"model": MODEL, "wait": True})
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "exit code 3" in message
    assert "cannot load the model" in message
    await queen.wait_for(lambda: bool(queen.exits), within=1.0)
    assert queen.exits[0][1].exit_code == 3


async def test_busy_when_no_slot_is_free(hive: Hive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_SLOTS_FREE", "0")
    status = await spawn(hive, wait=True)
    busy = await wait_state(hive, status.id, "busy", within=3.0)
    assert busy.slots_free == 0


async def test_heartbeats_decode_and_carry_host_and_workers(
    hive: Hive, queen: StandInQueen
) -> None:
    status = await spawn(hive, wait=True)
    await queen.wait_for(lambda: any(w.state == "ready" for w in queen.heartbeats[-1].workers))
    beat = queen.heartbeats[-1]
    assert beat.hive == "test-hive"
    assert beat.url == hive.state.url
    assert beat.models == [MODEL]
    assert beat.interval_s == 0.2
    assert beat.host.cpu_count == os.cpu_count()
    assert 0 < beat.host.ram_free_mb <= beat.host.ram_total_mb
    assert len(beat.host.gpus) == hive.state.supervisor.gpus.count
    [worker] = beat.workers
    assert (worker.pid, worker.state, worker.device) == (status.pid, "ready", "cpu")
    assert worker.provider == "StandIn"  # from its ready line
    assert worker.rss_mb > 1
    snapshot = wire.decode((await hive.client.get("/v1/status")).content, HiveHeartbeat)
    assert snapshot.workers[0].id == status.id


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "unknown-model"}, 404, "not on hive test-hive"),
        ({"model": "../etc"}, 400, "invalid model name"),
        ({"model": "a/b"}, 400, "invalid model name"),
        (
            {"model": MODEL, "device": "cuda:0"},
            400,
            "no device cuda:0 on this host (it has no NVIDIA GPU)",
        ),
        ({"model": MODEL, "device": "tpu"}, 400, "invalid device"),
        ({"model": MODEL, "slots": 0}, 400, "slots"),
        ({"device": "cpu"}, 400, "model"),
        ({"model": MODEL, "precision": "int8"}, 400, "precision"),
        ({"model": MODEL, "precision": "fp32"}, 422, "model tiny has no fp32 graph (has: int4)"),
    ],
)
async def test_spawn_refuses_bad_input(
    hive: Hive, body: dict[str, object], status: int, words: str
) -> None:
    response = await hive.client.post("/v1/workers", json=body)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]
    assert hive.state.supervisor.workers == {}


async def test_stopping_the_hive_retires_every_worker(hive: Hive) -> None:
    pids = [(await spawn(hive, wait=True)).pid for _ in range(2)]
    hive.stop.set()
    with trio.fail_after(5):
        await hive.stopped.wait()
    assert all(gone(pid) for pid in pids)


async def test_a_queen_that_is_down_does_not_stop_the_hive(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hive = await start_hive(
        nursery, tmp_path, f"http://127.0.0.1:{port}", heartbeat_interval_s=0.05
    )
    async with hive.client:
        await trio.sleep(1.0)
        assert (await hive.client.get("/health")).status_code == 200
        warnings = [
            r for r in caplog.records if r.getMessage().startswith("heartbeat to the queen failed")
        ]
        assert len(warnings) == 1
        queen = StandInQueen()
        queen.url = await nursery.start(queen.serve, port)
        await queen.wait_for(lambda: bool(queen.heartbeats), within=5.0)
        await eventually(
            lambda: any(r.getMessage() == "heartbeats to the queen resumed" for r in caplog.records)
        )
        hive.stop.set()
        queen.stop.set()


async def test_a_pinned_worker_says_so_in_every_report(hive: Hive, queen: StandInQueen) -> None:
    status = await spawn(hive, wait=True, pinned=True)
    assert status.pinned
    listed = wire.decode((await hive.client.get("/v1/workers")).content, WorkerList).workers
    assert [w.pinned for w in listed if w.id == status.id] == [True]
    seen = len(queen.heartbeats)
    await eventually(lambda: len(queen.heartbeats) > seen + 1)
    reported = [w for beat in queen.heartbeats for w in beat.workers if w.id == status.id]
    assert len(reported) >= 2
    assert all(w.pinned for w in reported)


async def test_post_shutdown_with_the_token_retires_the_workers_and_stops_the_hive(
    nursery: trio.Nursery, tmp_path: Path, queen: StandInQueen
) -> None:
    hive = await start_hive(nursery, tmp_path, queen.url, token="hive-secret-long-enough")
    async with hive.client:
        refused = await hive.client.post("/v1/shutdown")
        assert refused.status_code == 401
        auth = {"Authorization": "Bearer hive-secret-long-enough"}
        pids = [(await spawn(hive, auth, wait=True)).pid for _ in range(2)]
        answer = await hive.client.post("/v1/shutdown", headers=auth)
        assert answer.status_code == 202, answer.text
        body = wire.decode(answer.content, ShuttingDown)
        assert (body.hive, body.pid, body.workers) == ("test-hive", os.getpid(), 2)
        with trio.fail_after(10):
            await hive.stopped.wait()
    assert all(gone(pid) for pid in pids)
