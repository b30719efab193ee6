"""Test doubles for the hive tests: a fabricated model directory and a stand-in queen.

The stand-in queen is a real rbee HTTP server that records every heartbeat and crash report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from rbee import server, wire
from rbee.models.http import store_blueprint
from rbee.models.store import Manifest, ModelStore, describe_files, write_manifest
from rbee.wire.queen import HiveHeartbeat, WorkerExited

STANDIN_WORKER = Path(__file__).with_name("standin_worker.py")
STANDIN_COMMAND = [sys.executable, str(STANDIN_WORKER)]


def make_model(
    directory: Path, name: str, sizes: dict[str, int], precisions: Sequence[str] = ("int4",)
) -> Manifest:
    """A model directory with random files of ``sizes`` bytes and a correct manifest."""
    directory.mkdir(parents=True)
    for filename, size in sizes.items():
        (directory / filename).write_bytes(os.urandom(size))
    manifest = Manifest(
        name=name,
        architecture="llama",
        context_length=2048,
        vocab_size=100,
        precisions=list(precisions),
        files=describe_files(directory),
    )
    write_manifest(directory, manifest)
    return manifest


@dataclass
class StandInQueen:
    """Records ``POST /v1/heartbeat`` and ``POST /v1/workers/{id}/exited``."""

    heartbeats: list[HiveHeartbeat] = field(default_factory=list)
    exits: list[tuple[float, WorkerExited]] = field(default_factory=list)
    url: str = ""
    stop: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)

    def app(self) -> QuartTrio:
        app = server.create_app("standin-queen")

        @app.post("/v1/heartbeat")
        async def heartbeat() -> Response:
            self.heartbeats.append(wire.decode(await request.get_data(), HiveHeartbeat))
            self._notify()
            return server.json_response({"ok": True})

        @app.post("/v1/workers/<worker_id>/exited")
        async def exited(worker_id: str) -> Response:
            event = wire.decode(await request.get_data(), WorkerExited)
            assert event.worker_id == worker_id
            self.exits.append((trio.current_time(), event))
            self._notify()
            return server.json_response({"ok": True})

        return app

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, port: int = 0, *, task_status: trio.TaskStatus[str]) -> None:
        await server.serve(
            self.app(),
            "127.0.0.1",
            port,
            shutdown=self.stop.wait,
            task_status=task_status,
            graceful_timeout=0.5,
        )

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self.changed.wait()


class RangeRecorder:
    """ASGI middleware for a store server: records each file request's Range header and, when
    ``drop_after`` is set, cuts the next file download after that many bytes (once)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ranges: list[str] = []
        self.drop_after: int | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "/files/" not in scope["path"]:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        self.ranges.append(headers.get(b"range", b"").decode())
        limit, self.drop_after = self.drop_after, None
        if limit is None:
            await self.app(scope, receive, send)
            return
        sent = 0

        async def cut(message: dict[str, Any]) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if sent + len(body) > limit:
                    await send({**message, "body": body[: limit - sent], "more_body": True})
                    raise ConnectionAbortedError("the test drops the connection mid-file")
                sent += len(body)
            await send(message)

        await self.app(scope, receive, cut)


@dataclass
class PeerStore:
    """A model store served by the models Blueprint, as the queen (or another hive) serves it."""

    store: ModelStore
    recorder: RangeRecorder | None = None
    url: str = ""
    stop: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[str]) -> None:
        app = server.create_app("peer-store")
        app.register_blueprint(store_blueprint(self.store))
        self.recorder = RangeRecorder(app.asgi_app)
        app.asgi_app = self.recorder  # type: ignore[method-assign]
        await server.serve(
            app,
            "127.0.0.1",
            0,
            shutdown=self.stop.wait,
            task_status=task_status,
            graceful_timeout=0.5,
        )
