"""What every rbee daemon's HTTP side shares: the app, its errors, auth, and serving it.

Each daemon builds its routes on `create_app`, so that every `RbeeError` a route raises is answered
by `error_parts` (the status, type and code its class gives, see `rbee.errors`) as a JSON error
(`rbee.wire.ErrorBody`), and runs it with `serve`, which binds (port 0 allowed), reports the bound
URL through ``task_status`` and shuts down gracefully when ``shutdown`` fires (a daemon's default:
the first signal, `shutdown_trigger`).

Limits every daemon applies to every request, before any route runs: a body over
`MAX_BODY_BYTES` is a 413 (`BodyLimit`: answered from its ``Content-Length`` without reading it,
or cut off once a chunked one grows past it); a request whose headers take longer than
`HEADER_TIMEOUT_S` to arrive loses its connection (hypercorn's keep-alive timer runs from the
connection's start, or from the previous response, until a request's headers are complete); a
body that is not UTF-8 JSON of the route's wire type is a 400 naming the field
(`rbee.wire.decode`).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from rbee import wire
from rbee.config import MIN_TOKEN_CHARS, is_loopback, require_token
from rbee.errors import AuthError, RbeeError

__all__ = [
    "BAD_TOKEN",
    "HEADER_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MIN_TOKEN_CHARS",
    "BodyLimit",
    "bearer_ok",
    "create_app",
    "error_parts",
    "error_response",
    "is_loopback",
    "json_response",
    "rbee_error_response",
    "require_token",
    "serve",
    "shutdown_trigger",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
# Long enough for a client on a slow link, short enough that a client that sends its headers a
# byte at a time cannot hold a connection for long; also how long an idle keep-alive connection
# is kept (hypercorn has one timer for both).
HEADER_TIMEOUT_S = 20.0
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
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time).

    An empty token (``Bearer `` and nothing) never matches, whatever ``token`` is.
    """
    given = authorization.removeprefix("Bearer ").strip()
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def create_app(name: str, token: str = "") -> QuartTrio:
    """A quart-trio app with rbee's error handling and, when ``token`` is set, bearer auth.

    ``GET /health`` stays open so that supervisors can probe a daemon without its token.
    """
    # No static folder: a daemon serves no files but the ones its routes choose.
    app = QuartTrio(name, static_folder=None)
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
        if status == 413:
            # The rest of the body is never read: the connection cannot carry another request.
            return error_response(
                f"request body too large: at most {MAX_BODY_BYTES} bytes are accepted",
                413,
                code="body_too_large",
                headers={"Connection": "close"},
            )
        return error_response(f"{err.name}: {err.description}", status)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(f"internal error: {type(err).__name__}", 500, "server_error")

    app.asgi_app = cast(Any, BodyLimit(cast(_App, app.asgi_app)))  # type: ignore[method-assign]

    if token:

        @app.before_request
        async def _check_token() -> Response | None:
            if request.path == "/health":
                return None
            if not bearer_ok(request.headers.get("Authorization", ""), token):
                raise AuthError(BAD_TOKEN)
            return None

    return app


_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request whose ``Content-Length`` is over ``limit`` bytes gets a 413 JSON
    error at once, its body never read, and its connection closed.

    A body sent without a length (chunked) is counted by quart as it arrives
    (``MAX_CONTENT_LENGTH``), which answers the same 413 once it grows past the limit.
    """

    def __init__(self, app: _App, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http":
            length = _content_length(scope["headers"])
            if length is not None and length > self.limit:
                await self._refuse(send, length)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: _Send, length: int) -> None:
        body = _error_body(
            f"request body too large: {length} bytes, at most {self.limit} are accepted",
            "invalid_request_error",
            "body_too_large",
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _Connection(TCPServer):
    """hypercorn's trio connection, closed as soon as the client has closed its side.

    hypercorn's own keeps its keep-alive timer running after the end of the client's data: a
    connection the client closes while it is idle between requests (its response sent, no
    request begun) stays open, its socket in CLOSE_WAIT with its file descriptor and tasks,
    until the timer runs out (``keep_alive_timeout``).
    """

    async def _read_data(self) -> None:
        await super()._read_data()
        # Nothing more can arrive, so no idle wait is left to time: stopping the timer lets
        # the connection's task group end, which closes the socket.
        await self.idle_task.stop()


# hypercorn's trio worker makes each connection from this name, read at each `serve`; it takes
# no connection class as a setting.
hypercorn_run.TCPServer = _Connection  # type: ignore[attr-defined]


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    shutdown: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    graceful_timeout: float = 5.0,
    header_timeout: float = HEADER_TIMEOUT_S,
    listener: socket.socket | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``shutdown`` returns; report the bound base URL.

    ``listener``: a socket already bound and listening there, served instead (and closed at
    the end), so that connections made before the app existed wait in its backlog.

    A connection whose next request's headers have not all arrived ``header_timeout`` seconds
    after it opened (or after its previous response) is closed.
    """
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if listener is not None:
        config.bind = [f"fd://{listener.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = header_timeout
    # hypercorn's default of 100 resets connections from a burst of clients (500 at once, tested).
    config.backlog = 1024

    async def _started(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_started)
        task_status.started(binds[0])


@contextlib.contextmanager
def shutdown_trigger(
    given: Callable[[], Awaitable[None]] | None = None,
) -> Iterator[Callable[[], Awaitable[None]]]:
    """``given`` or, when it is None, a trigger that returns at the first SIGINT or SIGTERM.

    The signals are caught from the moment the block is entered, not from when the trigger is
    first awaited (hypercorn awaits it in a task of its own, after the address is reported): a
    daemon that enters the block before it prints its address stops cleanly on a SIGTERM sent as
    soon as the line shows, instead of being killed by it.
    """
    if given is not None:
        yield given
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            async for _ in signals:
                return

        yield first_signal
