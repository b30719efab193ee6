"""Server-sent events as rbee uses them: one ``data: <payload>`` line per event.

A stream ends with exactly one terminal marker: ``[DONE]``, ``[ERROR] <message>`` or ``[CANCELLED]``.

Starting a generation is two calls (a ``POST`` that answers where to stream, then that ``GET``) or
one: a ``POST`` sent with ``Accept: text/event-stream`` is answered with the stream itself, and the
id that cancels it comes in the ``Rbee-Job-Id`` header. One call saves a round trip on the path to
the first token, which is why the queen starts its attempts that way.
Both the producers (worker, queen relay) and the consumers (queen relay, keeper) use these helpers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

__all__ = [
    "CANCELLED",
    "DONE",
    "ERROR_PREFIX",
    "JOB_ID_HEADER",
    "data_lines",
    "error_marker",
    "event",
    "is_terminal",
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
