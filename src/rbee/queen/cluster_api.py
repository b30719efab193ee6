"""The queen's cluster routes: hives, their workers and their models (`rbee.wire.queen`).

The keeper never talks to hives; these routes forward to the right one with `HiveClient`. An
unknown hive or worker is a 404 naming it, a hive's refusal passes through with the hive's message
and status, and a hive that cannot be reached is a 502 (`rbee.errors.ConnectError`).
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from rbee import sse, wire
from rbee.queen.provision import Hives
from rbee.server import json_response
from rbee.wire.hive import ModelList, SpawnRequest
from rbee.wire.queen import HiveList, ModelPullRequest, WorkerEntryList, WorkerSpawn

__all__ = ["add_routes"]


def add_routes(app: QuartTrio, hives: Hives) -> None:
    """Add the cluster routes to the queen's ``app``."""
    registry = hives.registry

    @app.get("/v1/hives")
    async def list_hives() -> Response:
        return json_response(HiveList(registry.hive_entries()))

    @app.get("/v1/workers")
    async def list_workers() -> Response:
        return json_response(WorkerEntryList(registry.worker_entries()))

    @app.post("/v1/workers")
    async def spawn_worker() -> Response:
        req = wire.decode(await request.get_data(), WorkerSpawn)
        client = hives.client(req.hive, long=req.wait)
        spawn = SpawnRequest(
            model=req.model,
            device=req.device,
            precision=req.precision,
            wait=req.wait,
            pinned=req.pinned,
        )
        status = await client.spawn(spawn)
        registry.add_worker(req.hive, status)
        return json_response(status, status=201 if req.wait else 202)

    @app.delete("/v1/workers/<worker_id>")
    async def retire_worker(worker_id: str) -> Response:
        return json_response(await hives.retire(worker_id))

    @app.get("/v1/hives/<name>/models")
    async def hive_models(name: str) -> Response:
        wire.check_name(name, "name")
        return json_response(ModelList(await hives.client(name).models()))

    @app.delete("/v1/hives/<name>/models/<model>")
    async def remove_model(name: str, model: str) -> Response:
        wire.check_name(name, "name")
        wire.check_name(model, "model")
        return json_response(await hives.client(name).remove_model(model))

    @app.post("/v1/hives/<name>/models/pull")
    async def pull_model(name: str) -> Response:
        wire.check_name(name, "name")
        req = wire.decode(await request.get_data(), ModelPullRequest)
        hives.check_pull(name, req.model, req.precisions)
        pulled = hives.pull(name, req.model, req.precisions)
        return Response(sse.encoded(pulled), headers=sse.SSE_HEADERS)
