"""End to end: the official ``openai`` client -> the queen -> a real worker on the real model.

One worker process (SmolLM2-135M-Instruct, int4, CPU) serves the module; the queen runs in the
test's trio loop and learns of the worker from a heartbeat, as a hive would send it.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import openai
import pytest
import trio

from rbee import wire
from rbee.wire.queen import WorkerStatus
from tests.helpers import RBEE
from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import heartbeat, hive_auth

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def real_worker(model_store: Path) -> Iterator[str]:
    """The URL of a ready worker process serving the default model."""
    command = [*RBEE, "worker", "daemon", "--model", MODEL]
    command += ["--models-dir", str(model_store), "--port", "0", "--slots", "2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            listening = lines.get(timeout=60)
            assert listening.startswith("rbee worker listening on http://")
            assert lines.get(timeout=180).startswith("rbee worker ready")
            yield listening.rsplit(" ", 1)[1]
        finally:
            process.terminate()
            process.wait(timeout=30)
            reader.join(timeout=5)


@pytest.fixture
async def routed(queen: QueenHandle, real_worker: str) -> QueenHandle:
    status = WorkerStatus(
        id="real-0",
        pid=0,
        model=MODEL,
        device="cpu",
        url=real_worker,
        state="ready",
        slots_total=2,
        slots_free=2,
    )
    async with httpx.AsyncClient(headers=hive_auth(queen.url)) as client:
        body = wire.encode(heartbeat("local", [status]))
        assert (await client.post(f"{queen.url}/v1/heartbeat", content=body)).status_code == 204
    return queen


async def test_openai_clients_through_the_queen(routed: QueenHandle) -> None:
    base = f"{routed.url}/v1"

    def sync_calls() -> tuple[str, str, int, str]:
        with openai.OpenAI(base_url=base, api_key="unused", max_retries=0) as client:
            return calls(client)

    def calls(client: openai.OpenAI) -> tuple[str, str, int, str]:
        assert [m.id for m in client.models.list().data] == [MODEL]
        whole = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0
        )
        streamed = "".join(
            choice.delta.content or ""
            for chunk in client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, stream=True
            )
            for choice in chunk.choices
        )
        plain = client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0
        )
        assert whole.usage is not None
        assert whole.usage.completion_tokens <= 12
        assert whole.usage.prompt_tokens > 5
        return (
            whole.choices[0].message.content or "",
            streamed,
            whole.usage.completion_tokens,
            plain.choices[0].text,
        )

    whole, streamed, tokens, plain = await trio.to_thread.run_sync(sync_calls)
    assert whole.strip()
    assert streamed == whole
    assert tokens > 1
    assert plain.strip()

    async def async_call() -> str:
        async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as client:
            parts: list[str] = []
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, stream=True
            )
            async for chunk in stream:
                parts.extend(choice.delta.content or "" for choice in chunk.choices)
            return "".join(parts)

    assert await trio.to_thread.run_sync(lambda: asyncio.run(async_call())) == whole

    async with httpx.AsyncClient() as client:
        jobs = (await client.get(f"{routed.url}/v1/jobs")).json()["jobs"]
    assert len(jobs) == 4
    assert {j["state"] for j in jobs} == {"completed"}
    assert all(j["worker"] == "real-0" and j["ttft_ms"] > 0 for j in jobs)
