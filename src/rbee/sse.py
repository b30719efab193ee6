"""Server-sent events as rbee uses them: one ``data: <payload>`` line per event.

A stream ends with exactly one terminal marker: ``[DONE]``, ``[ERROR] <message>`` or ``[CANCELLED]``.

Starting a generation is two calls (a ``POST`` that answers where to stream, then that ``GET``) or
one: a ``POST`` sent with ``Accept: text/event-stream`` is answered with the stream itself, and the
id that cancels it comes in the ``Rbee-Job-Id`` header. One call saves a round trip on the path to
the first token, which is why the queen starts its attempts that way.
Both the producers (worker, queen relay) and the consumers (queen relay, keeper) use these helpers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final, TypeVar

from rbee import wire
from rbee.errors import RbeeError

T = TypeVar("T")

__all__ = [
    "CANCELLED",
    "DONE",
    "ERROR_PREFIX",
    "JOB_ID_HEADER",
    "data_lines",
    "encoded",
    "error_marker",
    "event",
    "is_terminal",
    "started",
    "wants_stream",
]

DONE: Final = "[DONE]"
CANCELLED: Final = "[CANCELLED]"
ERROR_PREFIX: Final = "[ERROR]"

JOB_ID_HEADER: Final = "Rbee-Job-Id"

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def event(payload: bytes | str) -> bytes:
    """Frame one payload (already-encoded JSON or a marker) as an SSE event."""
    data = payload.encode() if isinstance(payload, str) else payload
    return b"data: " + data + b"\n\n"


def wants_stream(accept: str | None) -> bool:
    """Whether a request's ``Accept`` header asks for the stream in the same call."""
    return accept is not None and "text/event-stream" in accept


def error_marker(message: str) -> str:
    """The terminal ``[ERROR] ...`` marker; newlines are flattened to keep it one event."""
    return f"{ERROR_PREFIX} {' '.join(message.split())}"


def is_terminal(data: str) -> bool:
    """Whether ``data`` is one of the markers that end a stream."""
    return data in (DONE, CANCELLED) or data.startswith(ERROR_PREFIX)


async def data_lines(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yield the payload of each ``data:`` line of an SSE byte stream split into lines."""
    async for line in lines:
        if line.startswith("data:"):
            yield line[5:].removeprefix(" ")


async def started(events: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """``events`` once its first one has come: a refusal raised before it (a file that cannot
    be imported, a graph the source lacks) raises here, so that the route answers it with its
    status rather than with an ``[ERROR]`` event at the end of a 200 stream."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise

    async def resumed() -> AsyncGenerator[T, None]:
        async with contextlib.aclosing(events):
            if first is not None:
                yield first
                async for event_ in events:
                    yield event_

    return resumed()


async def encoded(events: AsyncGenerator[object, None]) -> AsyncGenerator[bytes, None]:
    """Each of ``events`` as a JSON SSE event, then `DONE`; an `RbeeError` ends the stream as
    an `ERROR_PREFIX` event instead."""
    try:
        async with contextlib.aclosing(events):
            async for item in events:
                yield event(wire.encode(item))
        yield event(DONE)
    except RbeeError as err:
        yield event(error_marker(str(err)))
