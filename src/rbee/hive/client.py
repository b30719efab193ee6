"""A typed client of one hive's API (`rbee.wire.hive`), for the queen and the keeper.

Errors arrive as rbee errors: `ConnectError` when the hive cannot be reached, `ApiError` /
`NotFoundError` with the hive's message for a refused request, `ModelError` for a pull that ended
with ``[ERROR]``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

import httpx
import msgspec

from rbee import sse, wire
from rbee.client import auth_headers, check, translate_errors
from rbee.errors import ModelError
from rbee.wire.hive import (
    ModelInfo,
    ModelList,
    ModelRemoved,
    PullEvent,
    ShuttingDown,
    SpawnRequest,
    WorkerList,
    WorkerLog,
    WorkerRetired,
)
from rbee.wire.queen import HiveHeartbeat, WorkerStatus

__all__ = ["HiveClient"]

_pull_events = msgspec.json.Decoder(PullEvent)


class HiveClient:
    """Calls the hive at ``url`` through ``client`` (whose timeouts the caller chooses).

    `retire` waits for the worker's grace period (``hive.worker_stop_grace_s``, 10 s by default)
    plus the kill, and a spawn with ``wait=True`` for the model to load: give those calls a
    timeout longer than that.
    """

    def __init__(self, url: str, client: httpx.AsyncClient, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.client = client
        self.headers = auth_headers(token)

    async def _request(self, method: str, path: str, what: str, **kwargs: object) -> bytes:
        with translate_errors("hive", self.url):
            response = await self.client.request(
                method,
                f"{self.url}{path}",
                headers=self.headers,
                **kwargs,  # type: ignore[arg-type]
            )
        return check(response, what).content

    async def status(self) -> HiveHeartbeat:
        return wire.decode(await self._request("GET", "/v1/status", "hive status"), HiveHeartbeat)

    async def workers(self) -> list[WorkerStatus]:
        body = await self._request("GET", "/v1/workers", "list workers")
        return wire.decode(body, WorkerList).workers

    async def spawn(self, request: SpawnRequest) -> WorkerStatus:
        """Start a worker; state ``loading`` at once, or ``ready`` when ``request.wait``."""
        body = await self._request(
            "POST", "/v1/workers", "spawn worker", content=wire.encode(request)
        )
        return wire.decode(body, WorkerStatus)

    async def retire(self, worker_id: str) -> WorkerRetired:
        body = await self._request("DELETE", f"/v1/workers/{worker_id}", "retire worker")
        return wire.decode(body, WorkerRetired)

    async def worker_log(self, worker_id: str) -> WorkerLog:
        """The last lines the worker wrote to its log."""
        body = await self._request("GET", f"/v1/workers/{worker_id}/log", "read worker log")
        return wire.decode(body, WorkerLog)

    async def shutdown(self) -> ShuttingDown:
        """Ask the hive to stop: it retires its workers, then exits."""
        body = await self._request("POST", "/v1/shutdown", "stop hive")
        return wire.decode(body, ShuttingDown)

    async def models(self) -> list[ModelInfo]:
        body = await self._request("GET", "/v1/models", "list models")
        return wire.decode(body, ModelList).models

    async def remove_model(self, name: str) -> ModelRemoved:
        body = await self._request("DELETE", f"/v1/models/{name}", "remove model")
        return wire.decode(body, ModelRemoved)

    async def pull(
        self, name: str, source: str, precisions: Sequence[str] = ()
    ) -> AsyncGenerator[PullEvent, None]:
        """Pull ``name`` from ``source`` with the graphs ``precisions`` (empty: the hive's
        default); yields progress, ends after `rbee.wire.hive.Pulled`."""
        body = wire.encode({"name": name, "source": source, "precisions": list(precisions)})
        with translate_errors("hive", self.url):
            async with self.client.stream(
                "POST", f"{self.url}/v1/models/pull", headers=self.headers, content=body
            ) as response:
                if not response.is_success:
                    await response.aread()
                    check(response, f"pull {name}")
                # Read to the end of the stream even after the marker: leaving an httpx stream
                # early abandons its generators half-way.
                outcome: str | None = None
                async for data in sse.data_lines(response.aiter_lines()):
                    if outcome is None and sse.is_terminal(data):
                        outcome = data
                    elif outcome is None:
                        yield _pull_events.decode(data)
        if outcome == sse.DONE:
            return
        if outcome is not None:
            message = outcome.removeprefix(sse.ERROR_PREFIX).strip()
            raise ModelError(f"pull of {name} on {self.url} failed: {message}")
        raise ModelError(f"pull of {name} on {self.url} ended without a result")
