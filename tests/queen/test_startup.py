"""No race at start: a job sent before the queen's own hive has reported waits for it.

The dispatcher's tests run on trio's virtual clock (the bound is 30 s); the queen's test holds its
local hive back (a process that never reports) and reports for it when the test says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
import trio
import trio.testing

from rbee.config import QueenConfig
from rbee.errors import ModelNotFoundError
from rbee.queen.db import open_db
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.local_hive import LOCAL_HIVE
from rbee.queen.scheduler import builtin
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
async def starting_queen(provisioner: StoreProvisioner) -> AsyncIterator[Dispatcher]:
    """A dispatcher whose local hive has been started and has not reported yet."""
    conn = open_db(":memory:")
    dispatcher = Dispatcher(QueenConfig(), conn, builtin("first-available"), provisioner)
    dispatcher.expect_hive(LOCAL_HIVE, BOUND_S)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            yield dispatcher
            nursery.cancel_scope.cancel()
    finally:
        conn.close()


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
