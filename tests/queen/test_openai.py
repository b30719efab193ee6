"""The official ``openai`` package against the queen's OpenAI-compatible API (fake workers).

The clients run in a worker thread (the async one in its own asyncio loop) while the queen runs
in the test's trio loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
import trio

from rbee import wire
from rbee.config import QueenConfig
from tests.queen.conftest import QueenHandle, read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, heartbeat, hive_auth, register

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello"},
]


def client(queen: QueenHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def worker(nursery: trio.Nursery, queen: QueenHandle) -> FakeWorker:
    fake = await FakeWorker(tokens=4).start(nursery)
    await register(queen.url, "hive-a", fake)
    return fake


async def test_models(queen: QueenHandle, worker: FakeWorker) -> None:
    def call() -> list[str]:
        with client(queen) as c:
            return [m.id for m in c.models.list().data]

    assert await trio.to_thread.run_sync(call) == ["fake-model"]


async def test_chat_completion(queen: QueenHandle, worker: FakeWorker) -> None:
    def call() -> openai.types.chat.ChatCompletion:
        with client(queen) as c:
            return c.chat.completions.create(
                model="fake-model",
                messages=MESSAGES,
                max_tokens=3,
                temperature=0.2,
                top_p=0.9,
                seed=11,
                stop=["END"],
            )

    completion = await trio.to_thread.run_sync(call)
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    sent = worker.posts[0]
    assert sent.messages is not None
    assert [(m.role, m.content) for m in sent.messages] == [
        ("system", "be brief"),
        ("user", "hello"),
    ]
    assert (sent.max_tokens, sent.temperature, sent.top_p, sent.seed, sent.stop) == (
        3,
        0.2,
        0.9,
        11,
        ["END"],
    )


async def test_chat_completion_stream_with_usage(queen: QueenHandle, worker: FakeWorker) -> None:
    def call() -> tuple[str, list[str | None], int]:
        text, usage = "", 0
        reasons: list[str | None] = []
        with client(queen) as c:
            stream = c.chat.completions.create(
                model="fake-model",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
        for chunk in chunks:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reasons.append(choice.finish_reason)
        return text, reasons, usage

    text, reasons, usage = await trio.to_thread.run_sync(call)
    assert text == "tok0 tok1 tok2 tok3 "
    assert reasons[-1] == "stop"
    assert usage == 4


async def test_completions_stream_and_not(queen: QueenHandle, worker: FakeWorker) -> None:
    def call() -> tuple[str, str]:
        with client(queen) as c:
            return both(c)

    def both(c: openai.OpenAI) -> tuple[str, str]:
        whole = c.completions.create(model="fake-model", prompt="once upon", max_tokens=2)
        streamed = "".join(
            choice.text
            for chunk in c.completions.create(model="fake-model", prompt="once upon", stream=True)
            for choice in chunk.choices
        )
        assert whole.usage is not None
        assert whole.usage.prompt_tokens == 2
        return whole.choices[0].text, streamed

    whole, streamed = await trio.to_thread.run_sync(call)
    assert whole == "tok0 tok1 "
    assert streamed == "tok0 tok1 tok2 tok3 "
    assert worker.posts[0].prompt == "once upon"


async def test_async_client(queen: QueenHandle, worker: FakeWorker) -> None:
    async def main() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=f"{queen.url}/v1", api_key="unused", max_retries=0
        ) as c:
            whole = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
            parts: list[str] = []
            stream = await c.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=True
            )
            async for chunk in stream:
                parts.extend(choice.delta.content or "" for choice in chunk.choices)
            return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = await trio.to_thread.run_sync(lambda: asyncio.run(main()))
    assert whole == streamed == "tok0 tok1 tok2 tok3 "


async def test_errors_in_openai_shape(queen: QueenHandle, worker: FakeWorker) -> None:
    def unknown_model() -> None:
        with client(queen) as c:
            c.chat.completions.create(model="nope", messages=MESSAGES)

    with pytest.raises(openai.NotFoundError) as missing:
        await trio.to_thread.run_sync(unknown_model)
    assert "no worker serves model 'nope'" in missing.value.message

    def bad_temperature() -> None:
        with client(queen) as c:
            c.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=9)

    with pytest.raises(openai.BadRequestError) as bad:
        await trio.to_thread.run_sync(bad_temperature)
    assert "temperature" in bad.value.message


async def test_a_model_nobody_has_is_404_model_not_found_before_any_spawn(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    # A queen that starts workers itself (its store is empty) and one hive without the model.
    queen = await start_queen(nursery, queen_config, provision=True, store_dir=tmp_path / "store")
    empty = msgspec.structs.replace(heartbeat("hive-a", []), models=["other"])
    beat = await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(empty), headers=hive_auth(queen.url)
    )
    assert beat.is_success

    def unknown_model() -> None:
        with client(queen) as c:
            c.chat.completions.create(model="nope", messages=MESSAGES)

    with pytest.raises(openai.NotFoundError) as missing:
        await trio.to_thread.run_sync(unknown_model)
    assert missing.value.code == "model_not_found"
    assert missing.value.type == "invalid_request_error"
    assert "no hive has it and the queen's store lacks it" in missing.value.message
    # rbee's own jobs API answers the same, in rbee's error shape.
    answer = await http.post(f"{queen.url}/v1/jobs", json={"model": "nope", "prompt": "hi"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "model_not_found"
    # Nothing was decided, so nothing was spawned or pulled.
    decisions = (await http.get(f"{queen.url}/v1/decisions")).json()["decisions"]
    assert decisions == []
    failed = (await http.get(f"{queen.url}/v1/jobs", params={"state": "failed"})).json()["jobs"]
    assert [j["model"] for j in failed] == ["nope", "nope"]


async def test_bad_parameters_are_400_naming_the_param(
    queen: QueenHandle, worker: FakeWorker
) -> None:
    robot: list[dict[str, str]] = [{"role": "robot", "content": "hi"}]
    cases: dict[str, dict[str, Any]] = {
        "temperature": {"temperature": 9},
        "max_tokens": {"max_tokens": 0},
        "top_p": {"top_p": "high"},
        "messages": {"messages": []},
        "messages[0].role": {"messages": robot},
        "n": {"n": 2},
    }

    def call(options: dict[str, Any]) -> None:
        with client(queen) as c:
            c.chat.completions.create(**{"model": "fake-model", "messages": MESSAGES, **options})

    for param, options in cases.items():
        with pytest.raises(openai.BadRequestError) as bad:
            await trio.to_thread.run_sync(call, options)
        assert bad.value.param == param, (param, bad.value.message)
        assert bad.value.type == "invalid_request_error"
        assert param.split("[")[0] in bad.value.message

    def legacy() -> None:
        with client(queen) as c:
            c.completions.create(model="fake-model", prompt="once", max_tokens=0)

    with pytest.raises(openai.BadRequestError) as bad:
        await trio.to_thread.run_sync(legacy)
    assert bad.value.param == "max_tokens"
    assert worker.posts == []


async def test_a_wrong_api_key_is_an_authentication_error(
    nursery: trio.Nursery, queen_config: QueenConfig
) -> None:
    config = dataclasses.replace(queen_config, token="s3cret-token-0123456789")
    queen = await start_queen(nursery, config)

    def call(key: str) -> list[str]:
        with openai.OpenAI(base_url=f"{queen.url}/v1", api_key=key, max_retries=0) as c:
            return [m.id for m in c.models.list().data]

    with pytest.raises(openai.AuthenticationError) as denied:
        await trio.to_thread.run_sync(call, "guess")
    assert denied.value.code == "invalid_api_key"
    assert denied.value.type == "authentication_error"
    assert await trio.to_thread.run_sync(call, "s3cret-token-0123456789") == []


async def test_a_full_queue_is_a_rate_limit_error_with_retry_after(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, dataclasses.replace(queen_config, queue_size=0))
    release = trio.Event()
    await register(queen.url, "hive-a", await FakeWorker(slots=1, hold=release).start(nursery))
    busy = await http.post(f"{queen.url}/v1/jobs", json={"model": "fake-model", "prompt": "hi"})
    assert busy.status_code == 202

    def call() -> None:
        with client(queen) as c:
            c.chat.completions.create(model="fake-model", messages=MESSAGES)

    with pytest.raises(openai.RateLimitError) as full:
        await trio.to_thread.run_sync(call)
    assert full.value.code == "queue_full"
    assert full.value.response.headers["retry-after"] == "1"
    assert "queue is full" in full.value.message
    release.set()
    stream = f"{queen.url}/v1/jobs/{busy.json()['job_id']}/stream"
    assert (await read_stream(http, stream))[-1] == "[DONE]"
