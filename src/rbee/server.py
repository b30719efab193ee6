"""What every rbee daemon's HTTP side shares: the app, its errors, auth, and serving it.

Each daemon builds its routes on `create_app`, so that every `RbeeError` a route raises is answered
by `error_parts` (the status, type and code its class gives, see `rbee.errors`) as a JSON error
(`rbee.wire.ErrorBody`), and runs it with `serve`, which binds (port 0 allowed), reports the bound
URL through ``task_status`` and shuts down gracefully when ``shutdown`` fires.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from rbee import wire
from rbee.config import is_loopback, require_token
from rbee.errors import AuthError, RbeeError

__all__ = [
    "BAD_TOKEN",
    "MAX_BODY_BYTES",
    "bearer_ok",
    "create_app",
    "error_parts",
    "error_response",
    "is_loopback",
    "json_response",
    "rbee_error_response",
    "require_token",
    "serve",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
BAD_TOKEN = "missing or wrong API token: send 'Authorization: Bearer <token>'"


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response from a wire struct or plain data."""
    return Response(wire.encode(obj), status=status, mimetype="application/json", headers=headers)


def error_response(
    message: str,
    status: int,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The one error shape every rbee API answers with."""
    body = _error_body(message, type_, code)
    return Response(body, status=status, mimetype="application/json", headers=headers)


def rbee_error_response(err: RbeeError) -> Response:
    """The answer to ``err`` (`error_parts`) as a quart response."""
    status, body, headers = error_parts(err)
    return Response(body, status=status, mimetype="application/json", headers=headers)


def error_parts(err: RbeeError) -> tuple[int, bytes, dict[str, str]]:
    """The status, JSON body and headers that answer ``err``, as its class says (`rbee.errors`)."""
    headers = {} if err.retry_after is None else {"Retry-After": str(err.retry_after)}
    if err.headers:
        headers.update(err.headers)
    return err.status, _error_body(str(err), err.error_type, err.code, err.param), headers


def _error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    detail = wire.ErrorDetail(message=message, type=type_, param=param, code=code)
    return wire.encode(wire.ErrorBody(error=detail))


def bearer_ok(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    given = authorization.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(name: str, token: str = "") -> QuartTrio:
    """A quart-trio app with rbee's error handling and, when ``token`` is set, bearer auth.

    ``GET /health`` stays open so that supervisors can probe a daemon without its token.
    """
    app = QuartTrio(name)
    # Token streams can run for minutes; quart's 60 s response timeout would cut them off.
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = 60
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(RbeeError)
    async def _rbee_error(err: RbeeError) -> Response:
        return rbee_error_response(err)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        return error_response(f"{err.name}: {err.description}", status)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(f"internal error: {type(err).__name__}", 500, "server_error")

    if token:

        @app.before_request
        async def _check_token() -> Response | None:
            if request.path == "/health":
                return None
            if not bearer_ok(request.headers.get("Authorization", ""), token):
                raise AuthError(BAD_TOKEN)
            return None

    return app


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    shutdown: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    graceful_timeout: float = 5.0,
    listener: socket.socket | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``shutdown`` returns; report the bound base URL.

    ``listener``: a socket already bound and listening there, served instead (and closed at
    the end), so that connections made before the app existed wait in its backlog.
    """
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if listener is not None:
        config.bind = [f"fd://{listener.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = 75

    async def _started(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_started)
        task_status.started(binds[0])


async def until_signal() -> None:
    """Return at the first SIGINT or SIGTERM (hypercorn's trio serve installs no handlers)."""
    import signal

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return
