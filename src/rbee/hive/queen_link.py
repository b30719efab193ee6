"""The hive's side of talking to the queen: a heartbeat every interval, crash reports at once.

A queen that is down or refuses the hive never stops it: the first failure is logged once, the
hive retries with exponential backoff (up to `MAX_BACKOFF_S`), and it logs again when the queen
answers. The first heartbeat a queen receives registers the hive.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx
import trio

from rbee import wire
from rbee.client import auth_headers
from rbee.log import kv
from rbee.wire.queen import HiveHeartbeat, WorkerExited

__all__ = ["MAX_BACKOFF_S", "QueenLink"]

log = logging.getLogger(__name__)

# Short: a heartbeat is one small POST, and a queen that restarts holds its jobs for its hives.
MAX_BACKOFF_S = 2.0
_REPORT_ATTEMPTS = 5


class QueenLink:
    """Posts heartbeats and crash reports to ``queen_url``."""

    def __init__(self, queen_url: str, token: str, client: httpx.AsyncClient) -> None:
        self.queen_url = queen_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **auth_headers(token)}
        self.client = client
        self.failing_since: float | None = None
        self.sent = 0
        # Set once the first heartbeat has been delivered or has failed.
        self.first_tried = trio.Event()

    async def _post(self, path: str, body: bytes) -> None:
        response = await self.client.post(
            f"{self.queen_url}{path}", content=body, headers=self.headers
        )
        if not response.is_success:
            raise httpx.HTTPStatusError(
                f"HTTP {response.status_code}: {response.text[:200]}",
                request=response.request,
                response=response,
            )

    async def heartbeats(
        self, build: Callable[[], Awaitable[HiveHeartbeat]], interval_s: float
    ) -> None:
        """Send ``build()`` every ``interval_s`` forever; back off while the queen fails."""
        backoff = interval_s
        next_at = trio.current_time()
        while True:
            await trio.sleep_until(next_at)
            try:
                try:
                    await self._post("/v1/heartbeat", wire.encode(await build()))
                finally:
                    self.first_tried.set()
            except httpx.HTTPError as err:
                if self.failing_since is None:
                    self.failing_since = trio.current_time()
                    log.warning(
                        "heartbeat to the queen failed; retrying with backoff",
                        extra=kv(queen=self.queen_url, error=str(err) or type(err).__name__),
                    )
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                next_at = trio.current_time() + backoff
                continue
            self.sent += 1
            if self.failing_since is not None:
                log.warning(
                    "heartbeats to the queen resumed",
                    extra=kv(
                        queen=self.queen_url,
                        after_s=round(trio.current_time() - self.failing_since, 1),
                    ),
                )
                self.failing_since = None
            backoff = interval_s
            next_at = max(next_at + interval_s, trio.current_time())

    async def crash_reports(self, exits: trio.MemoryReceiveChannel[WorkerExited]) -> None:
        """Post each `WorkerExited` as soon as it arrives (``POST /v1/workers/{id}/exited``)."""
        async for event in exits:
            body = wire.encode(event)
            delay = 0.2
            for attempt in range(1, _REPORT_ATTEMPTS + 1):
                try:
                    await self._post(f"/v1/workers/{event.worker_id}/exited", body)
                    break
                except httpx.HTTPError as err:
                    if attempt == _REPORT_ATTEMPTS:
                        # The next heartbeat no longer lists the worker, which tells the queen too.
                        log.warning(
                            "crash report not delivered",
                            extra=kv(worker=event.worker_id, error=str(err) or type(err).__name__),
                        )
                    else:
                        await trio.sleep(delay)
                        delay *= 2
