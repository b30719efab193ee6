"""Faults with real parts: real worker processes on the default model, killed (``kill -9``) or
stopped (``SIGSTOP``) in the middle of a stream, with and without another worker to continue on.

The client's text must equal an uninterrupted run's, byte for byte, greedy and seeded; a stream
that cannot continue ends with the reason; every job ends completed or failed with a reason. The
queen runs in the test's trio loop and learns of the workers from heartbeats, as from hives; the
on-demand case runs ``rbee queen`` with its local hive (see ``tests/test_main_job.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.wire.queen import WorkerStatus
from tests.helpers import RBEE, eventually_sync
from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import register

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"
CUT_AFTER = 4
SAMPLINGS: list[dict[str, Any]] = [{"temperature": 0}, {"temperature": 0.9, "seed": 5}]


@dataclasses.dataclass
class RealWorker:
    id: str
    url: str
    process: subprocess.Popen[str]

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            id=self.id,
            pid=self.process.pid,
            model=MODEL,
            device="cpu",
            url=self.url,
            state="ready",
            slots_total=2,
            slots_free=2,
        )


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@contextlib.contextmanager
def real_worker(model_store: Path, name: str) -> Iterator[RealWorker]:
    """A ready worker process serving the default model; killed at the end, whatever its state."""
    command = [*RBEE, "worker", "daemon", "--model", MODEL, "--models-dir", str(model_store)]
    command += ["--port", "0", "--slots", "2", "--threads", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            listening = lines.get(timeout=60)
            assert listening.startswith("rbee worker listening on http://")
            assert lines.get(timeout=180).startswith("rbee worker ready")
            yield RealWorker(name, listening.rsplit(" ", 1)[1], process)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(timeout=30)
            reader.join(timeout=5)


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


async def stream_job(
    http: httpx.AsyncClient, queen: str, sampling: dict[str, Any], cut: Any = None
) -> tuple[str, str, dict[str, Any]]:
    """Run one job through the queen: its text, its terminal marker and its record.

    ``cut`` (a function) is called once, after `CUT_AFTER` tokens arrived.
    """
    body = {"operation": "infer", "model": MODEL, "prompt": PROMPT, "max_tokens": 40, **sampling}
    text, tokens, end = "", 0, ""
    headers = {"Accept": "text/event-stream"}
    async with http.stream("POST", f"{queen}/v1/jobs", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        job_id = response.headers["rbee-job-id"]
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data.startswith("["):
                end = data
                continue
            event = json.loads(data)
            if event["type"] == "token":
                text += event["t"]
                tokens += 1
                if tokens == CUT_AFTER and cut is not None:
                    cut()
    record: dict[str, Any] = (await http.get(f"{queen}/v1/jobs/{job_id}")).json()
    return text, end, record


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
async def test_kill_9_mid_stream_continues_on_the_second_worker_byte_for_byte(
    queen: QueenHandle,
    victim: RealWorker,
    spare: RealWorker,
    http: httpx.AsyncClient,
    sampling: dict[str, Any],
) -> None:
    reference = await uninterrupted(http, queen, victim, sampling)
    await register(queen.url, "hive-b", spare.status())
    text, end, record = await stream_job(http, queen.url, sampling, victim.process.kill)
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
    stop = lambda: victim.process.send_signal(signal.SIGSTOP)  # noqa: E731
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
    text, end, record = await stream_job(http, queen.url, SAMPLINGS[0], victim.process.kill)
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

        def run(cut: Any = None) -> tuple[str, str, dict[str, Any]]:
            async def go() -> tuple[str, str, dict[str, Any]]:
                async with httpx.AsyncClient(timeout=180) as client:
                    return await stream_job(client, cluster.url, sampling, cut)

            return trio.run(go)

        reference, end, first = run()  # starts a worker on demand
        assert end == "[DONE]"
        [entry] = cluster.get("/v1/workers")["workers"]
        pid = entry["worker"]["pid"]
        text, end, record = run(lambda: os.kill(pid, signal.SIGKILL))
        assert (end, text) == ("[DONE]", reference)
        assert record["state"] == "completed"
        assert record["worker"] != first["worker"]
        eventually_sync(lambda: len(cluster.get("/v1/workers")["workers"]) == 1, 30, "one worker")
