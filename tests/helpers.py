"""Helpers for any test package: waiting for an effect that has no event to wait on, processes,
raw HTTP for what a well-behaved client cannot send."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping

import httpx
import msgspec
import psutil
import trio

from rbee.server import MAX_BODY_BYTES

POLL_S = 0.02


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0, what: str = ""
) -> None:
    """Poll ``predicate`` (plain or async) every `POLL_S` in a trio test until it is true.

    For effects outside the test's own tasks: another process, a file, a log, an HTTP answer.
    Fails with ``what`` (else the predicate's name) when it is still false after ``within`` s.
    """
    with trio.move_on_after(within):
        while True:
            result = predicate()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(POLL_S)
    raise AssertionError(f"{what or predicate.__qualname__}: not within {within:g} s")


def eventually_sync(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> float:
    """`eventually` outside trio (blocking); return the seconds it took to hold."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what or predicate.__qualname__}: not within {within:g} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie not yet reaped by whoever adopted it counts as ended)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# ``rbee`` as a user runs it, from this checkout: the start of every command line that runs the CLI.
RBEE = [sys.executable, "-m", "rbee"]


def run_rbee(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``rbee ARGS`` to its end and capture its output (``env``: the whole environment)."""
    return subprocess.run(
        [*RBEE, *args],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )


def listed_commands(help_text: str) -> list[str]:
    """The command names in the "Commands:" section of a group's ``--help``."""
    section = help_text.split("Commands:\n", 1)[1]
    return [line.split()[0] for line in section.splitlines() if line[:3].strip()]


async def raw_http(url: str, head: bytes) -> tuple[bytes, bytes]:
    """Send ``head`` (a request line and headers; any body is announced, never sent) to the
    server at ``url`` and read the JSON error it answers: (status line, headers and body)."""
    parsed = httpx.URL(url)
    stream = await trio.open_tcp_stream(parsed.host, parsed.port or 80)
    async with stream:
        await stream.send_all(head)
        data = b""
        while not data.endswith(b"}}") and (chunk := await stream.receive_some(65536)):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return status_line, rest


async def assert_body_limit(url: str, method: str, path: str, token: str = "") -> None:
    """A request to ``path`` that announces a body over the limit is a 413 at once, unread."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {httpx.URL(url).netloc.decode()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n{auth}\r\n"
    ).encode()
    with trio.fail_after(10):
        status_line, rest = await raw_http(url, head)
    assert status_line == b"HTTP/1.1 413 ", rest
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    error = msgspec.json.decode(body)["error"]
    assert error["code"] == "body_too_large"
    assert str(MAX_BODY_BYTES) in error["message"]


# YAML rules the policy page and its API tests check, preview, compile and apply.
RULES = """rules:
  - name: batch waits
    condition:
      priority: batch
    action:
      queue: "batch jobs wait"
default:
  route:
    if_none: spawn
"""


async def answered_connection(url: str, request: bytes) -> tuple[trio.SocketStream, bytes]:
    """A connection to ``url`` that sent ``request`` (one whole HTTP/1.1 request) and read its
    whole answer, sized by ``Content-Length`` or chunked; the connection and the status line.

    The connection is kept alive, idle: the caller closes it.
    """
    parsed = httpx.URL(url)
    stream = await trio.open_tcp_stream(parsed.host, parsed.port or 80)
    await stream.send_all(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    length = fields.get(b"content-length")

    def whole() -> bool:
        return len(body) >= int(length) if length is not None else body.endswith(b"0\r\n\r\n")

    while not whole():
        body += await stream.receive_some(65536)
    return stream, head.split(b"\r\n", 1)[0]
