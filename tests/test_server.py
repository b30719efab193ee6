"""What every daemon's HTTP side shares: token checks, the JSON error shape, the one mapping
from error class to status, closing a connection its client closed, and stopping at a signal."""

from __future__ import annotations

import functools
import io
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
import trio.testing
from quart import Response, request

from rbee.config import HiveConfig, WorkerConfig
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
from rbee.hive.daemon import run_hive
from rbee.models.importer import DEFAULT_MODEL
from rbee.server import (
    bearer_ok,
    create_app,
    error_parts,
    is_loopback,
    require_token,
    serve,
    shutdown_trigger,
)
from rbee.worker import daemon as worker_daemon
from tests.helpers import RBEE, answered_connection


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


# One request of each kind a quart route answers: a JSON answer, a stream (chunked), an error
# raised by the route after its body was read, a route that does not exist.
ANSWERS = {
    "json": b"GET /v1/thing HTTP/1.1\r\nHost: x\r\n\r\n",
    "stream": b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "error": b"POST /v1/thing HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    "no route": b"GET /v1/nope HTTP/1.1\r\nHost: x\r\n\r\n",
}


async def serve_things(nursery: trio.Nursery, header_timeout: float) -> str:
    """An app with the routes `ANSWERS` asks for, served in ``nursery``; its URL."""
    app = create_app("test")

    @app.get("/v1/thing")
    async def thing() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/thing")
    async def bad_thing() -> Response:
        await request.get_data()
        raise UsageError("bad thing")

    @app.get("/v1/stream")
    async def stream() -> Response:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            yield b"data: [DONE]\n\n"

        return Response(events(), mimetype="text/event-stream")

    serving = functools.partial(
        serve, app, "127.0.0.1", 0, shutdown=trio.sleep_forever, header_timeout=header_timeout
    )
    url: str = await nursery.start(serving)
    return url


@pytest.mark.parametrize("answer", ANSWERS)
async def test_a_connection_the_client_closes_after_its_answer_is_closed_at_once(
    nursery: trio.Nursery, answer: str
) -> None:
    # The keep-alive timeout is far longer than the wait below: only the client's close ends it.
    url = await serve_things(nursery, header_timeout=600)
    connection, status = await answered_connection(url, ANSWERS[answer])
    assert status.startswith(b"HTTP/1.1 "), status
    async with connection:
        # The answer is out before the server's own bookkeeping for a next request is done:
        # close once it is, idle, as a client that does not share the server's loop mostly does.
        await trio.testing.wait_all_tasks_blocked()
        await connection.send_eof()
        with trio.fail_after(10):
            assert await connection.receive_some(100) == b""


async def test_the_shutdown_trigger_keeps_a_signal_sent_before_it_is_awaited() -> None:
    with shutdown_trigger() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with trio.fail_after(10):
            await stop()


async def test_a_given_shutdown_is_the_trigger_and_no_signal_is_caught() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with shutdown_trigger(trio.sleep_forever) as stop:
        assert stop is trio.sleep_forever
        assert signal.getsignal(signal.SIGTERM) == before


class _SignalAtListening(io.StringIO):
    """A daemon's ``out`` that sends this process a SIGTERM as the "listening" line is written,
    after checking that the daemon catches it by then (the default action would end pytest)."""

    def __init__(self) -> None:
        super().__init__()
        self.default = signal.getsignal(signal.SIGTERM)

    def write(self, text: str) -> int:
        if " listening on " in text:
            caught = signal.getsignal(signal.SIGTERM) != self.default
            assert caught, f"SIGTERM is not caught yet when {text!r} shows"
            os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)


async def test_a_hive_catches_sigterm_before_its_line_shows(tmp_path: Path) -> None:
    config = HiveConfig(port=0, queen_url="http://127.0.0.1:9", heartbeat_interval_s=0.05)
    out = _SignalAtListening()
    with trio.fail_after(30):
        await run_hive(config, tmp_path / "m", tmp_path / "s", out=out)
    assert out.getvalue().startswith("rbee hive listening on http://127.0.0.1:")


async def test_a_loading_worker_catches_sigterm_before_its_line_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def load_never(*_: object) -> object:
        release.wait(30)
        raise AssertionError("the worker was not stopped while it loaded")

    monkeypatch.setattr(worker_daemon, "load_model", load_never)
    out = _SignalAtListening()
    try:
        with trio.fail_after(30):
            await worker_daemon.run_worker("m", WorkerConfig(), tmp_path, out=out)
    finally:
        release.set()
    assert out.getvalue().startswith("rbee worker listening on http://127.0.0.1:")


def _daemon_argv(daemon: str, tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    if daemon == "queen":
        return ["queen", "--no-local-hive", "--port", "0", "--db", str(tmp_path / "q.db")]
    if daemon == "hive":
        dirs = ["--models-dir", str(tmp_path / "m"), "--state-dir", str(tmp_path / "s")]
        return ["hive", "daemon", "--queen", "http://127.0.0.1:9", "--port", "0", *dirs]
    # The real default model takes seconds to load: the signal comes while it loads.
    store: Path = request.getfixturevalue("model_store")
    return ["worker", "daemon", "--model", DEFAULT_MODEL, "--models-dir", str(store), "--port", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("daemon", ["queen", "hive", "worker"])
def test_a_sigterm_sent_as_soon_as_a_daemon_listens_stops_it_cleanly(
    daemon: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    argv = [*RBEE, *_daemon_argv(daemon, tmp_path, request)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            proc.send_signal(signal.SIGTERM)
            assert line.startswith(f"rbee {daemon} listening on http://127.0.0.1:"), line
            _, errors = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors
