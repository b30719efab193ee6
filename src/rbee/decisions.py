"""Where a job goes: the four decisions and the interface every scheduling policy implements.

A policy is anything with ``schedule(job, snapshot) -> Decision`` (`Scheduler`). It sees an
immutable `rbee.wire.queen.Snapshot` of the cluster (workers and hives, as the registry last heard
of them) and answers one of four decisions, each carrying the reasons that led to it (which filter
kept or removed whom), so that ``rbee policy explain`` and error messages can show them:

- `Route`: send the job to this worker now;
- `Spawn`: no worker can take it, start one for the model on this hive;
- `Queue`: workers for the model exist but none has a free slot, wait;
- `Reject`: it can never run here (no hive can host the model, ...).

The built-in policies (`rbee.queen.scheduler`) and the policy language (`rbee.policy`) both
implement `Scheduler` and both take a spawn's device from `default_device` when they do not name
one, with the model's VRAM need from `model_vram_mb` (the hives' estimates, `rbee.models.vram`):
a GPU without room for the model is never chosen. This module is a leaf: it imports nothing of
rbee but the wire types, so either side can import it without pulling in the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from rbee.wire.queen import DecisionKind, GpuTelemetry, HiveView, JobView, Snapshot

__all__ = [
    "Decision",
    "Queue",
    "Reject",
    "Route",
    "Scheduler",
    "Spawn",
    "best_fit",
    "default_device",
    "gpu_free_mb",
    "kind_target",
    "model_vram_mb",
    "most_free_gpu",
]


@dataclasses.dataclass(frozen=True)
class Route:
    worker_id: str
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Spawn:
    hive: str
    model: str
    device: str = "cpu"
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Queue:
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Reject:
    reason: str
    reasons: tuple[str, ...] = ()


Decision = Route | Spawn | Queue | Reject


class Scheduler(Protocol):
    """Anything that can place a job."""

    @property
    def name(self) -> str: ...

    def schedule(self, job: JobView, snapshot: Snapshot) -> Decision: ...


def kind_target(decision: Decision) -> tuple[DecisionKind, str | None]:
    """The decision's kind and what it names: the worker of a route, the hive of a spawn."""
    if isinstance(decision, Route):
        return "route", decision.worker_id
    if isinstance(decision, Spawn):
        return "spawn", decision.hive
    if isinstance(decision, Queue):
        return "queue", None
    return "reject", None


def gpu_free_mb(gpu: GpuTelemetry) -> float:
    return float(gpu.vram_total_mb - gpu.vram_used_mb)


def model_vram_mb(hives: Sequence[HiveView], model: str, on: HiveView | None = None) -> float:
    """The estimated VRAM in MB of a GPU worker for ``model``.

    Hive ``on``'s own estimate when it has one; else the largest any of ``hives`` reports (a hive
    that would pull the model has none yet); 0 when no hive reports one (the need is unknown).
    """
    if on is not None and model in on.model_vram_mb:
        return on.model_vram_mb[model]
    return max((h.model_vram_mb[model] for h in hives if model in h.model_vram_mb), default=0.0)


def most_free_gpu(hive: HiveView, need_mb: float = 0.0) -> GpuTelemetry | None:
    """The GPU of ``hive`` with the most free VRAM, among those with ``need_mb`` free (spread).

    The first GPU listed wins a tie; None when no GPU has room.
    """
    fits = [g for g in hive.gpus if gpu_free_mb(g) >= need_mb]
    return max(fits, key=gpu_free_mb) if fits else None


def best_fit(hive: HiveView, need_mb: float) -> GpuTelemetry | None:
    """The GPU of ``hive`` with the least free VRAM that still holds ``need_mb`` (pack).

    Packing fills one GPU before the next, keeping whole GPUs free for big models; None when no
    GPU has room.
    """
    fits = [g for g in hive.gpus if gpu_free_mb(g) >= need_mb]
    return min(fits, key=gpu_free_mb) if fits else None


def default_device(hive: HiveView, need_mb: float = 0.0) -> str:
    """The device for a spawn on ``hive`` that names none: a GPU with room, else ``cpu``.

    The GPU is the one with the most free VRAM among those with ``need_mb`` free (`most_free_gpu`);
    ``cpu`` on a hive without GPUs or without room on any.
    """
    gpu = most_free_gpu(hive, need_mb)
    return "cpu" if gpu is None else f"cuda:{gpu.index}"
