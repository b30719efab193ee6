"""What every daemon's HTTP side shares: token checks, the JSON error shape and the one mapping
from error class to status."""

from __future__ import annotations

import functools

import httpx
import msgspec
import pytest
import trio

from rbee.errors import (
    ApiError,
    ConfigError,
    ConnectError,
    InferenceError,
    ModelError,
    ModelNotFoundError,
    NotFoundError,
    PolicyError,
    QueueFullError,
    RbeeError,
    SshError,
    UsageError,
)
from rbee.server import bearer_ok, create_app, error_parts, is_loopback, require_token, serve


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert is_loopback(host)
    require_token(host, "", "worker", "worker.token")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "gpu1.lan"])
def test_other_hosts_need_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve the hive on .* hive\.token"):
        require_token(host, "", "hive", "hive.token")
    require_token(host, "t" * 16, "hive", "hive.token")


@pytest.mark.parametrize(
    "token", ["short", "x" * 15, " " * 20, "sixteen chars or more, with spaces"]
)
def test_a_guessable_token_is_refused_at_start(token: str) -> None:
    with pytest.raises(ConfigError, match=r"at least 16 characters, without spaces"):
        require_token("127.0.0.1", token, "queen", "queen.token")


def test_an_empty_bearer_never_matches() -> None:
    assert not bearer_ok("Bearer ", "")
    assert not bearer_ok("", "")
    assert bearer_ok("Bearer " + "k" * 16, "k" * 16)


async def test_a_token_guards_every_route_but_health() -> None:
    app = create_app("test", token="s3cret")

    @app.get("/v1/thing")
    async def thing() -> dict[str, bool]:
        return {"ok": True}

    client = app.test_client()
    denied = await client.get("/v1/thing")
    assert denied.status_code == 401
    assert "Bearer" in (await denied.get_json())["error"]["message"]
    wrong = await client.get("/v1/thing", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    allowed = await client.get("/v1/thing", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200
    assert (await client.get("/health")).status_code == 404  # open (not 401), just not defined here


async def test_unknown_route_is_a_json_404() -> None:
    client = create_app("test").test_client()
    response = await client.get("/v1/nope")
    assert response.status_code == 404
    assert "error" in await response.get_json()


@pytest.mark.parametrize(
    ("error", "status", "type_", "code"),
    [
        (UsageError("bad"), 400, "invalid_request_error", None),
        (NotFoundError("no job"), 404, "invalid_request_error", None),
        (ModelNotFoundError("no model"), 404, "invalid_request_error", "model_not_found"),
        (ModelError("bad graph"), 422, "invalid_request_error", None),
        (QueueFullError("full", retry_after=3), 429, "rate_limit_exceeded", "queue_full"),
        (ConnectError("down"), 502, "server_error", None),
        (SshError("refused"), 502, "server_error", None),
        (InferenceError("engine"), 500, "server_error", None),
        (PolicyError("fuel"), 500, "server_error", None),
        (ConfigError("bad key"), 500, "server_error", None),
        (ApiError("gone", 410), 410, "invalid_request_error", None),
    ],
)
def test_each_error_class_answers_with_its_status(
    error: RbeeError, status: int, type_: str, code: str | None
) -> None:
    got, body, headers = error_parts(error)
    detail = msgspec.json.decode(body)["error"]
    assert (got, detail["type"], detail["code"]) == (status, type_, code)
    assert detail["message"] == str(error)
    assert headers == ({"Retry-After": "3"} if status == 429 else {})


async def test_quart_routes_answer_errors_through_the_one_mapping() -> None:
    app = create_app("test")

    @app.get("/v1/model")
    async def model() -> dict[str, str]:
        raise ModelError("model m has no fp16 graph")

    @app.post("/v1/thing")
    async def thing() -> dict[str, str]:
        raise UsageError("invalid request body: temperature too high", param="temperature")

    client = app.test_client()
    unloadable = await client.get("/v1/model")
    assert unloadable.status_code == 422
    assert (await unloadable.get_json())["error"]["message"] == "model m has no fp16 graph"
    bad = await client.post("/v1/thing")
    assert bad.status_code == 400
    assert (await bad.get_json())["error"]["param"] == "temperature"


async def test_a_client_that_sends_its_headers_slowly_is_cut_off(nursery: trio.Nursery) -> None:
    app = create_app("test")

    @app.get("/v1/thing")
    async def thing() -> dict[str, bool]:
        return {"ok": True}

    url: str = await nursery.start(
        functools.partial(
            serve, app, "127.0.0.1", 0, shutdown=trio.sleep_forever, header_timeout=0.5
        )
    )
    port = int(url.rsplit(":", 1)[1])
    slow = await trio.open_tcp_stream("127.0.0.1", port)
    async with slow, httpx.AsyncClient() as client:
        await slow.send_all(b"GET /v1/thing HTTP/1.1\r\nHost: x\r\n")
        # Others are served while the slow client holds its connection.
        assert (await client.get(f"{url}/v1/thing")).json() == {"ok": True}
        # The headers never end: the server closes the connection (with nothing to say).
        with trio.fail_after(10):
            assert await slow.receive_some(100) == b""
