"""The sandbox: the meter that enforces the `Limits`, and the values a script can hold.

A script only ever holds these values: numbers (``int``, ``float``), ``str``, ``bool``, lists
(``list``/``tuple``, and the tagged `Workers`, `Hives` and `Gpus`), label maps (``dict[str, str]``), the
views of `rbee.wire.queen` (job, worker, hive, GPU, tenant), `Closure`, `Nothing` and the decisions of
`rbee.decisions`. Fields and methods are looked up in fixed tables (`rbee.policy.helpers`),
never with ``getattr`` on a name the script chose, so no other Python object is reachable.

The `Meter` counts operations. Every block, closure call and helper charges it; every
`CHECK_EVERY` units it also reads the clock, so a deadline is noticed within about 0.1 ms of
interpreted work whatever the script does (no signal, no trace hook).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from rbee.decisions import Queue, Reject, Spawn
from rbee.policy.limits import Limits
from rbee.policy.nodes import Pos
from rbee.wire.queen import GpuTelemetry, HiveView, JobView, TenantView, WorkerView

__all__ = [
    "CHECK_EVERY",
    "Closure",
    "Gpus",
    "Hives",
    "Meter",
    "Nothing",
    "ScriptError",
    "Workers",
    "type_name",
]

CHECK_EVERY = 1000


class ScriptError(Exception):
    """An error inside an evaluation, at ``pos``; turned into `PolicyError` at the boundary."""

    def __init__(self, message: str, pos: Pos | None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class Meter:
    """The per-evaluation account: operations, clock, call depth and the decision trace."""

    __slots__ = (
        "budget",
        "cells",
        "deadline",
        "deadline_ms",
        "depth",
        "hives",
        "limits",
        "next_check",
        "ops",
        "returned_at",
        "started",
        "tenants",
        "trace",
    )

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.reset()

    def reset(self) -> None:
        """Start a new evaluation: full budget, deadline from now, empty trace."""
        self.ops = 0
        self.cells = 0
        self.budget = self.limits.max_operations
        self.deadline_ms = self.limits.deadline_ms
        self.next_check = min(CHECK_EVERY, self.budget)
        self.depth = 0
        self.trace: list[str] = []
        self.returned_at: Pos = (1, 1)
        self.started = time.perf_counter()
        self.deadline = self.started + self.deadline_ms / 1000.0
        # The tenants of the snapshot being decided on, by name (the tenant_* helpers read it).
        self.tenants: dict[str, TenantView] = {}
        # The snapshot's hives, for the estimates of model_vram_required().
        self.hives: tuple[HiveView, ...] = ()

    def tick(self, pos: Pos | None) -> None:
        """Called when ``ops`` passes ``next_check``: enforce the budget and the deadline."""
        if self.ops > self.budget:
            raise ScriptError(f"limit exceeded: operation budget of {self.budget} used up", pos)
        if time.perf_counter() > self.deadline:
            raise ScriptError(
                f"limit exceeded: still running at the {self.deadline_ms:g} ms deadline", pos
            )
        self.next_check = min(self.ops + CHECK_EVERY, self.budget)

    def charge(self, cost: int, pos: Pos | None) -> None:
        """Charge ``cost`` operations (helpers call this once per element they touch)."""
        self.ops += cost
        if self.ops > self.next_check:
            self.tick(pos)

    def alloc(self, cells: int, pos: Pos | None) -> None:
        """Count ``cells`` list elements (or 16 string characters) created; bounds memory."""
        self.cells += cells
        if self.cells > self.limits.max_elements:
            raise ScriptError(
                f"limit exceeded: created more than {self.limits.max_elements} list elements "
                "in one decision",
                pos,
            )

    def note(self, line: str) -> None:
        """Add a line to the decision's reasons (bounded by `Limits.max_trace`)."""
        if len(self.trace) < self.limits.max_trace:
            self.trace.append(line)
        elif len(self.trace) == self.limits.max_trace:
            self.trace.append("... (more steps not shown)")

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


class Workers(tuple[WorkerView, ...]):
    """A list of workers: the worker helpers (idle(), least_loaded(), ...) apply to it."""

    __slots__ = ()


class Hives(tuple[HiveView, ...]):
    """A list of hives: the hive helpers (with_model(), most_vram_free(), ...) apply to it."""

    __slots__ = ()


class Gpus(tuple[GpuTelemetry, ...]):
    """A hive's GPUs: the GPU helpers (with_capacity(), most_vram_free(), best_fit()) apply."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Nothing:
    """What first(), min_by() and friends give for an empty list; ``origin`` says where."""

    origin: str


@dataclasses.dataclass(frozen=True, slots=True)
class Closure:
    """A script closure ``|x| ...``; helpers call ``fn`` with ``arity`` arguments."""

    fn: Callable[..., Any]
    arity: int


_TYPE_NAMES: dict[type, str] = {
    int: "a number",
    float: "a number",
    str: "a string",
    bool: "a bool",
    list: "a list",
    tuple: "a list",
    Workers: "a list of workers",
    Hives: "a list of hives",
    Gpus: "a list of GPUs",
    dict: "a label map",
    WorkerView: "a worker",
    HiveView: "a hive",
    GpuTelemetry: "a GPU",
    JobView: "the job",
    TenantView: "a tenant's usage",
    Closure: "a closure",
    Nothing: "nothing",
    Reject: "a reject(...) decision",
    Spawn: "a spawn(...) decision",
    Queue: "a queue() decision",
    type(None): "nothing",
}


def type_name(value: object) -> str:
    """How an error message names the type of ``value`` ("a number", "a list of workers")."""
    return _TYPE_NAMES.get(type(value), "a value")
