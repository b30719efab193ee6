"""Faults with real parts: real worker processes on the default model, killed (``kill -9``) or
stopped (``SIGSTOP``) in the middle of a stream, with and without another worker to continue on.

The client's text must equal an uninterrupted run's, byte for byte, greedy and seeded; a stream
that cannot continue ends with the reason; every job ends completed or failed with a reason. The
queen runs in the test's trio loop and learns of the workers from heartbeats, as from hives; the
on-demand case runs ``rbee queen`` with its local hive (see ``tests/test_main_job.py``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.models.store import ModelStore
from rbee.models.tokenizer import ModelTokenizer
from rbee.wire.worker import SamplingParams
from rbee.worker.engine import Engine
from tests.helpers import eventually_sync
from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import register
from tests.queen.real_parts import (
    CUT_AFTER,
    MODEL,
    PROMPT,
    Cut,
    RealWorker,
    real_worker,
    stream_job,
)
from tests.worker.numerics import cuts_that_change_the_text

pytestmark = pytest.mark.slow

SAMPLINGS: list[dict[str, Any]] = [{"temperature": 0}, {"temperature": 0.9, "seed": 5}]


@pytest.fixture(scope="module")
def spare(model_store: Path) -> Iterator[RealWorker]:
    with real_worker(model_store, "spare") as worker:
        yield worker


@pytest.fixture
def victim(model_store: Path) -> Iterator[RealWorker]:
    with real_worker(model_store, "victim") as worker:
        yield worker


@pytest.fixture
def queen_config(tmp_path: Path) -> QueenConfig:
    # A stopped worker counts as stalled after 1 s of silence (or 10 of its steps, if longer).
    return QueenConfig(
        port=0, db=str(tmp_path / "queen.db"), stall_floor_s=1.0, stall_steps=10, max_attempts=3
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=120) as client:
        yield client


async def uninterrupted(
    http: httpx.AsyncClient, queen: QueenHandle, victim: RealWorker, sampling: dict[str, Any]
) -> str:
    """The reference text, from the victim alone (the first worker the queen knows)."""
    await register(queen.url, "hive-a", victim.status())
    text, end, record = await stream_job(http, queen.url, sampling)
    assert (end, record["worker"], record["attempts"]) == ("[DONE]", victim.id, 1)
    assert record["finish_reason"] == "length", "the reference must outlast the cut"
    return text


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_no_cut_a_kill_can_meet_changes_the_text(
    model_store: Path, sampling: dict[str, Any]
) -> None:
    """The resumed worker's prefill rounds otherwise than the steps it replaces (about 1e-4), so a
    draw that close to the boundary between two tokens could make the texts differ. With this
    prompt and seed none is: the tests below compare texts exactly, wherever the kill lands."""
    store = ModelStore(model_store)
    directory, manifest = store.dir(MODEL), store.get(MODEL)
    engine = Engine(directory, manifest, threads=2, slots=1)
    ids = ModelTokenizer.load(directory, manifest).encode(PROMPT)
    params = SamplingParams(max_tokens=40, **sampling)
    # The kill lands after CUT_AFTER tokens reached the client; the worker may be a few ahead.
    assert cuts_that_change_the_text(engine, ids, params, range(1, CUT_AFTER + 12)) == []


@pytest.mark.parametrize("sampling", SAMPLINGS)
async def test_kill_9_mid_stream_continues_on_the_second_worker_byte_for_byte(
    queen: QueenHandle,
    victim: RealWorker,
    spare: RealWorker,
    http: httpx.AsyncClient,
    sampling: dict[str, Any],
) -> None:
    reference = await uninterrupted(http, queen, victim, sampling)
    await register(queen.url, "hive-b", spare.status())
    text, end, record = await stream_job(http, queen.url, sampling, lambda _: victim.process.kill())
    assert end == "[DONE]"
    assert text == reference
    assert (record["state"], record["worker"], record["attempts"]) == ("completed", spare.id, 2)
    assert record["tokens_out"] == 40
    assert record["attempt_log"][0]["error"]


@pytest.mark.parametrize("sampling", SAMPLINGS[:1])
async def test_sigstop_mid_stream_is_detected_and_the_stream_continues(
    queen: QueenHandle,
    victim: RealWorker,
    spare: RealWorker,
    http: httpx.AsyncClient,
    sampling: dict[str, Any],
) -> None:
    reference = await uninterrupted(http, queen, victim, sampling)
    await register(queen.url, "hive-b", spare.status())
    stop = lambda _: victim.process.send_signal(signal.SIGSTOP)  # noqa: E731
    text, end, record = await stream_job(http, queen.url, sampling, stop)
    assert (end, text) == ("[DONE]", reference)
    assert (record["state"], record["worker"], record["attempts"]) == ("completed", spare.id, 2)
    assert "stalled: it sent nothing for" in record["attempt_log"][0]["error"]
    workers = (await http.get(f"{queen.url}/v1/status")).json()["workers"]
    assert {w["worker"]["id"]: w["stalled"] for w in workers} == {victim.id: True, spare.id: False}
    # Out of rotation: the next job goes to the other worker at once, though first in the list.
    _, end, record = await stream_job(http, queen.url, sampling)
    assert (end, record["worker"], record["attempts"]) == ("[DONE]", spare.id, 1)


async def test_kill_9_with_no_worker_to_continue_on_ends_the_stream_with_the_reason(
    queen: QueenHandle, victim: RealWorker, http: httpx.AsyncClient
) -> None:
    reference = await uninterrupted(http, queen, victim, SAMPLINGS[0])
    text, end, record = await stream_job(
        http, queen.url, SAMPLINGS[0], lambda _: victim.process.kill()
    )
    assert reference.startswith(text)
    assert len(text) < len(reference)
    assert end.startswith("[ERROR] no worker serves model")
    assert (record["state"], record["error"]) == ("failed", end.removeprefix("[ERROR] "))


def test_kill_9_with_no_second_worker_starts_one_and_the_stream_continues(
    tmp_path: Path, model_store: Path
) -> None:
    from tests.test_main_job import running_cluster

    with running_cluster(tmp_path, model_store) as cluster:
        sampling = SAMPLINGS[1]

        def run(cut: Cut | None = None) -> tuple[str, str, dict[str, Any]]:
            async def go() -> tuple[str, str, dict[str, Any]]:
                async with httpx.AsyncClient(timeout=180) as client:
                    return await stream_job(client, cluster.url, sampling, cut)

            return trio.run(go)

        reference, end, first = run()  # starts a worker on demand
        assert end == "[DONE]"
        [entry] = cluster.get("/v1/workers")["workers"]
        pid = entry["worker"]["pid"]
        text, end, record = run(lambda _: os.kill(pid, signal.SIGKILL))
        assert (end, text) == ("[DONE]", reference)
        assert record["state"] == "completed"
        assert record["worker"] != first["worker"]
        eventually_sync(lambda: len(cluster.get("/v1/workers")["workers"]) == 1, 30, "one worker")
