"""End to end: the official ``openai`` client -> the queen -> a real worker on the real model.

One worker process (SmolLM2-135M-Instruct, int4, CPU) serves the module; the queen runs in the
test's trio loop and learns of the worker from a heartbeat, as a hive would send it.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import trio

from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import register
from tests.queen.real_parts import MODEL, RealWorker

pytestmark = pytest.mark.slow

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture
async def routed(queen: QueenHandle, shared_worker: RealWorker) -> QueenHandle:
    await register(queen.url, "local", shared_worker.status())
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
