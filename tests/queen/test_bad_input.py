"""Bad input on every queen route: a 4xx JSON error that names what was wrong, nothing lost.

Each class of bad input (a body too large, not JSON, not UTF-8, a field of the wrong type, a
query parameter out of range, a request the model's context cannot hold, an empty bearer) is
sent to every route it applies to, as an admin (so that the check under test is the one that
answers). The OpenAPI document describes every route the queen serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from rbee.config import QueenConfig
from rbee.models.importer import DEFAULT_MODEL
from rbee.queen.openapi import ROUTES
from rbee.server import MAX_BODY_BYTES
from tests.helpers import assert_body_limit, raw_http
from tests.openapi_fuzz import check_document
from tests.queen.conftest import QueenHandle, read_stream, start_queen
from tests.queen.fake_worker import QUEEN_SECRETS, FakeWorker, register

# Every route that takes a JSON body: a body whose one field is wrong, that field's name, and a
# string field the route reads (where invalid UTF-8 goes).
BODY_ROUTES: list[tuple[str, dict[str, Any], str, str]] = [
    ("/v1/heartbeat", {"hive": "h", "url": "u", "host": 5}, "host", "hive"),
    ("/v1/workers/w1/exited", {"hive": "h", "worker_id": "w1", "model": 3}, "model", "hive"),
    (
        "/v1/jobs",
        {"operation": "infer", "model": "m", "prompt": "x", "max_tokens": 0},
        "max_tokens",
        "model",
    ),
    ("/v1/keys", {"name": "k", "rpm": -1}, "rpm", "name"),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "robot"}]},
        "messages[0].role",
        "model",
    ),
    ("/v1/completions", {"model": "m", "prompt": "x", "temperature": 9}, "temperature", "model"),
    ("/v1/workers", {"hive": "h", "model": "m", "wait": "soon"}, "wait", "hive"),
    ("/v1/hives/h/models/pull", {"model": ""}, "model", "model"),
    ("/v1/hives", {"name": "bad name", "ssh": "x"}, "name", "name"),
    ("/v1/hives/h/trust", {"fingerprint": 7}, "fingerprint", "fingerprint"),
]
BODY_PATHS = [path for path, _, _, _ in BODY_ROUTES]
TEXT_FIELDS = [(path, field) for path, _, _, field in BODY_ROUTES]
# One concrete path for each route of the table, every method it has.
_EXAMPLE = {"{worker_id}": "w1", "{job_id}": "job-1", "{name}": "h", "{model}": "m"}
EVERY_ROUTE = sorted(
    (method, functools.reduce(lambda p, kv: p.replace(*kv), _EXAMPLE.items(), path))
    for method, path in ROUTES
)


def admin(queen: QueenHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {QUEEN_SECRETS[queen.url]}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of a JSON error answer (failing the test if it is not one)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    assert error["type"]
    return error


@pytest.mark.parametrize("path", BODY_PATHS)
async def test_a_body_that_is_not_json_is_400(
    queen: QueenHandle, http: httpx.AsyncClient, path: str
) -> None:
    response = await http.post(f"{queen.url}{path}", content=b"{nope", headers=admin(queen))
    assert response.status_code == 400
    assert "not valid JSON" in error_of(response)["message"]


@pytest.mark.parametrize(("path", "field"), TEXT_FIELDS)
async def test_invalid_utf8_in_a_json_body_is_400(
    queen: QueenHandle, http: httpx.AsyncClient, path: str, field: str
) -> None:
    tag = b'"operation": "infer", ' if path == "/v1/jobs" else b""
    body = b"{" + tag + b'"' + field.encode() + b'": "caf\xe9"}'
    response = await http.post(f"{queen.url}{path}", content=body, headers=admin(queen))
    assert response.status_code == 400
    assert "not UTF-8" in error_of(response)["message"]


@pytest.mark.parametrize(("path", "body", "param", "_"), BODY_ROUTES)
async def test_a_wrong_field_is_400_naming_it(
    queen: QueenHandle,
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    param: str,
    _: str,
) -> None:
    response = await http.post(f"{queen.url}{path}", json=body, headers=admin(queen))
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param
    assert f"`$.{param}`" in error["message"]


@pytest.mark.parametrize(("method", "path"), EVERY_ROUTE)
async def test_a_body_over_the_limit_is_413_unread(
    queen: QueenHandle, method: str, path: str
) -> None:
    await assert_body_limit(queen.url, method, path, QUEEN_SECRETS[queen.url])


async def test_a_chunked_body_over_the_limit_is_413(queen: QueenHandle) -> None:
    parsed = httpx.URL(queen.url)
    head = (
        f"POST /v1/keys HTTP/1.1\r\nHost: {parsed.netloc.decode()}\r\n"
        f"Transfer-Encoding: chunked\r\nAuthorization: Bearer {QUEEN_SECRETS[queen.url]}\r\n\r\n"
    ).encode()
    piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    stream = await trio.open_tcp_stream(parsed.host, parsed.port or 80)
    async with stream:
        await stream.send_all(head)
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
                await stream.send_all(piece)
        data = b""
        with trio.fail_after(10):
            while not data.endswith(b"}}") and (chunk := await stream.receive_some(65536)):
                data += chunk
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"connection: close" in data
    assert b'"code":"body_too_large"' in data


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/jobs?limit=many", "limit"),
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?state=lost", "state"),
        ("/v1/decisions?last=-1", "last"),
        ("/v1/hives/h/logs?lines=x", "lines"),
        ("/v1/jobs?state=%FF", "state"),
    ],
)
async def test_a_bad_query_parameter_is_400_naming_it(
    queen: QueenHandle, http: httpx.AsyncClient, path: str, param: str
) -> None:
    response = await http.get(f"{queen.url}{path}", headers=admin(queen))
    assert response.status_code == 400
    assert f"'{param}'" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/keys/bad%20name"),
        ("GET", "/v1/hives/%FF/models"),
        ("DELETE", "/v1/hives/-x/models/m"),
        ("DELETE", "/v1/keys/" + "k" * 64),
        ("GET", "/v1/hives/bad%20name"),
        ("DELETE", "/v1/hives/-x"),
        ("POST", "/v1/hives/%FF/trust"),
        ("POST", "/v1/hives/-x/start"),
        ("POST", "/v1/hives/-x/upgrade"),
        ("POST", "/v1/hives/" + "h" * 64 + "/stop"),
        ("GET", "/v1/hives/-x/logs"),
        ("GET", "/v1/hives/-x/logs?follow=1"),
    ],
)
async def test_an_unsafe_name_in_a_path_is_400(
    queen: QueenHandle, http: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await http.request(method, f"{queen.url}{path}", headers=admin(queen))
    assert response.status_code == 400
    assert error_of(response)["param"] == "name"


@pytest.mark.parametrize("follow", ["", "&follow=1"])
async def test_the_logs_of_an_unknown_hive_are_a_404_naming_it(
    queen: QueenHandle, http: httpx.AsyncClient, follow: str
) -> None:
    url = f"{queen.url}/v1/hives/nowhere/logs?lines=5{follow}"
    response = await http.get(url, headers=admin(queen))
    assert response.status_code == 404
    assert "no registered hive 'nowhere'" in error_of(response)["message"]


@pytest.fixture
async def limited(nursery: trio.Nursery, queen: QueenHandle) -> FakeWorker:
    """A worker whose model has a context of 64 tokens (words, for the fake), as its hive says."""
    fake = await FakeWorker(tokens=4, context=64).start(nursery)
    await register(queen.url, "hive-a", fake, contexts={"fake-model": 64})
    return fake


def openai_client(queen: QueenHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("max_tokens", [64, 32768])
async def test_max_tokens_the_context_cannot_hold_is_400_before_any_worker(
    queen: QueenHandle, limited: FakeWorker, max_tokens: int
) -> None:
    def call() -> openai.BadRequestError:
        with openai_client(queen) as c, pytest.raises(openai.BadRequestError) as caught:
            c.completions.create(model="fake-model", prompt="hi", max_tokens=max_tokens)
        return caught.value

    err = await trio.to_thread.run_sync(call)
    assert err.param == "max_tokens"
    assert "context of 64 tokens" in err.message
    assert "at most 63" in err.message
    assert limited.posts == []


async def test_max_tokens_that_fits_is_sent_as_is(
    queen: QueenHandle, limited: FakeWorker, http: httpx.AsyncClient
) -> None:
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 63}
    response = await http.post(f"{queen.url}/v1/jobs", json=body)
    assert response.status_code == 202
    payloads = await read_stream(http, f"{queen.url}{response.json()['sse_url']}")
    assert payloads[-1] == "[DONE]"
    assert [p.max_tokens for p in limited.posts] == [63]


async def test_a_prompt_longer_than_the_context_is_a_400_not_retried(
    queen: QueenHandle, limited: FakeWorker
) -> None:
    def call() -> openai.BadRequestError:
        with openai_client(queen) as c, pytest.raises(openai.BadRequestError) as caught:
            c.completions.create(model="fake-model", prompt="word " * 100, max_tokens=4)
        return caught.value

    err = await trio.to_thread.run_sync(call)
    assert err.code == "context_length_exceeded"
    assert err.param == "prompt"
    assert len(limited.posts) == 1


async def test_an_empty_bearer_is_no_credential(
    nursery: trio.Nursery, queen_config: QueenConfig
) -> None:
    config = dataclasses.replace(queen_config, token="t" * 24)
    queen = await start_queen(nursery, config)
    for header in (b"Bearer ", b"Bearer    ", b"Bearer", b""):
        head = b"GET /v1/status HTTP/1.1\r\nHost: q\r\nAuthorization: %s\r\n\r\n" % header
        with trio.fail_after(10):
            status_line, rest = await raw_http(queen.url, head)
        assert status_line == b"HTTP/1.1 401 ", header
        assert b'"code":"invalid_api_key"' in rest


async def test_the_openapi_document_describes_every_route(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    # With a store, so that the store's routes are served too.
    queen = await start_queen(nursery, queen_config, store_dir=tmp_path / "store")
    response = await http.get(f"{queen.url}/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    check_document(
        doc, ROUTES, {"ErrorBody", "InferOperation", "ChatCompletionRequest", "QueenStatus"}
    )


@pytest.fixture
async def stored(
    nursery: trio.Nursery, queen_config: QueenConfig, model_store: Path
) -> QueenHandle:
    """A queen whose store has the default model (context 8192) and that has no worker at all."""
    return await start_queen(nursery, queen_config, store_dir=model_store)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["chat", "completions"])
async def test_a_prompt_the_context_cannot_hold_is_400_at_the_queen(
    stored: QueenHandle, stream: bool, route: str
) -> None:
    def send(c: openai.OpenAI) -> object:
        if route == "chat":
            messages: list[Any] = [{"role": "user", "content": "hello " * 9000}]
            return c.chat.completions.create(model=DEFAULT_MODEL, messages=messages, stream=stream)
        return c.completions.create(model=DEFAULT_MODEL, prompt="hello " * 9000, stream=stream)

    def call() -> openai.BadRequestError:
        with openai_client(stored) as c, pytest.raises(openai.BadRequestError) as caught:
            send(c)
        return caught.value

    err = await trio.to_thread.run_sync(call)
    assert err.code == "context_length_exceeded"
    assert err.param == ("messages" if route == "chat" else "prompt")
    assert "context of 8192 tokens" in err.message


@pytest.mark.slow
async def test_a_long_prompt_that_fits_passes_the_count(
    stored: QueenHandle, http: httpx.AsyncClient
) -> None:
    # 4000 characters may not fit by the cheap bound and are counted: about 1000 tokens fit.
    body = {"operation": "infer", "model": DEFAULT_MODEL, "prompt": "hello " * 700}
    response = await http.post(f"{stored.url}/v1/jobs", json=body)
    # No worker serves it and none can start: the answer after the prompt was let through.
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"
