"""OpenAI-compatible routes on the queen: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Each request becomes an ``infer`` job (same admission, scheduling, retries and records as
``POST /v1/jobs``); its stream is translated into OpenAI's chunks, or collected when ``stream`` is
false. A client that disconnects cancels its job.

Errors come in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``, statuses as
`rbee.errors` maps them), so that OpenAI's clients raise their matching exceptions: a bad
parameter is a 400 whose ``param`` names it, a model nobody has a 404 ``model_not_found`` (at once,
nothing is started for it), a wrong token a 401 ``invalid_api_key``, a full queue a 429
``queue_full`` with ``Retry-After``. A job that fails before its answer starts is answered with
the error that failed it (502 when no error class says better).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Literal

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from rbee import sse, wire
from rbee.errors import RbeeError
from rbee.queen.auth import Gate, caller
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.jobs import Job
from rbee.server import error_response, json_response, rbee_error_response
from rbee.wire import openai as oa
from rbee.wire import worker as ww
from rbee.wire.queen import InferOperation

__all__ = ["add_routes"]

_events = ww.stream_event_decoder()
_ERROR = sse.ERROR_PREFIX.encode()
_CANCELLED = sse.CANCELLED.encode()
_DONE_FRAME = sse.event(sse.DONE)

# OpenAI has no "cancelled"; a cancelled generation stopped, as far as its clients can tell.
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}

_ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


_chat_request = msgspec.json.Decoder(oa.ChatCompletionRequest)
_completion_request = msgspec.json.Decoder(oa.CompletionRequest)


class _Failed(Exception):
    """The job ended with an error; ``failure`` is the error class that failed it, if any."""

    def __init__(self, message: str, failure: RbeeError | None = None) -> None:
        super().__init__(message)
        self.failure = failure


def _operation(body: oa.ChatCompletionRequest | oa.CompletionRequest) -> InferOperation:
    sampling: dict[str, object] = {"stop": body.stop_list()}
    if body.temperature is not None:
        sampling["temperature"] = body.temperature
    if body.top_p is not None:
        sampling["top_p"] = body.top_p
    if body.seed is not None:
        sampling["seed"] = body.seed
    if isinstance(body, oa.ChatCompletionRequest):
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None:
            sampling["max_tokens"] = max_tokens
        messages = [ww.ChatMessage(_ROLES[m.role], m.text()) for m in body.messages]
        return InferOperation(model=body.model, messages=messages, **sampling)  # type: ignore[arg-type]
    # OpenAI's legacy completions default to 16 tokens.
    sampling["max_tokens"] = body.max_tokens or 16
    return InferOperation(model=body.model, prompt=body.prompt_text(), **sampling)  # type: ignore[arg-type]


async def _pieces(dispatcher: Dispatcher, job: Job) -> AsyncGenerator[ww.Token | ww.Finished, None]:
    """The job's tokens and final event; raise `_Failed` on ``[ERROR]``; cancel on early exit."""
    try:
        # Closed at once when an error ends the loop early, not by the garbage collector.
        async with contextlib.aclosing(job.stream.batches()) as batches:
            async for batch in batches:
                for payload in batch:
                    if payload.startswith(_ERROR):
                        message = payload[len(_ERROR) :].decode(errors="replace").strip()
                        raise _Failed(message, job.failure)
                    if payload == _CANCELLED:
                        raise _Failed("the job was cancelled")
                    if payload.startswith(b"{"):
                        event = _events.decode(payload)
                        if not isinstance(event, ww.Started):
                            yield event
    finally:
        if not job.done.is_set():
            dispatcher.cancel(job.id)


def _usage(finished: ww.Finished) -> oa.Usage:
    u = finished.usage
    return oa.Usage(u.prompt_tokens, u.completion_tokens, u.total_tokens)


def _error_frame(message: str) -> bytes:
    body = wire.ErrorBody(error=wire.ErrorDetail(message=message, type="server_error"))
    return sse.event(wire.encode(body))


def _failed_response(err: _Failed) -> Response:
    if err.failure is not None:
        return rbee_error_response(err.failure)
    return error_response(str(err), 502, "server_error")


async def _collect(dispatcher: Dispatcher, job: Job) -> tuple[str, ww.Finished]:
    """The whole text of a job and its final event (for the non-streaming answers)."""
    text: list[str] = []
    finished: ww.Finished | None = None
    async with contextlib.aclosing(_pieces(dispatcher, job)) as events:
        async for event in events:
            if isinstance(event, ww.Token):
                text.append(event.t)
            else:
                finished = event
    assert finished is not None
    return "".join(text), finished


