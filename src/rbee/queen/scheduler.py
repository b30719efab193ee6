"""The built-in scheduling policies, and the scheduler the queen runs from its config.

Each built-in policy filters to the model's ready workers with a free slot and picks one (first
available, least loaded, round robin, most VRAM free); with no worker for the model it spawns
one on the GPU with the most free VRAM that has room for the model's estimated need, or on a
CPU, and never on a GPU without room. The decisions and the `Scheduler` interface they implement
live in `rbee.decisions`, shared with the policy language of `rbee.policy`. The registry answers
queries; the policy decides.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from rbee.decisions import (
    Decision,
    Queue,
    Reject,
    Route,
    Scheduler,
    Spawn,
    gpu_free_mb,
    model_vram_mb,
    most_free_gpu,
)
from rbee.wire.queen import HiveView, JobView, PolicyStatus, Snapshot, WorkerView

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


def _spawn_target(
    job: JobView, snapshot: Snapshot, reasons: list[str], cpu_fallback: bool
) -> Decision:
    """No worker serves the model: spawn where it fits, preferring hives that have its files.

    In order: the GPU with the most free VRAM that has room for the model's estimated need, on
    a hive that has the model; the CPU of such a hive without GPUs (most free RAM); a GPU with
    room on any other hive (which pulls the model); with ``cpu_fallback``, the CPU of the hive
    with the model (or of any) with the most free RAM. Otherwise it queues while some GPU is big
    enough to hold the model once others leave, and rejects when none is.
    """
    model, hives = job.model, snapshot.hives
    if not hives:
        return Reject(f"no worker serves model {model!r} and no hive is online", tuple(reasons))
    having = [h for h in hives if model in h.models]
    reasons.append(f"{len(having)}/{len(hives)} hives have model {model!r}")
    pool = having or list(hives)
    need = {h.name: model_vram_mb(hives, model, h) for h in hives}
    if max(need.values()) > 0:
        reasons.append(f"model {model!r} needs about {max(need.values()):.0f} MB of VRAM")
    spawn = (
        _on_gpu(model, pool, need, reasons)
        or _on_cpu(model, [h for h in pool if not h.gpus], reasons)
        or _on_gpu(model, [h for h in hives if h not in pool], need, reasons)
    )
    if spawn is None and cpu_fallback:
        reasons.append(f"no GPU has room for it ({_most_free(hives)})")
        spawn = _on_cpu(model, pool, reasons)
    return spawn or _no_room(model, hives, need, reasons)


def _on_gpu(
    model: str, hives: Sequence[HiveView], need: dict[str, float], reasons: list[str]
) -> Spawn | None:
    """A spawn on the GPU of ``hives`` with the most free VRAM and room for the need, if any."""
    fits = [(h, g) for h in hives if (g := most_free_gpu(h, need[h.name])) is not None]
    if not fits:
        return None
    hive, gpu = max(fits, key=lambda pair: gpu_free_mb(pair[1]))
    reasons.append(
        f"spawn on hive {hive.name} cuda:{gpu.index} ({gpu_free_mb(gpu):.0f} MB VRAM free, "
        "the most of any GPU with room)"
    )
    return Spawn(hive.name, model, f"cuda:{gpu.index}", tuple(reasons))


def _on_cpu(model: str, hives: Sequence[HiveView], reasons: list[str]) -> Spawn | None:
    """A spawn on the CPU of the hive of ``hives`` with the most free RAM, if any."""
    if not hives:
        return None
    hive = max(hives, key=lambda h: h.ram_free_mb)
    reasons.append(f"spawn on hive {hive.name} cpu (the most free RAM)")
    return Spawn(hive.name, model, "cpu", tuple(reasons))


def _most_free(hives: Sequence[HiveView]) -> str:
    """Where the most free VRAM is, for a reason: ``most free: 3000 MB on h1 cuda:0``."""
    free, hive, index = max((gpu_free_mb(g), h.name, g.index) for h in hives for g in h.gpus)
    return f"most free: {free:.0f} MB on {hive} cuda:{index}"


def _no_room(
    model: str, hives: Sequence[HiveView], need: dict[str, float], reasons: list[str]
) -> Decision:
    """Every hive has GPUs and none has room: queue while one could hold it, else reject."""
    wanted = f"model {model!r} needs about {max(need.values()):.0f} MB of VRAM"
    if any(g.vram_total_mb >= need[h.name] for h in hives for g in h.gpus):
        why = f"{wanted} and no GPU has room for it ({_most_free(hives)})"
        return Queue((*reasons, f"{why}: waiting for a GPU to free up"))
    total, hive, index = max((g.vram_total_mb, h.name, g.index) for h in hives for g in h.gpus)
    return Reject(
        f"{wanted}, more than any GPU has (the largest: {total} MB on {hive} cuda:{index})",
        tuple(reasons),
    )


@dataclasses.dataclass
class BuiltinPolicy:
    """Filter to the model's ready workers with a free slot, then ``pick`` one.

    With no worker for the model it spawns one (`_spawn_target`); ``cpu_fallback`` lets a model
    that fits no GPU start on a CPU instead of waiting for VRAM.
    """

    name: str
    pick: Pick
    cpu_fallback: bool = True

    def schedule(self, job: JobView, snapshot: Snapshot) -> Decision:
        reasons: list[str] = []
        serving = _filter(reasons, snapshot.workers, lambda w: w.model == job.model, "model")
        if not serving:
            return _spawn_target(job, snapshot, reasons, self.cpu_fallback)
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


def builtin(name: str, *, cpu_fallback: bool = True) -> BuiltinPolicy:
    """A fresh instance of the built-in policy ``name`` (round-robin keeps its own counter)."""
    if name not in BUILTIN_POLICIES:
        from rbee.errors import UsageError

        raise UsageError(
            f"unknown policy {name!r}: choose one of {', '.join(BUILTIN_POLICIES)} or a policy file"
        )
    return BuiltinPolicy(name, BUILTIN_POLICIES[name](), cpu_fallback)


def make_scheduler(policy: str, *, locked: bool = False, cpu_fallback: bool = True) -> Scheduler:
    """The scheduler the queen runs, from ``queen.policy`` / ``--policy``.

    A built-in policy name, or the path of a policy file (``rbee.policy``), which must compile:
    the queen does not start on a broken policy. ``locked`` (platform mode) turns hot reload off;
    ``cpu_fallback`` is the built-in policies' (``queen.cpu_fallback``).
    """
    if policy in BUILTIN_POLICIES:
        return builtin(policy, cpu_fallback=cpu_fallback)
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


def make_fallback(policy_fallback: str, *, cpu_fallback: bool = True) -> Scheduler | None:
    """The built-in policy used when the main one raises `PolicyError`; None for ``"reject"``."""
    if policy_fallback == "reject":
        return None
    return builtin(policy_fallback, cpu_fallback=cpu_fallback)
