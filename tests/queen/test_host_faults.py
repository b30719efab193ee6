"""Faults of whole daemons, with real processes: ``kill -9`` of a hive and of the queen while
streams run on real workers (the default model).

A hive that dies takes its workers along (the kernel stops them, `rbee.process`): the queen sees
their streams break, or the hive's heartbeats stop, and continues each stream on a worker of
another hive, byte for byte; the hive started again comes back with no worker of its old life.
A queen that dies loses no accepted job: after its restart the queued ones run, the running ones
end failed with the reason (their events died with the queen), a client reconnecting to one of
them gets that reason, and none vanishes from the job list.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.config import QueenConfig
from tests.helpers import RBEE, eventually, eventually_sync, gone, run_rbee
from tests.queen.conftest import QueenHandle
from tests.queen.real_parts import MODEL, PROMPT, Daemon, daemon, hive_daemon, stream_job
from tests.test_main_job import environment

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0}


@pytest.fixture
def queen_config(tmp_path: Path) -> QueenConfig:
    return QueenConfig(
        port=0,
        db=str(tmp_path / "queen.db"),
        heartbeat_interval_s=0.3,
        stall_floor_s=1.0,
        max_attempts=3,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=180) as client:
        yield client


async def spawn(http: httpx.AsyncClient, queen: str, hive: str) -> dict[str, Any]:
    """A ready worker for the default model on ``hive``, started through the queen."""
    body = {"hive": hive, "model": MODEL, "wait": True}
    response = await http.post(f"{queen}/v1/workers", json=body)
    assert response.status_code == 201, response.text
    status: dict[str, Any] = response.json()
    return status


async def hives_online(http: httpx.AsyncClient, queen: str) -> set[str]:
    hives = (await http.get(f"{queen}/v1/hives")).json()["hives"]
    return {h["name"] for h in hives if h["status"] == "online"}


async def worker_hives(http: httpx.AsyncClient, queen: str) -> dict[str, str]:
    """Worker id -> its hive, as the queen's registry has them."""
    workers = (await http.get(f"{queen}/v1/workers")).json()["workers"]
    return {w["worker"]["id"]: w["hive"] for w in workers}


async def test_kill_9_of_a_hive_mid_stream_continues_on_another_hive_byte_for_byte(
    queen: QueenHandle, http: httpx.AsyncClient, tmp_path: Path, model_store: Path
) -> None:
    db = Path(queen.config.db)
    with contextlib.ExitStack() as stack:
        hives = {
            name: stack.enter_context(hive_daemon(queen.url, db, tmp_path, name, model_store))
            for name in ("hive-a", "hive-b")
        }
        await eventually(
            lambda: _has(hives_online(http, queen.url), set(hives)), 30, "both hives online"
        )
        # The reference comes from the first worker alone; then a second one on the other hive.
        first = await spawn(http, queen.url, "hive-a")
        reference, end, record = await stream_job(http, queen.url, GREEDY, max_tokens=96)
        assert (end, record["worker"], record["finish_reason"]) == ("[DONE]", first["id"], "length")
        second = await spawn(http, queen.url, "hive-b")
        pids = {first["id"]: first["pid"], second["id"]: second["pid"]}
        killed: list[str] = []

        async def kill_its_hive(job_id: str) -> None:
            worker = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()["worker"]
            killed.append(worker)
            hives[(await worker_hives(http, queen.url))[worker]].process.kill()

        text, end, record = await stream_job(http, queen.url, GREEDY, kill_its_hive, 96)
        [victim] = killed
        [spare] = set(pids) - {victim}
        assert (end, text) == ("[DONE]", reference)
        assert (record["state"], record["worker"], record["attempts"]) == ("completed", spare, 2)
        assert record["attempt_log"][0]["error"]
        assert record["tokens_out"] == 96
        # No orphan: the dead hive's worker stopped with it, and left the registry.
        await eventually(lambda: gone(pids[victim]), 15, "the dead hive's worker gone")
        await eventually(
            lambda: _lacks(worker_hives(http, queen.url), victim), 10, "the worker unlisted"
        )
        dead = next(n for n, h in hives.items() if h.process.poll() is not None)
        assert dead not in await hives_online(http, queen.url)

        # Started again, the hive comes back empty: nothing of its old life serves anything.
        with hive_daemon(queen.url, db, tmp_path, dead, model_store):
            await eventually(
                lambda: _has(hives_online(http, queen.url), {dead}), 30, "the hive back online"
            )
            assert await worker_hives(http, queen.url) == {spare: next(iter(set(hives) - {dead}))}
            _, end, record = await stream_job(http, queen.url, GREEDY, max_tokens=8)
            assert (end, record["worker"], record["attempts"]) == ("[DONE]", spare, 1)


