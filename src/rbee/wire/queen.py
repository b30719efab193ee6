"""The queen's HTTP API as seen by hives: registration and heartbeats.

``POST /v1/heartbeat`` takes a `HiveHeartbeat` every interval (default 1 s); the queen rebuilds its
in-memory worker registry from them. ``POST /v1/workers/{id}/exited`` (`WorkerExited`) reports a
crash at once instead of at the next heartbeat.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = [
    "GpuTelemetry",
    "HiveHeartbeat",
    "HostTelemetry",
    "WorkerExited",
    "WorkerState",
    "WorkerStatus",
]

WorkerState = Literal["loading", "ready", "busy", "stopping"]

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class GpuTelemetry(Struct, frozen=True, kw_only=True):
    """One GPU as NVML reports it."""

    index: int
    name: str
    util_pct: float
    vram_total_mb: int
    vram_used_mb: int
    power_w: float | None = None
    temperature_c: float | None = None


class HostTelemetry(Struct, frozen=True, kw_only=True):
    """The machine a hive runs on; ``gpus`` is empty where there is no NVIDIA driver."""

    cpu_count: int
    load_1m: float
    ram_total_mb: int
    ram_free_mb: int
    gpus: list[GpuTelemetry] = []


class WorkerStatus(Struct, frozen=True, kw_only=True):
    """One worker as its hive sees it (the seeds' WorkerInfo and ProcessStats)."""

    id: str
    pid: int
    model: str
    device: str
    url: str
    state: WorkerState
    slots_total: int
    slots_free: int
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    gpu_util_pct: float = 0.0
    vram_mb: float = 0.0
    uptime_s: float = 0.0


class HiveHeartbeat(Struct, frozen=True, kw_only=True):
    """Everything the queen knows about a host, resent every interval."""

    hive: Name
    url: str
    host: HostTelemetry
    workers: list[WorkerStatus] = []
    models: list[str] = []
    labels: dict[str, str] = {}
    interval_s: float = 1.0


class WorkerExited(Struct, frozen=True, kw_only=True):
    """A worker process ended without being asked to."""

    hive: Name
    worker_id: str
    model: str
    exit_code: int | None
    log_tail: list[str] = []
