"""The queen's HTTP API as seen by hives: registration and heartbeats.

``POST /v1/heartbeat`` takes a `HiveHeartbeat` every interval (default 1 s); the queen rebuilds its
in-memory worker registry from them. ``POST /v1/workers/{id}/exited`` (`WorkerExited`) reports a
crash at once instead of at the next heartbeat.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = [
    "DecisionRecord",
    "GpuTelemetry",
    "HiveHeartbeat",
    "HiveView",
    "HostTelemetry",
    "JobView",
    "Snapshot",
    "WorkerExited",
    "WorkerState",
    "WorkerStatus",
    "WorkerView",
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


class JobView(Struct, frozen=True, kw_only=True):
    """What a scheduling policy may know about a job."""

    id: str
    model: str
    priority: Literal["interactive", "batch"] = "interactive"
    prompt_tokens: int = 0
    max_tokens: int = 256
    tenant: str = ""
    labels: dict[str, str] = {}


class WorkerView(Struct, frozen=True, kw_only=True):
    """One worker with its hive's labels and VRAM, as a policy sees it."""

    id: str
    hive: str
    model: str
    device: str
    state: WorkerState
    slots_total: int
    slots_free: int
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    gpu_util_pct: float = 0.0
    vram_mb: float = 0.0
    total_vram_mb: float = 0.0
    uptime_s: float = 0.0
    labels: dict[str, str] = {}

    @property
    def vram_free_mb(self) -> float:
        return max(self.total_vram_mb - self.vram_mb, 0.0)


class HiveView(Struct, frozen=True, kw_only=True):
    """One online hive, where workers could be spawned."""

    name: str
    labels: dict[str, str] = {}
    gpus: tuple[GpuTelemetry, ...] = ()
    ram_free_mb: float = 0.0
    models: tuple[str, ...] = ()
    workers: int = 0

    @property
    def vram_free_mb(self) -> float:
        return float(sum(g.vram_total_mb - g.vram_used_mb for g in self.gpus))


class Snapshot(Struct, frozen=True, kw_only=True):
    """The cluster at one instant, as a policy sees it."""

    workers: tuple[WorkerView, ...] = ()
    hives: tuple[HiveView, ...] = ()


class DecisionRecord(Struct, frozen=True, kw_only=True):
    """One logged scheduling decision: enough to explain it and to replay it with another policy.

    ``kind`` is route, spawn, queue or reject; ``target`` the worker (route) or hive (spawn);
    ``error`` the policy error that made the queen use its fallback, if any.
    """

    job_id: str
    at: float
    policy: str
    job: JobView
    snapshot: Snapshot
    kind: Literal["route", "spawn", "queue", "reject"]
    target: str | None = None
    reasons: list[str] = []
    error: str | None = None
