"""Every message that crosses HTTP, defined once and used by both ends.

One module per API: `rbee.wire.worker` (the worker's inference API), `rbee.wire.queen` (jobs,
heartbeats, status), `rbee.wire.hive` (workers and models on a host), `rbee.wire.openai` (the
OpenAI-compatible subset). Each message is a `msgspec.Struct`; `decode` validates a body and turns
a bad one into a `UsageError` that says what was wrong and where.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from rbee.errors import UsageError

__all__ = ["PROTOCOL_VERSION", "ErrorBody", "ErrorDetail", "decode", "encode", "to_builtins"]

PROTOCOL_VERSION = 1

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong, in OpenAI's error shape so that one client parses every rbee API.

    ``param`` names the request field that was wrong, when one was.
    """

    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every 4xx/5xx answer: ``{"error": {"message": ..., "type": ..., ...}}``."""

    error: ErrorDetail


def encode(obj: Any) -> bytes:
    """Encode a wire struct (or plain data) as JSON bytes."""
    return _encoder.encode(obj)


def decode(data: bytes | str, type: type[T], what: str = "request body") -> T:
    """Decode and validate JSON as ``type``; a bad body raises `UsageError` naming the field."""
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.ValidationError as err:
        raise UsageError(f"invalid {what}: {err}") from None
    except msgspec.DecodeError as err:
        raise UsageError(f"invalid {what}: not valid JSON ({err})") from None


def to_builtins(obj: Any) -> Any:
    """Plain dicts and lists for ``--json`` output."""
    return msgspec.to_builtins(obj)
