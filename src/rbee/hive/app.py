"""The hive's HTTP routes (the API is described in `rbee.wire.hive`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncGenerator, Sequence

import trio
from quart import Response, request
from quart_trio import QuartTrio

from rbee import openapi, server, sse, wire
from rbee.errors import ApiError, ModelError, NotFoundError
from rbee.hive import openapi as routes
from rbee.hive.pull import GgufFile, Source, import_gguf, open_source, pull
from rbee.hive.state import HiveState
from rbee.models.http import store_blueprint
from rbee.models.store import Manifest, validate_name
from rbee.models.vram import VramNeed
from rbee.wire.hive import (
    ModelInfo,
    ModelList,
    ModelRemoved,
    PullRequest,
    ShuttingDown,
    SpawnRequest,
    WorkerList,
    WorkerLog,
)
from rbee.wire.worker import Health

__all__ = ["HiveState", "create_hive_app"]


def _model_info(m: Manifest, need: VramNeed | None) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        architecture=m.architecture,
        context_length=m.context_length,
        precisions=m.precisions,
        size_bytes=m.size_bytes,
        files=m.files,
        chat=m.chat_template_source or ("gguf" if m.chat_template else "none"),
        vram_required_mb=None if need is None else round(need.total_mb, 1),
    )


def create_hive_app(state: HiveState) -> QuartTrio:
    """The hive's routes on rbee's common app, plus its store served read-only for peers."""
    app = server.create_app("rbee-hive", state.token)
    app.register_blueprint(store_blueprint(state.store))
    supervisor = state.supervisor
    openapi.add_route(app, routes.ROUTES, "rbee hive")

    @app.get("/health")
    async def health() -> Response:
        return server.json_response(Health("ready"))

    @app.post("/v1/shutdown")
    async def shutdown() -> Response:
        # As SIGTERM: the workers are retired while the API still answers.
        state.stop_requested.set()
        body = ShuttingDown(hive=state.name, pid=os.getpid(), workers=len(supervisor.statuses()))
        return server.json_response(body, status=202)

    @app.get("/v1/status")
    async def status() -> Response:
        return server.json_response(await state.heartbeat())

    @app.get("/v1/workers")
    async def list_workers() -> Response:
        return server.json_response(WorkerList(supervisor.statuses()))

    @app.post("/v1/workers")
    async def spawn() -> Response:
        req = wire.decode(await request.get_data(), SpawnRequest)
        worker = supervisor.spawn(req)
        if not req.wait:
            return server.json_response(worker.status({}), status=202)
        await supervisor.wait_ready(worker)
        return server.json_response(worker.status({}), status=201)

    @app.get("/v1/workers/<worker_id>")
    async def get_worker(worker_id: str) -> Response:
        return server.json_response(supervisor.get(worker_id).status(state.gpus.per_process()))

    @app.get("/v1/workers/<worker_id>/log")
    async def worker_log(worker_id: str) -> Response:
        worker = supervisor.get(worker_id)
        return server.json_response(
            WorkerLog(id=worker.id, lines=list(worker.tail), path=str(worker.log_path))
        )

    @app.delete("/v1/workers/<worker_id>")
    async def retire(worker_id: str) -> Response:
        return server.json_response(await supervisor.retire(worker_id))

    @app.get("/v1/models")
    async def list_models() -> Response:
        models = await trio.to_thread.run_sync(state.store.list)
        needs = [await trio.to_thread.run_sync(supervisor.vram_need, m.name) for m in models]
        return server.json_response(
            ModelList([_model_info(m, n) for m, n in zip(models, needs, strict=True)])
        )

    @app.delete("/v1/models/<name>")
    async def remove_model(name: str) -> Response:
        validate_name(name)
        users = supervisor.models_in_use(name)
        if users:
            raise ApiError(
                f"model {name} is in use by worker(s) {', '.join(users)}; retire them first", 409
            )
        if name in state.pulling:
            raise ApiError(f"model {name} is being pulled; wait for the pull to end", 409)
        partial = state.store.root / f".partial-{name}"
        had_partial = partial.is_dir()
        if had_partial:
            await trio.to_thread.run_sync(shutil.rmtree, partial)
        try:
            await trio.to_thread.run_sync(state.store.remove, name)
        except ModelError as err:
            if not had_partial:
                raise NotFoundError(str(err)) from None
        return server.json_response(ModelRemoved(name))

    @app.post("/v1/models/pull")
    async def pull_model() -> Response:
        req = wire.decode(await request.get_data(), PullRequest)
        name = validate_name(req.name)
        if name in state.pulling:
            raise ApiError(f"model {name} is already being pulled", 409)
        source = open_source(req.source, name, state.transfer, state.token, state.queen_url)
        if isinstance(source, GgufFile):
            imported = import_gguf(
                state.store, name, source, state.tasks, req.precisions, claims=state.pulling
            )
            # Its first step comes once the file is read and its tokenizer built: a file that
            # cannot be imported is a plain 4xx.
            return Response(sse.encoded(await sse.started(imported)), headers=sse.SSE_HEADERS)
        # Fetched before the stream starts so that a wrong name, source or precision is a
        # plain 4xx.
        (await source.manifest()).with_precisions(req.precisions)
        return Response(_pull_events(state, name, source, req.precisions), headers=sse.SSE_HEADERS)

    return app


async def _pull_events(
    state: HiveState, name: str, source: Source, precisions: Sequence[str]
) -> AsyncGenerator[bytes, None]:
    if name in state.pulling:
        yield sse.event(sse.error_marker(f"model {name} is already being pulled"))
        return
    state.pulling.add(name)
    try:
        async for chunk in sse.encoded(pull(state.store, name, source, precisions)):
            yield chunk
    finally:
        state.pulling.discard(name)
