"""The queen's routes for hives it starts over SSH (`rbee.wire.hosts`).

A ``{name}`` that is not a safe name (`rbee.wire.NAME_PATTERN`) is a 400 before any work; an
unknown hive is a 404 naming the registered ones (for a stream too, before it starts); a host
that refuses (unknown host key, failed preflight, no heartbeat) is a 409 or 502 with the one line
that says what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import trio
from quart import Response, request
from quart_trio import QuartTrio

from rbee import sse, wire
from rbee.errors import RbeeError, SshError, UsageError
from rbee.queen.lifecycle.manager import HostHives
from rbee.server import error_response, json_response
from rbee.wire.hosts import HiveAdd, HiveLogs, HiveStarted, HiveTrust, PushProgress

__all__ = ["add_routes"]

MAX_LOG_LINES = 10_000


def add_routes(app: QuartTrio, hosts: HostHives) -> None:
    """Add the hive lifecycle routes to the queen's ``app``."""

    @app.errorhandler(SshError)
    async def _ssh_failed(err: SshError) -> Response:
        return error_response(str(err), 502, "server_error", "ssh_failed")

    @app.post("/v1/hives")
    async def add_hive() -> Response:
        return json_response(hosts.add(wire.decode(await request.get_data(), HiveAdd)), 201)

    @app.get("/v1/hives/<name>")
    async def show_hive(name: str) -> Response:
        wire.check_name(name, "name")
        return json_response(hosts.view(hosts.get(name)))

    @app.post("/v1/hives/<name>/trust")
    async def trust_hive(name: str) -> Response:
        wire.check_name(name, "name")
        req = wire.decode(await request.get_data() or b"{}", HiveTrust)
        return json_response(await hosts.trust(name, req.fingerprint))

    async def deploy(name: str, *, upgrade: bool) -> Response:
        hosts.get(wire.check_name(name, "name"))
        if sse.wants_stream(request.headers.get("Accept")):
            events = hosts.deploy_events(name, upgrade=upgrade)
            return Response(_relay(events), headers=sse.SSE_HEADERS)
        return json_response(await (hosts.upgrade if upgrade else hosts.start)(name))

    @app.post("/v1/hives/<name>/start")
    async def start_hive(name: str) -> Response:
        return await deploy(name, upgrade=False)

    @app.post("/v1/hives/<name>/upgrade")
    async def upgrade_hive(name: str) -> Response:
        return await deploy(name, upgrade=True)

    @app.post("/v1/hives/<name>/stop")
    async def stop_hive(name: str) -> Response:
        wire.check_name(name, "name")
        return json_response(await hosts.stop(name))

    @app.delete("/v1/hives/<name>")
    async def remove_hive(name: str) -> Response:
        wire.check_name(name, "name")
        return json_response(await hosts.remove(name))

    @app.get("/v1/hives/<name>/logs")
    async def hive_logs(name: str) -> Response:
        wire.check_name(name, "name")
        raw = request.args.get("lines", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOG_LINES:
            raise UsageError(f"invalid query parameter 'lines': {raw!r} (1..{MAX_LOG_LINES})")
        if request.args.get("follow") in ("1", "true"):
            # Before the stream starts: an unknown hive is a 404, not an error event in a 200.
            hosts.get(name)
            follow = hosts.follow_logs(name, int(raw))
            return Response(_follow(name, follow), headers=sse.SSE_HEADERS)
        return json_response(HiveLogs(name=name, lines=await hosts.logs(name, int(raw))))


async def _relay(
    events: trio.MemoryReceiveChannel[PushProgress | HiveStarted | RbeeError],
) -> AsyncGenerator[bytes, None]:
    async with events:
        async for item in events:
            if isinstance(item, RbeeError):
                yield sse.event(sse.error_marker(str(item)))
                return
            yield sse.event(wire.encode(item))
    yield sse.event(sse.DONE)


async def _follow(name: str, lines: AsyncIterator[list[str]]) -> AsyncGenerator[bytes, None]:
    try:
        async with contextlib.aclosing(lines):  # type: ignore[type-var]
            async for batch in lines:
                yield sse.event(wire.encode(HiveLogs(name=name, lines=batch)))
        yield sse.event(sse.DONE)
    except RbeeError as err:
        yield sse.event(sse.error_marker(str(err)))