async def _has(names: Awaitable[set[str]], wanted: set[str]) -> bool:
    return wanted <= await names


async def _lacks(workers: Awaitable[dict[str, str]], worker: str) -> bool:
    return worker not in await workers


# --- the queen -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def queen_process(root: Path, port: int) -> Iterator[Daemon]:
    """``rbee queen`` on ``port`` with its database under ``root``, no local hive, once ready."""
    argv = [*RBEE, "queen", "--port", str(port), "--db", str(root / "q.db"), "--no-local-hive"]
    with daemon(argv, environment(root)) as queen:
        assert queen.line(30).startswith("rbee queen listening on http://")
        assert queen.line(30) == "rbee queen ready"
        yield queen


class Streamer(threading.Thread):
    """Streams one long job through the queen in a thread: its events, and how it ended."""

    def __init__(self, queen: str) -> None:
        super().__init__(daemon=True)
        self.queen = queen
        self.job_id = ""
        self.events = 0
        self.tokens = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"operation": "infer", "model": MODEL, "prompt": PROMPT, "max_tokens": 400}
        headers = {"Accept": "text/event-stream"}
        try:
            with httpx.stream(
                "POST", f"{self.queen}/v1/jobs", json=body, headers=headers, timeout=60
            ) as response:
                self.job_id = response.headers["rbee-job-id"]
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        self.events = int(line[4:])
                    if '"type":"token"' in line:
                        self.tokens.set()
        except httpx.TransportError as err:
            self.error = err


def test_kill_9_of_the_queen_loses_no_accepted_job(tmp_path: Path, model_store: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        queen = stack.enter_context(queen_process(tmp_path, port))
        stack.enter_context(hive_daemon(url, tmp_path / "q.db", tmp_path, "hive-a", model_store, 1))
        eventually_sync(lambda: _online(url, "hive-a"), 30, "the hive online")
        spawned = httpx.post(
            f"{url}/v1/workers", json={"hive": "hive-a", "model": MODEL, "wait": True}, timeout=180
        )
        assert spawned.status_code == 201, spawned.text
        # One job streams on the worker's one slot; two wait behind it: one followed by
        # `rbee infer` (which reconnects by itself), one submitted and left.
        running = Streamer(url)
        running.start()
        assert running.tokens.wait(60)
        argv = [*RBEE, "--queen", url, "infer", "-m", MODEL, "-p", "Name a colour."]
        argv += ["--max-tokens", "6", "--temperature", "0"]
        infer = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(tmp_path),
        )
        stack.callback(infer.kill)
        body = {"operation": "infer", "model": MODEL, "prompt": "Hello", "max_tokens": 4}
        left = httpx.post(f"{url}/v1/jobs", json=body).json()["job_id"]
        eventually_sync(lambda: _states(url).count("queued") == 2, 30, "two jobs queued")

        queen.process.kill()
        queen.process.wait()
        # The streaming client gets a transport error at once, never a hang.
        running.join(timeout=10)
        assert not running.is_alive()
        assert isinstance(running.error, httpx.TransportError)
        assert running.events >= 2

        stack.enter_context(queen_process(tmp_path, port))
        out, err = infer.communicate(timeout=120)
        assert infer.returncode == 0, err
        assert out.strip()
        with httpx.stream("GET", f"{url}/v1/jobs/{left}/stream", timeout=120) as response:
            assert list(response.iter_lines())[-2] == "data: [DONE]"
        # The running job's client, reconnecting where it left off, learns why it ended.
        headers = {"Last-Event-ID": str(running.events)}
        with httpx.stream(
            "GET", f"{url}/v1/jobs/{running.job_id}/stream", headers=headers, timeout=10
        ) as response:
            assert response.status_code == 200
            data = [line for line in response.iter_lines() if line.startswith("data: ")]
        reason = "interrupted: the queen stopped while the job ran"
        assert data == [f"data: [ERROR] {reason}"]
        listed = run_rbee("--queen", url, "job", "list", "--json", env=environment(tmp_path))
        assert listed.returncode == 0, listed.stderr
        jobs = {j["id"]: j for j in json.loads(listed.stdout)}
        assert len(jobs) == 3
        assert jobs[running.job_id]["state"] == "failed"
        assert jobs[running.job_id]["error"] == reason
        assert jobs[left]["state"] == "completed"
        assert sorted(j["state"] for j in jobs.values()) == ["completed", "completed", "failed"]


def _online(url: str, hive: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        hives = httpx.get(f"{url}/v1/hives").json()["hives"]
        return any(h["name"] == hive and h["status"] == "online" for h in hives)
    return False


def _states(url: str) -> list[str]:
    return [j["state"] for j in httpx.get(f"{url}/v1/jobs").json()["jobs"]]
