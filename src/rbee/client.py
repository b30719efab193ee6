"""What every HTTP client of an rbee API shares: base URL, token, error conversion.

httpx errors are converted here, at the boundary: a refused connection becomes `ConnectError`, an
error status becomes `ApiError` with the server's message. The API-specific clients
(`rbee.queen.client`, `rbee.hive.client`, the hive's pull) build on these two functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import msgspec

from rbee.errors import ApiError, ConnectError, NotFoundError

__all__ = ["auth_headers", "check", "translate_errors"]


def auth_headers(token: str) -> dict[str, str]:
    """The bearer header for ``token`` (none when it is empty)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def check(response: httpx.Response, what: str) -> httpx.Response:
    """Return ``response`` if it succeeded, else raise `ApiError` with the server's message."""
    if response.is_success:
        return response
    message = response.reason_phrase or "error"
    with contextlib.suppress(msgspec.DecodeError, KeyError, TypeError, AttributeError):
        message = msgspec.json.decode(response.content)["error"]["message"]
    if response.status_code == 404:
        raise NotFoundError(f"{what}: {message}")
    raise ApiError(f"{what}: {message} (HTTP {response.status_code})", response.status_code)


@contextlib.contextmanager
def translate_errors(what: str, url: str) -> Iterator[None]:
    """Turn httpx transport errors into `ConnectError` naming ``what`` and where it was looked for."""
    try:
        yield
    except httpx.ConnectError:
        raise ConnectError(f"cannot reach the {what} at {url}: is it running?") from None
    except httpx.TimeoutException:
        raise ConnectError(f"the {what} at {url} did not answer in time") from None
    except httpx.TransportError as err:
        raise ConnectError(f"connection to the {what} at {url} failed: {err}") from None
