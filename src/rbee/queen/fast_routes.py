"""The two routes on a job's path to its first token, served as plain ASGI in front of quart.

They are ``POST /v1/jobs`` (answered with the job's stream when the client accepts
``text/event-stream``, else with its id and stream URL) and ``GET /v1/jobs/{id}/stream``. Quart's
request and response machinery costs about 0.25 ms a request on a small machine, an eighth of all
the queen may add to the time to first token (``bench/queen.py``), so these two do without it.

They speed up the way a job is accepted and followed, nothing else: a request they would answer
differently from the quart app (another route, a caller the `Gate` refuses, a cross-site request
(`rbee.queen.auth.cross_site`), another tenant's job, a body that is too large, not sized by
``Content-Length`` or does not decode, a job that is not held any more) goes to the quart app with its body, which answers it as it answers every request. Only a refusal by
`Gate.submit` (a model the key may not use, its quota used up, queue full, unknown model, no
worker, shutting down, ``max_tokens`` beyond the context) or by
`rbee.queen.prompts.PromptCheck` (a prompt the model's context cannot hold) is answered here, with `rbee.server.error_parts` like every other error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import msgspec
import trio
from quart_trio import QuartTrio

from rbee import sse, wire
from rbee.errors import RbeeError
from rbee.queen.app import follow_job, last_event_id
from rbee.queen.auth import Caller, Gate, cross_site
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.jobs import Job
from rbee.server import MAX_BODY_BYTES, error_parts
from rbee.wire.queen import JobAccepted, JobRequest

__all__ = ["FastRoutes", "install"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_decoder = msgspec.json.Decoder(JobRequest)
_SSE_HEADERS = [(k.lower().encode(), v.encode()) for k, v in sse.SSE_HEADERS.items()]
_STREAM_PATH = re.compile(r"/v1/jobs/([^/]+)/stream")


def install(app: QuartTrio, dispatcher: Dispatcher, gate: Gate) -> None:
    """Serve the two routes in front of ``app``'s own."""
    inner = cast(App, app.asgi_app)
    app.asgi_app = cast(Any, FastRoutes(inner, dispatcher, gate))  # type: ignore[method-assign]


class FastRoutes:
    """ASGI middleware: serves the two routes itself when it can, passes the rest to ``app``."""

    def __init__(self, app: App, dispatcher: Dispatcher, gate: Gate) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        match = _STREAM_PATH.fullmatch(path) if method == "GET" else None
        job = self.dispatcher.jobs.get(match[1]) if match else None
        submit = method == "POST" and path == "/v1/jobs"
        headers: dict[bytes, bytes] = dict(scope["headers"]) if job is not None or submit else {}
        who = self._caller(scope, headers) if job is not None or submit else None
        if job is not None and who is not None and (who.key is None or who.tenant == job.tenant):
            await self._follow(job, headers, receive, send)
        elif submit and who is not None:
            await self._submit(scope, headers, who, receive, send)
        else:
            await self.app(scope, receive, send)

    def _caller(self, scope: Scope, headers: dict[bytes, bytes]) -> Caller | None:
        """The caller, if the gate lets it call a client route (else quart answers the refusal)."""
        client = scope.get("client")
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        fetch_site, origin = _header(headers, b"sec-fetch-site"), _header(headers, b"origin")
        if cross_site(
            scope["method"], authorization, fetch_site, origin, _header(headers, b"host")
        ):
            return None
        try:
            who = self.gate.identify(authorization, client[0] if client else None)
            self.gate.allow(who, "client")
        except RbeeError:
            return None
        return who

    async def _follow(
        self, job: Job, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        try:
            after = last_event_id(job, _header(headers, b"last-event-id"))
        except RbeeError as err:
            await _answer_error(send, err)
            return
        await _stream(self.dispatcher, job, receive, send, after)

    async def _submit(
        self, scope: Scope, headers: dict[bytes, bytes], who: Caller, receive: Receive, send: Send
    ) -> None:
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before it sent the whole request: nobody to answer
        request = _decode(body)
        if request is None:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            if self.dispatcher.prompts.might_not_fit(request):
                await self.dispatcher.prompts.check(request)
            job = self.gate.submit(self.dispatcher, who, request)
        except RbeeError as err:
            await _answer_error(send, err)
            return
        await self.dispatcher.accepted(job)
        if sse.wants_stream(headers.get(b"accept", b"").decode("latin-1")):
            await _stream(self.dispatcher, job, receive, send)
        else:
            await _answer(send, 202, wire.encode(JobAccepted(job.id, f"/v1/jobs/{job.id}/stream")))


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


async def _read_body(receive: Receive) -> bytes | None:
    """The request body; None when the client went away before sending all of it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _decode(body: bytes) -> JobRequest | None:
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever ``receive`` gives."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer_error(send: Send, err: RbeeError) -> None:
    status, body, extra = error_parts(err)
    await _answer(send, status, body, extra)


async def _answer(
    send: Send, status: int, body: bytes, extra: dict[str, str] | None = None
) -> None:
    """A whole JSON answer."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _stream(
    dispatcher: Dispatcher, job: Job, receive: Receive, send: Send, after: int = 0
) -> None:
    """Send the job's stream (past its first ``after`` events) until it ends (`follow_job`)."""
    headers = [*_SSE_HEADERS, (sse.JOB_ID_HEADER.lower().encode(), job.id.encode())]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with contextlib.aclosing(follow_job(dispatcher, job, after)) as frames:
            async for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        nursery.cancel_scope.cancel()


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
