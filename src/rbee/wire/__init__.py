"""Every message that crosses HTTP, defined once and used by both ends.

One module per API: `rbee.wire.worker` (the worker's inference API), `rbee.wire.queen` (jobs,
heartbeats, status), `rbee.wire.hive` (workers and models on a host), `rbee.wire.openai` (the
OpenAI-compatible subset). Each message is a `msgspec.Struct`; `decode` validates a body and turns
a bad one into a `UsageError` that says what was wrong and where.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from rbee.errors import UsageError

__all__ = [
    "NAME_PATTERN",
    "PROTOCOL_VERSION",
    "ErrorBody",
    "ErrorDetail",
    "bad_body",
    "check_name",
    "decode",
    "decode_with",
    "encode",
    "error_param",
    "to_builtins",
]

PROTOCOL_VERSION = 1

T = TypeVar("T")

_encoder = msgspec.json.Encoder()

# Hive, key, tenant and worker names: safe in a path, a log line, a file name and a shell word.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
# msgspec names the bad value's place last ("... - at `$.messages[0].role`"), and a missing
# field first ("Object missing required field `messages`").
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


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
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise bad_body(err, what) from None


def decode_with(
    data: bytes | str, decoder: msgspec.json.Decoder[T], what: str = "request body"
) -> T:
    """`decode` with a decoder made once."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise bad_body(err, what) from None


def bad_body(
    err: msgspec.DecodeError | UnicodeDecodeError, what: str = "request body"
) -> UsageError:
    """The `UsageError` for a body msgspec refused; its ``param`` is the bad field's path."""
    if isinstance(err, msgspec.ValidationError):
        return UsageError(f"invalid {what}: {err}", param=error_param(str(err)))
    if isinstance(err, UnicodeDecodeError):
        return UsageError(
            f"invalid {what}: not UTF-8 (byte {err.start} is {err.object[err.start]:#04x})"
        )
    return UsageError(f"invalid {what}: not valid JSON ({err})")


def error_param(message: str) -> str | None:
    """The field a msgspec validation message is about, as a dotted path (``messages[0].role``)."""
    at = _AT.search(message)
    path = at[1] if at else ""
    missing = _MISSING.match(message)
    if missing:
        path = f"{path}.{missing[1]}" if path else missing[1]
    return path or None


def check_name(value: str, param: str) -> str:
    """``value`` if it is a safe name (`NAME_PATTERN`), else a `UsageError` naming ``param``."""
    if not _NAME.match(value):
        raise UsageError(
            f"invalid {param} {value[:80]!r}: use letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, at most 63 characters",
            param=param,
        )
    return value


def to_builtins(obj: Any) -> Any:
    """Plain dicts and lists for ``--json`` output."""
    return msgspec.to_builtins(obj)
