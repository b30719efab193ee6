"""No race at start: a job sent before the queen's own hive has reported waits for it; so does
one that only a hive being upgraded could take.

The dispatcher's tests run on trio's virtual clock (the bound is 30 s); the queen's test holds its
local hive back (a process that never reports) and reports for it when the test says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
import trio.testing

from rbee.config import QueenConfig
from rbee.errors import ModelNotFoundError
from rbee.hive.queen_link import MAX_BACKOFF_S
from rbee.queen.app import last_event_id
from rbee.queen.db import open_db
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.local_hive import LOCAL_HIVE
from rbee.queen.registry import STALE_INTERVALS
from rbee.queen.scheduler import builtin
from rbee.queen.store import HiveStore, JobStore
from rbee.wire.queen import InferOperation
from tests.queen.conftest import read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, heartbeat, register

BOUND_S = 30.0


@dataclasses.dataclass
class StoreProvisioner:
    """Brings the models in ``store`` (as the queen's store would) and records each spawn."""

    store: set[str]
    calls: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    async def spawn(self, hive: str, model: str, device: str) -> None:
        self.calls.append((hive, model, device))
        await trio.sleep_forever()

    def provides(self, model: str) -> bool:
        return model in self.store


@contextlib.asynccontextmanager
async def queen_on(path: str, provisioner: StoreProvisioner) -> AsyncIterator[Dispatcher]:
    """A dispatcher on the database at ``path``, running until the block ends."""
    conn = open_db(path)
    dispatcher = Dispatcher(QueenConfig(), conn, builtin("first-available"), provisioner)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            yield dispatcher
            nursery.cancel_scope.cancel()
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def starting_queen(provisioner: StoreProvisioner) -> AsyncIterator[Dispatcher]:
    """A dispatcher whose local hive has been started and has not reported yet."""
    async with queen_on(":memory:", provisioner) as dispatcher:
        dispatcher.expect_hive(LOCAL_HIVE, BOUND_S)
        yield dispatcher


def infer(model: str) -> InferOperation:
    return InferOperation(model=model, prompt="hi")


async def test_jobs_wait_for_the_starting_hive_and_are_decided_when_it_reports(
    autojump_clock: trio.abc.Clock,
) -> None:
    provisioner = StoreProvisioner({"stored"})
    async with starting_queen(provisioner) as dispatcher:
        stored = dispatcher.submit(infer("stored"))
        # Not in the queen's store, but the starting hive may have it: it waits too.
        unknown = dispatcher.submit(infer("nope"))
        await trio.sleep(BOUND_S - 1)
        assert (stored.state, unknown.state) == ("queued", "queued")
        assert provisioner.calls == []
        dispatcher.heartbeat(msgspec.structs.replace(heartbeat(LOCAL_HIVE, []), models=[]))
        await trio.testing.wait_all_tasks_blocked()
        assert provisioner.calls == [(LOCAL_HIVE, "stored", "cpu")]
        assert unknown.state == "failed"
        assert isinstance(unknown.failure, ModelNotFoundError)
        # The hive has reported: a model nobody has is refused at once.
        with pytest.raises(ModelNotFoundError, match="no worker serves model 'nope'"):
            dispatcher.submit(infer("nope"))


async def test_a_hive_that_never_reports_fails_the_job_at_the_bound_naming_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    provisioner = StoreProvisioner({"stored"})
    async with starting_queen(provisioner) as dispatcher:
        started = trio.current_time()
        job = dispatcher.submit(infer("stored"))
        await job.done.wait()
        assert trio.current_time() - started >= BOUND_S
        assert job.state == "failed"
        assert job.error is not None
        assert job.error.startswith("no worker serves model 'stored'")
        assert job.error.endswith(f"(hive {LOCAL_HIVE} did not report within 30 s of its start)")
        assert provisioner.calls == []


async def test_a_queen_holds_a_job_until_its_local_hive_reports(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    # A local hive that never reports by itself: the test reports for it.
    held_back = [sys.executable, "-c", "import time; time.sleep(600)"]
    queen = await start_queen(nursery, queen_config, local_hive=held_back)
    body = {"model": "fake-model", "prompt": "hi"}
    accepted = await http.post(f"{queen.url}/v1/jobs", json=body)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()["state"] == "queued"
    await register(queen.url, LOCAL_HIVE, await FakeWorker().start(nursery))
    assert (await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream"))[-1] == "[DONE]"


def left_by_a_killed_queen(path: str) -> None:
    """The records a queen killed outright leaves: hive-a online, a job queued, one running."""
    conn = open_db(path)
    try:
        HiveStore(conn).seen("hive-a", "http://127.0.0.1:1", {}, time.time())
        records = JobStore(conn)
        for seq, job_id in enumerate(("job-queued", "job-running"), start=1):
            records.insert(job_id, seq, infer("stored"), time.time(), None, "")
        records.update("job-running", state="running", worker="w-1", attempts=1)
        records.start_attempt("job-running", 1, "w-1", time.time())
    finally:
        conn.close()


async def test_a_restarted_queen_holds_its_queued_jobs_until_its_hives_report_again(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    path = str(tmp_path / "queen.db")
    left_by_a_killed_queen(path)
    provisioner = StoreProvisioner({"stored"})
    async with queen_on(path, provisioner) as dispatcher:
        queued = dispatcher.jobs["job-queued"]
        # Past the grace every re-admitted job gets (3 heartbeat intervals), within the hold.
        await trio.sleep(STALE_INTERVALS * QueenConfig().heartbeat_interval_s + MAX_BACKOFF_S / 2)
        assert (queued.state, provisioner.calls) == ("queued", [])
        dispatcher.heartbeat(heartbeat("hive-a", []))
        await trio.testing.wait_all_tasks_blocked()
        assert provisioner.calls == [("hive-a", "stored", "cpu")]


async def test_a_restarted_queen_fails_its_queued_job_naming_the_hive_that_never_came_back(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    path = str(tmp_path / "queen.db")
    left_by_a_killed_queen(path)
    async with queen_on(path, StoreProvisioner(set())) as dispatcher:
        queued = dispatcher.jobs["job-queued"]
        await queued.done.wait()
        assert queued.error is not None
        assert queued.error.startswith("no worker serves model 'stored'")
        assert queued.error.endswith(
            "(hive hive-a did not report within 5 s of the queen's restart)"
        )


async def test_a_job_running_when_the_queen_died_ends_failed_and_its_stream_says_why(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    path = str(tmp_path / "queen.db")
    left_by_a_killed_queen(path)
    async with queen_on(path, StoreProvisioner({"stored"})) as dispatcher:
        reason = "interrupted: the queen stopped while the job ran"
        record = dispatcher.records.get("job-running")
        assert record is not None
        assert (record.state, record.error) == ("failed", reason)
        assert [(a.n, a.error) for a in record.attempt_log] == [(1, reason)]
        job = dispatcher.jobs["job-running"]
        assert job.done.is_set()
        # Whatever a reconnecting client saw before, it gets the end and its reason.
        assert last_event_id(job, "17") == 0
        assert [frame async for frame in job.stream.follow()] == [
            f"id: 1\ndata: [ERROR] {reason}\n\n".encode()
        ]


async def test_a_job_only_a_hive_being_upgraded_could_take_waits_until_it_is_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    provisioner = StoreProvisioner({"stored"})
    async with queen_on(":memory:", provisioner) as dispatcher:
        dispatcher.heartbeat(heartbeat("gpu1", [FakeWorker(model="stored").status()]))
        assert await dispatcher.drain_hive("gpu1", 30.0) == 0
        stored = dispatcher.submit(infer("stored"))
        # A model the hive did not have waits for nothing.
        with pytest.raises(ModelNotFoundError, match="no hive has it"):
            dispatcher.submit(infer("nope"))
        # The upgrade stops the hive; the new one reports without workers.
        dispatcher.registry.take_offline("gpu1")
        await trio.sleep(60)
        dispatcher.heartbeat(heartbeat("gpu1", []))
        await trio.sleep(1)
        assert (stored.state, provisioner.calls) == ("queued", [])
        dispatcher.end_drain("gpu1")
        await trio.testing.wait_all_tasks_blocked()
        assert provisioner.calls == [("gpu1", "stored", "cpu")]
        records = dispatcher.records.decisions(10, stored.id)
        assert [r.kind for r in records] == ["reject", "spawn"]


async def test_while_a_hive_is_upgraded_another_hive_gets_the_spawn(
    autojump_clock: trio.abc.Clock,
) -> None:
    provisioner = StoreProvisioner({"stored"})
    async with queen_on(":memory:", provisioner) as dispatcher:
        dispatcher.heartbeat(heartbeat("gpu1", [FakeWorker(model="stored").status()]))
        dispatcher.heartbeat(heartbeat("gpu2", []))
        assert await dispatcher.drain_hive("gpu1", 30.0) == 0
        job = dispatcher.submit(infer("stored"))
        await trio.testing.wait_all_tasks_blocked()
        assert (job.state, provisioner.calls) == ("queued", [("gpu2", "stored", "cpu")])
