"""The built-in scheduling policies, and the scheduler the queen runs from its config.

Each built-in policy filters to the model's ready workers with a free slot and picks one (first
available, least loaded, round robin, most VRAM free); with no worker for the model it spawns on
the hive with the most free memory. The decisions and the `Scheduler` interface they implement
live in `rbee.decisions`, shared with the policy language of `rbee.policy`. The registry answers
queries; the policy decides.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from rbee.decisions import Decision, Queue, Reject, Route, Scheduler, Spawn, default_device
from rbee.wire.queen import JobView, PolicyStatus, Snapshot, WorkerView

__all__ = [
    "BUILTIN_POLICIES",
    "Watched",
    "builtin",
    "make_fallback",
    "make_scheduler",
]


Pick = Callable[[Sequence[WorkerView]], WorkerView]


def _filter(
    reasons: list[str], workers: Sequence[WorkerView], keep: Callable[[WorkerView], bool], by: str
) -> list[WorkerView]:
    kept = [w for w in workers if keep(w)]
    reasons.append(f"matched {len(kept)}/{len(workers)} workers by {by}")
    return kept


def _spawn_target(job: JobView, snapshot: Snapshot, reasons: list[str]) -> Decision:
    """No worker serves the model: spawn on a hive that has it, else the one with most free RAM."""
    if not snapshot.hives:
        return Reject(f"no worker serves model {job.model!r} and no hive is online", tuple(reasons))
    having = [h for h in snapshot.hives if job.model in h.models]
    reasons.append(f"{len(having)}/{len(snapshot.hives)} hives have model {job.model!r}")
    pool = having or list(snapshot.hives)
    hive = max(pool, key=lambda h: (h.vram_free_mb, h.ram_free_mb))
    device = default_device(hive)
    reasons.append(f"spawn on hive {hive.name} (most free memory)")
    return Spawn(hive.name, job.model, device, tuple(reasons))


@dataclasses.dataclass
class BuiltinPolicy:
    """Filter to the model's ready workers with a free slot, then ``pick`` one."""

    name: str
    pick: Pick

    def schedule(self, job: JobView, snapshot: Snapshot) -> Decision:
        reasons: list[str] = []
        serving = _filter(reasons, snapshot.workers, lambda w: w.model == job.model, "model")
        if not serving:
            return _spawn_target(job, snapshot, reasons)
        alive = _filter(reasons, serving, lambda w: w.state in ("ready", "busy"), "state")
        free = _filter(reasons, alive, lambda w: w.slots_free > 0, "free slots")
        if not free:
            return Queue((*reasons, "every worker for the model is busy or loading"))
        chosen = self.pick(free)
        return Route(chosen.id, (*reasons, f"{self.name} chose {chosen.id}"))


def _round_robin() -> Pick:
    counter = itertools.count()

    def pick(workers: Sequence[WorkerView]) -> WorkerView:
        ordered = sorted(workers, key=lambda w: w.id)
        return ordered[next(counter) % len(ordered)]

    return pick


def _least_loaded(workers: Sequence[WorkerView]) -> WorkerView:
    return min(workers, key=lambda w: (w.slots_total - w.slots_free) / max(w.slots_total, 1))


BUILTIN_POLICIES: dict[str, Callable[[], Pick]] = {
    "first-available": lambda: lambda ws: ws[0],
    "least-loaded": lambda: _least_loaded,
    "round-robin": _round_robin,
    "most-vram-free": lambda: lambda ws: max(ws, key=lambda w: w.vram_free_mb),
}


def builtin(name: str) -> BuiltinPolicy:
    """A fresh instance of the built-in policy ``name`` (round-robin keeps its own counter)."""
    if name not in BUILTIN_POLICIES:
        from rbee.errors import UsageError

        raise UsageError(
            f"unknown policy {name!r}: choose one of {', '.join(BUILTIN_POLICIES)} or a policy file"
        )
    return BuiltinPolicy(name, BUILTIN_POLICIES[name]())


def make_scheduler(policy: str, *, locked: bool = False) -> Scheduler:
    """The scheduler the queen runs, from ``queen.policy`` / ``--policy``.

    A built-in policy name, or the path of a policy file (``rbee.policy``), which must compile:
    the queen does not start on a broken policy. ``locked`` (platform mode) turns hot reload off.
    """
    if policy in BUILTIN_POLICIES:
        return builtin(policy)
    path = Path(policy).expanduser()
    if not path.is_file():
        from rbee.errors import UsageError

        raise UsageError(
            f"unknown policy {policy!r}: not a built-in ({', '.join(BUILTIN_POLICIES)}) "
            "and no such policy file"
        )
    from rbee.policy import PolicyHost

    return PolicyHost(path, locked=locked)


@runtime_checkable
class Watched(Protocol):
    """A scheduler that follows a file.

    The queen runs its ``watch`` loop in its nursery and shows its ``status`` in ``/v1/status``.
    """

    async def watch(self, interval_s: float = 1.0) -> None: ...

    def status(self) -> PolicyStatus: ...


def make_fallback(policy_fallback: str) -> Scheduler | None:
    """The built-in policy used when the main one raises `PolicyError`; None for ``"reject"``."""
    return None if policy_fallback == "reject" else builtin(policy_fallback)