def add_routes(app: QuartTrio, dispatcher: Dispatcher, gate: Gate) -> None:
    """Add the OpenAI-compatible routes to the queen's ``app`` (callers checked by ``gate``)."""

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(oa.ModelList([oa.Model(m) for m in dispatcher.registry.models()]))

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        body = wire.decode_with(await request.get_data(), _chat_request)
        operation = _operation(body)
        await dispatcher.prompts.check(operation)
        job = gate.submit(dispatcher, caller(), operation)
        await dispatcher.accepted(job)
        cid, created = f"chatcmpl-{job.id.removeprefix('job-')}", int(time.time())
        if body.stream:
            return Response(
                _chat_stream(dispatcher, job, body, cid, created),
                headers=sse.SSE_HEADERS,
            )
        try:
            text, finished = await _collect(dispatcher, job)
        except _Failed as err:
            return _failed_response(err)
        message = oa.ChatMessageOut(text)
        choice = oa.ChatChoice(0, message, _FINISH[finished.finish_reason])
        completion = oa.ChatCompletion(
            id=cid, created=created, model=body.model, choices=[choice], usage=_usage(finished)
        )
        return json_response(completion)

    @app.post("/v1/completions")
    async def completions() -> Response:
        body = wire.decode_with(await request.get_data(), _completion_request)
        operation = _operation(body)
        await dispatcher.prompts.check(operation)
        job = gate.submit(dispatcher, caller(), operation)
        await dispatcher.accepted(job)
        cid, created = f"cmpl-{job.id.removeprefix('job-')}", int(time.time())
        if body.stream:
            return Response(
                _completion_stream(dispatcher, job, body, cid, created),
                headers=sse.SSE_HEADERS,
            )
        try:
            text, finished = await _collect(dispatcher, job)
        except _Failed as err:
            return _failed_response(err)
        choice = oa.CompletionChoice(0, text, _FINISH[finished.finish_reason])
        completion = oa.Completion(
            id=cid, created=created, model=body.model, choices=[choice], usage=_usage(finished)
        )
        return json_response(completion)


async def _chat_stream(
    dispatcher: Dispatcher, job: Job, body: oa.ChatCompletionRequest, cid: str, created: int
) -> AsyncGenerator[bytes, None]:
    def chunk(delta: oa.Delta, finish: str | None = None, usage: oa.Usage | None = None) -> bytes:
        choices = [] if usage is not None else [oa.ChunkChoice(0, delta, finish)]
        return sse.event(
            msgspec.json.encode(
                oa.ChatCompletionChunk(
                    id=cid, created=created, model=body.model, choices=choices, usage=usage
                )
            )
        )

    yield chunk(oa.Delta(role="assistant", content=""))
    try:
        async with contextlib.aclosing(_pieces(dispatcher, job)) as events:
            async for event in events:
                if isinstance(event, ww.Token):
                    yield chunk(oa.Delta(content=event.t))
                else:
                    yield chunk(oa.Delta(), _FINISH[event.finish_reason])
                    if body.include_usage:
                        yield chunk(oa.Delta(), usage=_usage(event))
    except _Failed as err:
        yield _error_frame(str(err))
        return
    yield _DONE_FRAME


async def _completion_stream(
    dispatcher: Dispatcher, job: Job, body: oa.CompletionRequest, cid: str, created: int
) -> AsyncGenerator[bytes, None]:
    def piece(
        text: str, finish: str | None = None, usage: oa.Usage | None = None, last: bool = False
    ) -> bytes:
        choices = [] if last else [oa.CompletionChoice(0, text, finish)]
        return sse.event(
            msgspec.json.encode(
                oa.Completion(
                    id=cid, created=created, model=body.model, choices=choices, usage=usage
                )
            )
        )

    try:
        async with contextlib.aclosing(_pieces(dispatcher, job)) as events:
            async for event in events:
                if isinstance(event, ww.Token):
                    yield piece(event.t)
                else:
                    yield piece("", _FINISH[event.finish_reason])
                    if body.include_usage:
                        yield piece("", usage=_usage(event), last=True)
    except _Failed as err:
        yield _error_frame(str(err))
        return
    yield _DONE_FRAME
