"""The worker and hive registry: in memory, fed by heartbeats, queries only (no policy).

Hives report their workers every interval; a hive not heard from for `STALE_INTERVALS` of its own
interval goes offline and its workers leave the registry. The registry also counts the jobs the
queen itself has in flight on each worker, so that free slots stay right between two heartbeats:
a worker's free slots are its total minus the queen's in-flight jobs minus whatever else kept it
busy when its hive last reported (requests that did not come through this queen).

Each worker also carries ``last_used``: when a job last ran on it, or when it last was anything
but ready and idle (loading, busy with requests from elsewhere). Workers idle longer than a
keep-alive are what `idle_longer_than` returns; `eviction_order` ranks a hive's idle workers for
when its host runs short of memory.

A worker the queen found stalled (`stall`: it stopped answering mid-stream) is out of rotation, in
no snapshot and in no list of workers with capacity, until `unstall` (it answers again); its hive's
heartbeats, which may still call it ready, do not bring it back.

`snapshot()` is what a scheduling policy sees; it is rebuilt only when something changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import msgspec

from rbee.wire.queen import (
    HiveEntry,
    HiveHeartbeat,
    HiveView,
    Snapshot,
    WorkerEntry,
    WorkerStatus,
    WorkerView,
)

__all__ = ["STALE_INTERVALS", "HiveRecord", "Registry", "WorkerRecord"]

STALE_INTERVALS = 3


@dataclasses.dataclass(eq=False)
class WorkerRecord:
    """One worker: its hive's last report and the queen's own count of jobs on it."""

    status: WorkerStatus
    hive: str
    seen_at: float
    inflight: int = 0
    external_busy: int = 0
    last_used: float = 0.0
    # Added by `Registry.add_worker` and not yet listed by a heartbeat of its hive.
    pending: bool = False
    stalled: bool = False

    @property
    def id(self) -> str:
        return self.status.id

    @property
    def idle(self) -> bool:
        """Ready, no job of the queen's on it, and every slot free when its hive last reported."""
        return (
            self.status.state == "ready"
            and self.inflight == 0
            and self.status.slots_free >= self.status.slots_total
        )

    @property
    def slots_free(self) -> int:
        busy = self.inflight + self.external_busy
        return max(self.status.slots_total - busy, 0)

    def view(self, hive: HiveRecord | None) -> WorkerView:
        s = self.status
        total_vram = 0.0
        if hive is not None and s.device.startswith("cuda:"):
            index = s.device.partition(":")[2]
            for gpu in hive.heartbeat.host.gpus:
                if str(gpu.index) == index:
                    total_vram = float(gpu.vram_total_mb)
        return WorkerView(
            id=s.id,
            hive=self.hive,
            model=s.model,
            device=s.device,
            state=s.state,
            slots_total=s.slots_total,
            slots_free=self.slots_free,
            cpu_pct=s.cpu_pct,
            rss_mb=s.rss_mb,
            gpu_util_pct=s.gpu_util_pct,
            vram_mb=s.vram_mb,
            total_vram_mb=total_vram,
            uptime_s=s.uptime_s,
            labels=hive.heartbeat.labels if hive is not None else {},
        )


@dataclasses.dataclass(eq=False)
class HiveRecord:
    heartbeat: HiveHeartbeat
    seen_at: float
    online: bool = True

    @property
    def stale_after(self) -> float:
        return self.seen_at + STALE_INTERVALS * self.heartbeat.interval_s


