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
one. This module is a leaf: it imports nothing of rbee but the wire types, so either side can
import it without pulling in the other.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from rbee.wire.queen import DecisionKind, HiveView, JobView, Snapshot

__all__ = [
    "Decision",
    "Queue",
    "Reject",
    "Route",
    "Scheduler",
    "Spawn",
    "default_device",
    "kind_target",
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


def default_device(hive: HiveView) -> str:
    """The device for a spawn on ``hive`` that names none: the GPU with the most free VRAM.

    The first GPU the hive lists wins a tie; a hive without GPUs spawns on ``cpu``.
    """
    if not hive.gpus:
        return "cpu"
    best = max(hive.gpus, key=lambda g: g.vram_total_mb - g.vram_used_mb)
    return f"cuda:{best.index}"
