"""Bad input on every worker route: a 4xx JSON error naming what was wrong, the slots kept free.

The worker runs on the fake engine (context of 64 tokens) behind a real hypercorn socket.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from rbee import server
from rbee.config import WorkerConfig
from rbee.errors import ConfigError
from rbee.worker.app import create_worker_app
from rbee.worker.daemon import run_worker
from tests.helpers import assert_body_limit, raw_http
from tests.worker.served import Worker

ROUTES = [
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/info"),
    ("POST", "/v1/inference"),
    ("GET", "/v1/inference/job-1/stream"),
    ("DELETE", "/v1/inference/job-1"),
]


async def test_every_route_is_in_the_list(worker: Worker) -> None:
    app = create_worker_app(worker.state)
    rules = {
        (m, r.rule.replace("<job_id>", "job-1"))
        for r in app.url_map.iter_rules()
        for m in r.methods or ()
        if m not in ("HEAD", "OPTIONS")
    }
    assert rules == set(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_body_over_the_limit_is_413_unread(worker: Worker, method: str, path: str) -> None:
    await assert_body_limit(worker.url, method, path)


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"{nope", "not valid JSON", None),
        (b'{"prompt": "caf\xe9"}', "not UTF-8", None),
        (b'{"prompt": "a", "max_tokens": 0}', "`$.max_tokens`", "max_tokens"),
        (
            b'{"prompt": "a", "resume": {"emitted_ids": [-1]}}',
            "`$.resume.emitted_ids[0]`",
            "resume.emitted_ids[0]",
        ),
        (
            b'{"messages": [{"role": "user"}]}',
            "missing required field `content`",
            "messages[0].content",
        ),
    ],
)
async def test_a_bad_body_is_400_naming_the_field(
    worker: Worker, body: bytes, message: str, param: str | None
) -> None:
    r = await worker.client.post("/v1/inference", content=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"]
    assert error["param"] == param
    assert (await worker.info())["slots_free"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a" * 64}, "prompt"),
        ({"messages": [{"role": "user", "content": "a" * 64}]}, "messages"),
    ],
)
async def test_a_prompt_longer_than_the_context_is_400_context_length_exceeded(
    worker: Worker, body: dict[str, object], param: str
) -> None:
    r = await worker.client.post("/v1/inference", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == param
    assert "context of 64 tokens" in error["message"]


async def test_an_empty_bearer_never_matches(nursery: trio.Nursery, worker: Worker) -> None:
    token = "w" * 32
    url: str = await nursery.start(
        lambda task_status: server.serve(
            create_worker_app(worker.state, token),
            "127.0.0.1",
            0,
            shutdown=trio.sleep_forever,
            task_status=task_status,
        )
    )
    for header in (b"Bearer ", b"Bearer", b""):
        head = b"GET /v1/info HTTP/1.1\r\nHost: w\r\nAuthorization: %s\r\n\r\n" % header
        with trio.fail_after(10):
            status_line, _ = await raw_http(url, head)
        assert status_line == b"HTTP/1.1 401 ", header
    async with httpx.AsyncClient() as client:
        ok = await client.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200


@pytest.mark.parametrize("token", ["short", " " * 16, "x" * 15])
async def test_a_short_or_blank_token_is_refused_at_start(tmp_path: Path, token: str) -> None:
    config = WorkerConfig(token=token)
    with pytest.raises(ConfigError, match="at least 16 characters, without spaces"):
        await run_worker("m", config, tmp_path, shutdown=trio.sleep_forever)
