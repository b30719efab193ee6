"""The queen's routes for hives it starts over SSH (`rbee.wire.hosts`).

An unknown hive is a 404 naming the registered ones; a host that refuses (unknown host key,
failed preflight, no heartbeat) is a 409 or 502 with the one line that says what to do.
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from rbee import wire
from rbee.errors import SshError, UsageError
from rbee.queen.lifecycle.manager import HostHives
from rbee.server import error_response, json_response
from rbee.wire.hosts import HiveAdd, HiveLogs, HiveTrust

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
        return json_response(hosts.view(hosts.get(name)))

    @app.post("/v1/hives/<name>/trust")
    async def trust_hive(name: str) -> Response:
        req = wire.decode(await request.get_data() or b"{}", HiveTrust)
        return json_response(await hosts.trust(name, req.fingerprint))

    @app.post("/v1/hives/<name>/start")
    async def start_hive(name: str) -> Response:
        return json_response(await hosts.start(name))

    @app.post("/v1/hives/<name>/upgrade")
    async def upgrade_hive(name: str) -> Response:
        return json_response(await hosts.upgrade(name))

    @app.post("/v1/hives/<name>/stop")
    async def stop_hive(name: str) -> Response:
        return json_response(await hosts.stop(name))

    @app.delete("/v1/hives/<name>")
    async def remove_hive(name: str) -> Response:
        return json_response(await hosts.remove(name))

    @app.get("/v1/hives/<name>/logs")
    async def hive_logs(name: str) -> Response:
        raw = request.args.get("lines", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LOG_LINES:
            raise UsageError(f"invalid query parameter 'lines': {raw!r} (1..{MAX_LOG_LINES})")
        return json_response(HiveLogs(name=name, lines=await hosts.logs(name, int(raw))))