class Registry:
    """Workers and hives as the last heartbeats described them.

    ``clock`` gives monotonic seconds (``trio.current_time`` in the daemon, so tests can use a
    virtual clock).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._workers: dict[str, WorkerRecord] = {}
        self._hives: dict[str, HiveRecord] = {}
        # Hive being drained -> the models it had then (it comes back with them).
        self._draining: dict[str, frozenset[str]] = {}
        self._snapshot: Snapshot | None = None

    # --- updates ---------------------------------------------------------------------------

    def heartbeat(self, hb: HiveHeartbeat) -> tuple[bool, list[str]]:
        """Apply one hive report; return (whether the hive is new or back, workers it dropped)."""
        now = self._clock()
        previous = self._hives.get(hb.hive)
        came_online = previous is None or not previous.online
        self._hives[hb.hive] = HiveRecord(hb, now)
        reported = {w.id for w in hb.workers}
        # A heartbeat the hive built before it started a worker must not drop that worker.
        patience = STALE_INTERVALS * hb.interval_s
        dropped = [
            wid
            for wid, w in self._workers.items()
            if w.hive == hb.hive
            and wid not in reported
            and not (w.pending and now - w.seen_at < patience)
        ]
        for wid in dropped:
            del self._workers[wid]
        for status in hb.workers:
            record = self._workers.get(status.id)
            if record is None or record.hive != hb.hive:
                self._workers[status.id] = WorkerRecord(status, hb.hive, now, last_used=now)
                record = self._workers[status.id]
            record.status = status
            record.seen_at = now
            record.pending = False
            busy = status.slots_total - status.slots_free
            record.external_busy = max(busy - record.inflight, 0)
            if not record.idle:
                record.last_used = now
        self._snapshot = None
        return came_online, dropped

    def add_worker(self, hive: str, status: WorkerStatus) -> None:
        """Take in a worker its hive just started, before the hive's next heartbeat lists it."""
        if hive in self._hives and status.id not in self._workers:
            now = self._clock()
            self._workers[status.id] = WorkerRecord(status, hive, now, last_used=now, pending=True)
            self._snapshot = None

    def remove_worker(self, worker_id: str) -> WorkerRecord | None:
        """Forget a worker at once (it exited); its hive's next report may not list it yet."""
        record = self._workers.pop(worker_id, None)
        if record is not None:
            self._snapshot = None
        return record

    def expire(self) -> list[str]:
        """Take hives that missed `STALE_INTERVALS` heartbeats offline; return their names."""
        now = self._clock()
        gone = [h.heartbeat.hive for h in self._hives.values() if h.online and now > h.stale_after]
        for name in gone:
            self.take_offline(name)
        return gone

    def take_offline(self, name: str) -> None:
        """Take hive ``name`` offline now, and its workers out (it stopped, or went stale)."""
        record = self._hives.get(name)
        if record is None:
            return
        record.online = False
        for wid in [wid for wid, w in self._workers.items() if w.hive == name]:
            del self._workers[wid]
        self._snapshot = None

    def acquire(self, worker_id: str) -> None:
        """The queen sent a job to this worker: one slot fewer until `release`."""
        record = self._workers.get(worker_id)
        if record is not None:
            record.inflight += 1
            record.last_used = self._clock()
            self._snapshot = None

    def release(self, worker_id: str) -> None:
        record = self._workers.get(worker_id)
        if record is not None and record.inflight > 0:
            record.inflight -= 1
            record.last_used = self._clock()
            self._snapshot = None

    def stall(self, worker_id: str) -> None:
        """Take a worker that stopped answering out of rotation (until `unstall`)."""
        self._set_stalled(worker_id, True)

    def unstall(self, worker_id: str) -> None:
        """Put a stalled worker back into rotation: it answers again."""
        self._set_stalled(worker_id, False)

    def _set_stalled(self, worker_id: str, stalled: bool) -> None:
        record = self._workers.get(worker_id)
        if record is not None and record.stalled != stalled:
            record.stalled = stalled
            self._snapshot = None

    def mark_stopping(self, worker_id: str) -> None:
        """The queen is retiring this worker: no policy may pick it any more."""
        record = self._workers.get(worker_id)
        if record is not None:
            record.status = msgspec.structs.replace(record.status, state="stopping")
            self._snapshot = None

    def drain(self, name: str, on: bool = True) -> None:
        """Hide hive ``name`` and its workers from the policies (it is about to restart), or
        show them again; the jobs they run go on.
        """
        if on:
            hive = self._hives.get(name)
            models = {w.status.model for w in self._workers.values() if w.hive == name}
            models.update(hive.heartbeat.models if hive is not None else ())
            self._draining[name] = frozenset(models)
        else:
            self._draining.pop(name, None)
        self._snapshot = None

    # --- queries ---------------------------------------------------------------------------

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def workers(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def by_model(self, model: str) -> list[WorkerRecord]:
        return [w for w in self._workers.values() if w.status.model == model]

    def idle(self) -> list[WorkerRecord]:
        """Ready workers with nothing running on them."""
        return [
            w
            for w in self._workers.values()
            if w.status.state == "ready" and w.slots_free == w.status.slots_total
        ]

    def idle_longer_than(self, seconds: float) -> list[WorkerRecord]:
        """Idle unpinned workers whose last use is more than ``seconds`` ago, longest idle first."""
        now = self._clock()
        old = [
            w
            for w in self._workers.values()
            if w.idle and not w.status.pinned and now - w.last_used > seconds
        ]
        return sorted(old, key=lambda w: w.last_used)

    def eviction_order(self, hive: str) -> list[list[WorkerRecord]]:
        """``hive``'s idle unpinned workers grouped by model, least recently used model first.

        A model's last use is that of its most recently used worker on any hive, so that a model
        busy elsewhere is not taken for an unused one.
        """
        last_use: dict[str, float] = {}
        for w in self._workers.values():
            last_use[w.status.model] = max(last_use.get(w.status.model, 0.0), w.last_used)
        groups: dict[str, list[WorkerRecord]] = {}
        for w in self._workers.values():
            if w.hive == hive and w.idle and not w.status.pinned:
                groups.setdefault(w.status.model, []).append(w)
        return [groups[m] for m in sorted(groups, key=lambda m: (last_use[m], m))]

    def hive(self, name: str) -> HiveRecord | None:
        return self._hives.get(name)

    def draining_models(self) -> frozenset[str]:
        """The models the hives being drained (`drain`) served or had in their stores then."""
        return frozenset().union(*self._draining.values())

    def with_capacity(self, model: str | None = None) -> list[WorkerRecord]:
        """Ready or busy workers (of ``model``, if given) with at least one free slot."""
        return [
            w
            for w in self._workers.values()
            if w.status.state in ("ready", "busy")
            and not w.stalled
            and w.slots_free > 0
            and (model is None or w.status.model == model)
        ]

    def models(self) -> list[str]:
        """Every model a worker serves or an online hive has in its store, sorted."""
        names = {w.status.model for w in self._workers.values()}
        for hive in self._hives.values():
            if hive.online:
                names.update(hive.heartbeat.models)
        return sorted(names)

    def context_length(self, model: str) -> int | None:
        """The model's context in tokens as its online hives report it (the least); None when
        none does."""
        found = [
            n for h in self._hives.values() if h.online and (n := h.heartbeat.contexts.get(model))
        ]
        return min(found) if found else None

    def hives(self) -> list[HiveRecord]:
        return list(self._hives.values())

    def snapshot(self) -> Snapshot:
        """The cluster as a policy sees it (online hives, their workers)."""
        if self._snapshot is None:
            hives = {
                name: h
                for name, h in self._hives.items()
                if h.online and name not in self._draining
            }
            counts: dict[str, int] = {}
            for w in self._workers.values():
                counts[w.hive] = counts.get(w.hive, 0) + 1
            self._snapshot = Snapshot(
                workers=tuple(
                    w.view(hives.get(w.hive))
                    for w in self._workers.values()
                    if not w.stalled and w.hive not in self._draining
                ),
                hives=tuple(
                    HiveView(
                        name=name,
                        labels=h.heartbeat.labels,
                        gpus=tuple(h.heartbeat.host.gpus),
                        ram_free_mb=float(h.heartbeat.host.ram_free_mb),
                        models=tuple(h.heartbeat.models),
                        model_vram_mb=h.heartbeat.model_vram_mb,
                        workers=counts.get(name, 0),
                    )
                    for name, h in hives.items()
                ),
            )
        return self._snapshot

    def worker_entries(self) -> list[WorkerEntry]:
        now = self._clock()
        return [
            WorkerEntry(
                hive=w.hive,
                worker=w.status,
                inflight=w.inflight,
                last_seen_s=now - w.seen_at,
                stalled=w.stalled,
            )
            for w in self._workers.values()
        ]

    def hive_entries(self) -> list[HiveEntry]:
        now = self._clock()
        return [
            HiveEntry(
                name=name,
                url=h.heartbeat.url,
                status="online" if h.online else "offline",
                draining=name in self._draining,
                host=h.heartbeat.host,
                models=h.heartbeat.models,
                labels=h.heartbeat.labels,
                last_seen_s=now - h.seen_at,
            )
            for name, h in self._hives.items()
        ]
