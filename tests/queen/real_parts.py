"""Real processes for the queen's slow tests: worker and hive daemons on the default model, and
one job streamed through the queen.

Every process is killed at the end of its context, whatever state a test left it in (stopped,
killed already).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import queue
import signal
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from rbee.wire.queen import WorkerStatus
from tests.helpers import RBEE
from tests.test_main_job import environment, link_default_model

MODEL = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"
CUT_AFTER = 4

# Called once a stream has `CUT_AFTER` tokens, with its job id (to kill what serves it).
Cut = Callable[[str], Awaitable[None] | None]


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


@dataclasses.dataclass
class Daemon:
    """A daemon process and the lines it printed on stdout, as they come."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str]

    def line(self, timeout: float) -> str:
        return self.lines.get(timeout=timeout)


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@contextlib.contextmanager
def daemon(argv: list[str], env: Mapping[str, str] | None = None) -> Iterator[Daemon]:
    """Run ``argv`` with its stdout read line by line; killed (and reaped) at the end."""
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env=None if env is None else dict(env)
    ) as process:
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            yield Daemon(process, lines)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(timeout=30)
            reader.join(timeout=5)


@contextlib.contextmanager
def real_worker(model_store: Path, name: str) -> Iterator[RealWorker]:
    """A ready worker process serving the default model (2 slots, 1 thread)."""
    command = [*RBEE, "worker", "daemon", "--model", MODEL, "--models-dir", str(model_store)]
    command += ["--port", "0", "--slots", "2", "--threads", "1"]
    with daemon(command) as worker:
        listening = worker.line(60)
        assert listening.startswith("rbee worker listening on http://")
        assert worker.line(180).startswith("rbee worker ready")
        yield RealWorker(name, listening.rsplit(" ", 1)[1], worker.process)


@contextlib.contextmanager
def hive_daemon(
    queen_url: str, queen_db: Path, root: Path, name: str, model_store: Path, slots: int = 2
) -> Iterator[Daemon]:
    """``rbee hive daemon NAME`` for the queen at ``queen_url`` (whose database is ``queen_db``:
    the hive takes its token from the cluster secret beside it), with the default model in its
    store; its workers get ``slots`` slots and one thread. Heartbeats every 0.3 s."""
    models = root / f"{name}-models"
    if not models.exists():
        link_default_model(models, model_store)
    argv = [*RBEE, "hive", "daemon", "--queen", queen_url, "--name", name, "--port", "0"]
    argv += ["--models-dir", str(models), "--state-dir", str(root / f"{name}-state")]
    argv += ["--heartbeat-interval", "0.3"]
    env = environment(root)
    env.update(RBEE_QUEEN_DB=str(queen_db), RBEE_WORKER_SLOTS=str(slots), RBEE_WORKER_THREADS="1")
    with daemon(argv, env) as hive:
        assert hive.line(60).startswith("rbee hive listening on http://")
        yield hive


async def stream_job(
    http: httpx.AsyncClient,
    queen: str,
    sampling: dict[str, Any],
    cut: Cut | None = None,
    max_tokens: int = 40,
) -> tuple[str, str, dict[str, Any]]:
    """Run one job through the queen: its text, its terminal marker and its record.

    ``cut`` is called once, after `CUT_AFTER` tokens arrived.
    """
    body = {"operation": "infer", "model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens}
    text, tokens, end = "", 0, ""
    headers = {"Accept": "text/event-stream"}
    async with http.stream(
        "POST", f"{queen}/v1/jobs", json={**body, **sampling}, headers=headers
    ) as response:
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
                    result = cut(job_id)
                    if inspect.isawaitable(result):
                        await result
    record: dict[str, Any] = (await http.get(f"{queen}/v1/jobs/{job_id}")).json()
    return text, end, record
