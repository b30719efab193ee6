"""Many concurrent streaming requests through a queen process, and how each one ended.

Used by ``tests/queen/test_load.py`` and ``bench/faults.py --load``. The queen is a process of its
own (``rbee queen --no-local-hive``), so that its memory is its own, and so are the fake workers
(`tests.queen.fake_worker`), so that the clients in the caller's trio loop do not starve them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import trio

from rbee.queen.keys import SECRET_FILE
from tests.helpers import RBEE
from tests.queen.fake_worker import FakeWorker, register

__all__ = ["Outcome", "QueenProcess", "fake_workers", "peak_rss", "queen_process", "stream_all"]

MODEL = "fake-model"


@dataclasses.dataclass
class QueenProcess:
    url: str
    process: subprocess.Popen[str]
    secret: str

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    async def register(self, hive: str, urls: list[str], slots: int) -> None:
        """Announce the fake workers at ``urls`` (``slots`` each) as hive ``hive``'s."""
        workers = [FakeWorker(id=f"fake-{i}", url=url, slots=slots) for i, url in enumerate(urls)]
        await register(self.url, hive, *(w.status() for w in workers), token=self.secret)


@contextlib.contextmanager
def fake_workers(count: int, tokens: int, slots: int) -> Iterator[list[str]]:
    """A process serving ``count`` fake workers (`tests.queen.fake_worker`); their URLs."""
    argv = [sys.executable, "-m", "tests.queen.fake_worker", str(count), str(tokens), str(slots)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().split()
            assert line[:1] == ["fakes"], line
            assert len(line) == count + 1, line
            yield line[1:]
        finally:
            process.kill()
            process.wait(timeout=30)


@contextlib.contextmanager
def queen_process(root: Path, *options: str) -> Iterator[QueenProcess]:
    """``rbee queen`` on a free port with no local hive, its database under ``root``."""
    argv = [*RBEE, "queen", "--port", "0", "--db", str(root / "q.db"), "--no-local-hive"]
    with subprocess.Popen([*argv, *options], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("rbee queen listening on http://"), first
            assert process.stdout.readline().strip() == "rbee queen ready"
            secret = (root / SECRET_FILE).read_text(encoding="ascii").strip()
            yield QueenProcess(first.split()[-1], process, secret)
        finally:
            process.kill()
            process.wait(timeout=30)


@dataclasses.dataclass
class Outcome:
    """How one request ended: its status, and for a stream its job id, text and last payload."""

    status: int
    job_id: str = ""
    text: str = ""
    end: str = ""
    retry_after: str | None = None
    error: str = ""


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> Outcome:
    headers = {"Accept": "text/event-stream"}
    try:
        async with client.stream("POST", f"{url}/v1/jobs", json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                return Outcome(
                    response.status_code,
                    retry_after=response.headers.get("Retry-After"),
                    error=response.text,
                )
            outcome = Outcome(200, job_id=response.headers["rbee-job-id"])
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    outcome.text += event["t"] if event["type"] == "token" else ""
                elif line.startswith("data: "):
                    outcome.end = line[6:]
            return outcome
    except httpx.HTTPError as err:
        return Outcome(0, error=f"{type(err).__name__}: {err}")


async def stream_all(url: str, count: int, body: dict[str, object]) -> list[Outcome]:
    """Send ``count`` streaming requests at once; every outcome, in the order they were sent."""
    outcomes: list[Outcome | None] = [None] * count
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            outcomes[i] = await stream_one(client, url, body)

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    return [o for o in outcomes if o is not None]


async def peak_rss(queen: QueenProcess, peak: list[int], every_s: float = 0.05) -> None:
    """Keep ``peak[0]`` at the largest RSS of the queen seen, until cancelled."""
    while True:
        peak[0] = max(peak[0], queen.rss())
        await trio.sleep(every_s)
