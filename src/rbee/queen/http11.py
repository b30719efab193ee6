"""The queen's HTTP/1.1 client for workers: keep-alive connections, h11 over trio sockets.

Every job costs the queen a streamed ``POST`` on a worker, on its hot path; httpx
(through anyio and httpcore) spends about a millisecond a request here, and its chain of async
generators cannot be closed early when a relay is cancelled. This client keeps idle connections
per worker, parses with h11, reads a body without generators, and closes a connection whose
response was not read to its end instead of pooling it.

Errors are `OSError`, `trio.BrokenResourceError` or `h11.ProtocolError`; callers convert them.
"""

from __future__ import annotations

import collections
import urllib.parse
from collections.abc import Awaitable, Callable
from types import TracebackType

import h11
import trio

__all__ = ["Pool", "Response", "TransportError"]

TransportError = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)

_IDLE_PER_HOST = 64
_READ_SIZE = 65536


class _Conn:
    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.sock.receive_some(_READ_SIZE))


class Response:
    """A response whose body is read with `read` (pieces) or `body` (all of it).

    ``headers`` maps lower-case names to values, as bytes.

    Use it as an async context manager: leaving it returns the connection to the pool when the
    body was read to its end, and closes it otherwise.
    """

    def __init__(self, pool: Pool, key: tuple[str, int], conn: _Conn, head: h11.Response) -> None:
        self._pool = pool
        self._key = key
        self._conn: _Conn | None = conn
        self.status = head.status_code
        # h11 gives header names in lower case.
        self.headers = dict(head.headers)
        self._ended = False

    async def read(self) -> bytes | None:
        """The next piece of the body; None at its end."""
        if self._ended or self._conn is None:
            return None
        while True:
            event = await self._conn.next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._ended = True
                return None

    async def body(self) -> bytes:
        parts = []
        while (piece := await self.read()) is not None:
            parts.append(piece)
        return b"".join(parts)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._ended and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._pool._put(self._key, conn)
        else:
            await trio.aclose_forcefully(conn.sock)


class Pool:
    """Idle keep-alive connections per ``host:port``; requests for base URLs ``http://host:port``.

    Each request carries ``token_for((host, port))`` (else ``token``) as its bearer token.
    """

    def __init__(
        self,
        token: str = "",
        before_connect: Callable[[str, int], Awaitable[None]] | None = None,
        token_for: Callable[[tuple[str, int]], str] | None = None,
    ) -> None:
        self._idle: dict[tuple[str, int], collections.deque[_Conn]] = {}
        # Awaited before each new connection (a hive behind an SSH tunnel forwards the port).
        self._before_connect = before_connect
        # A worker takes its hive's token (the hive passes it on): ``token_for(host, port)``.
        self._token_for = token_for or (lambda key: token)

    def _put(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, collections.deque())
        if len(idle) < _IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.sock.socket.close()

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        body: bytes = b"",
        accept: str = "*/*",
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """Send a request; return once the response's status line and headers arrived.

        ``on_sent`` is called once the request is written. A pooled connection that the server
        closed meanwhile is replaced by a new one, once.
        """
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise OSError(f"unsupported URL {base_url!r} (plain http://host:port only)")
        key = (parts.hostname, parts.port or 80)
        headers = [("Host", parts.netloc), ("Accept", accept)]
        token = self._token_for(key)
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        if body or method in ("POST", "PUT"):
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        idle = self._idle.get(key)
        while True:
            reused = bool(idle)
            if idle:
                conn = idle.popleft()
            else:
                if self._before_connect is not None:
                    await self._before_connect(*key)
                conn = _Conn(await trio.open_tcp_stream(*key))
            try:
                data = conn.h11.send(h11.Request(method=method, target=path, headers=headers))
                if body:
                    data = (data or b"") + (conn.h11.send(h11.Data(data=body)) or b"")
                data = (data or b"") + (conn.h11.send(h11.EndOfMessage()) or b"")
                await conn.sock.send_all(data)
                if on_sent is not None:
                    on_sent()
                event = await conn.next_event()
                if not isinstance(event, h11.Response):
                    raise h11.RemoteProtocolError("the connection closed before a response")
            except TransportError:
                await trio.aclose_forcefully(conn.sock)
                if reused:
                    continue
                raise
            except BaseException:
                await trio.aclose_forcefully(conn.sock)
                raise
            return Response(self, key, conn, event)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                await trio.aclose_forcefully(idle.popleft().sock)
