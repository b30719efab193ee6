"""What the hive's routes and its heartbeat share, importable before the web stack."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import trio

from rbee.hive.supervisor import Supervisor
from rbee.hive.telemetry import Gpus, host_telemetry
from rbee.models.store import Manifest, ModelStore
from rbee.wire.queen import HiveHeartbeat

__all__ = ["HiveState"]

_POLL_TIMEOUT_S = 0.5


@dataclass
class HiveState:
    """Everything the routes and the heartbeat share."""

    name: str
    url: str
    store: ModelStore
    supervisor: Supervisor
    gpus: Gpus
    control: httpx.AsyncClient
    transfer: httpx.AsyncClient
    tasks: trio.Nursery
    token: str = ""
    queen_url: str = ""
    interval_s: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)
    pulling: set[str] = field(default_factory=set)
    # Set by ``POST /v1/shutdown``: the daemon stops as on SIGTERM.
    stop_requested: trio.Event = field(default_factory=trio.Event)
    _models: tuple[int, list[Manifest]] | None = None

    def models(self) -> list[Manifest]:
        """The complete models, re-read only when the store's directory changed."""
        try:
            stamp = self.store.root.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if self._models is None or self._models[0] != stamp:
            self._models = (stamp, self.store.list())
        return self._models[1]

    async def heartbeat(self) -> HiveHeartbeat:
        """What the queen should know now: host, workers (with fresh slot counts), models."""
        with trio.move_on_after(_POLL_TIMEOUT_S):
            await self.supervisor.refresh_slots(self.control)
        models = self.models()
        # The first estimate of a model reads its graph: off the event loop.
        needs = await trio.to_thread.run_sync(
            lambda: {m.name: self.supervisor.vram_need(m.name) for m in models}
        )
        return HiveHeartbeat(
            hive=self.name,
            url=self.url,
            host=host_telemetry(self.gpus),
            workers=self.supervisor.statuses(),
            models=[m.name for m in models],
            contexts={m.name: m.context_length for m in models},
            model_vram_mb={name: round(n.total_mb, 1) for name, n in needs.items() if n},
            labels=self.labels,
            interval_s=self.interval_s,
        )
