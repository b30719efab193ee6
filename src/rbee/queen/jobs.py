"""A job while the queen holds it: its event buffer and the admission queue.

The worker's events land in a `JobStream` (payloads kept as the worker sent them) and every client
reading the job's stream follows that buffer, so a client may connect after the first tokens, and
a retried attempt is invisible to it. Each event's SSE ``id`` is its number in the buffer (from 1),
so a client that lost its connection reconnects with ``Last-Event-ID`` and gets the rest.

The `AdmissionQueue` orders waiting jobs: interactive before batch; within a class the tenants take
turns, and each tenant's jobs go first come first served (by admission number, so a job that is
retried keeps its place).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Callable

import trio

from rbee.errors import RbeeError
from rbee.wire.queen import JobRequest, JobState, JobView
from rbee.wire.worker import prompt_chars

__all__ = ["AdmissionQueue", "Job", "JobStream"]


class JobStream:
    """Append-only event payloads of one job; readers wait for more until it is closed.

    Payloads are kept exactly as the worker sent them (JSON bytes, or a terminal marker), so the
    jobs API frames and forwards them without decoding or re-encoding.
    """

    def __init__(self) -> None:
        self._payloads: list[bytes] = []
        self._changed = trio.Event()
        self.closed = False
        self.readers = 0
        # Its events before a queen restart are lost: it holds only how it ended.
        self.restored = False

    def push(self, payload: bytes) -> None:
        """Add one event payload (``{"type": "token", ...}``)."""
        self._payloads.append(payload)
        self._changed.set()
        self._changed = trio.Event()

    def close(self, marker: str) -> None:
        """End the stream with ``[DONE]``, ``[CANCELLED]`` or ``[ERROR] ...`` (once)."""
        if not self.closed:
            self.push(marker.encode())
            self.closed = True

    def __len__(self) -> int:
        return len(self._payloads)

    async def batches(self, after: int = 0) -> AsyncGenerator[list[bytes], None]:
        """Everything pushed so far (past the first ``after``), then each new batch of payloads,
        until the stream closes."""
        sent = after
        while True:
            if sent < len(self._payloads):
                batch = self._payloads[sent:]
                sent += len(batch)
                yield batch
            elif self.closed:
                return
            else:
                await self._changed.wait()

    async def follow(self, after: int = 0) -> AsyncGenerator[bytes, None]:
        """The same as SSE bytes: one event per payload, with its ``id``, batched per write."""
        n = after
        self.readers += 1
        try:
            async with contextlib.aclosing(self.batches(after)) as batches:
                async for batch in batches:
                    frames = []
                    for p in batch:
                        n += 1
                        frames.append(b"id: %d\ndata: %s\n\n" % (n, p))
                    yield b"".join(frames)
        finally:
            self.readers -= 1


@dataclasses.dataclass(eq=False)
class Job:
    """An unfinished job; ``admitted_at`` and ``deadline`` are on the trio clock."""

    id: str
    seq: int
    request: JobRequest
    created_at: float
    admitted_at: float
    deadline: float | None = None
    # The tenant of the key that sent it ("" without a key).
    tenant: str = ""
    state: JobState = "queued"
    attempts: int = 0
    tried: set[str] = dataclasses.field(default_factory=set)
    worker: str | None = None
    stream: JobStream = dataclasses.field(default_factory=JobStream)
    scope: trio.CancelScope | None = None
    logged: set[str] = dataclasses.field(default_factory=set)
    first_token_at: float | None = None
    worker_body: bytes = b""
    worker_job_url: str | None = None
    started_sent: bool = False
    # The token ids whose text the client has, in order: what another worker resumes from. A
    # worker whose token events do not name their ids leaves a job that cannot be resumed.
    emitted_ids: list[int] = dataclasses.field(default_factory=list)
    resumable: bool = True
    # When (trio clock) and why its stream was cut off mid-way, while it waits to continue.
    interrupted_at: float | None = None
    interrupted: str = ""
    ended_at: float | None = None
    readmitted: bool = False
    started: bool = False
    stop_reason: str = ""
    error: str | None = None
    # Why it failed, where an error class says more than ``error`` (its status, its code).
    failure: RbeeError | None = None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    # Set once its attempt has sent the request to the worker (or failed to).
    sent: trio.Event = dataclasses.field(default_factory=trio.Event)
    # Called once as it ends, with the tokens it used (prompt plus completion; None if unknown).
    on_end: Callable[[int | None], None] | None = None

    @property
    def model(self) -> str:
        return self.request.model

    def view(self) -> JobView:
        """What a policy may know about this job (prompt length estimated at 4 chars a token)."""
        r = self.request
        chars = prompt_chars(r.prompt, r.messages)
        return JobView(
            id=self.id,
            model=r.model,
            priority=r.priority,
            prompt_tokens=chars // 4,
            max_tokens=r.max_tokens,
            tenant=self.tenant,
            labels=r.labels,
        )


class AdmissionQueue:
    """Jobs waiting for a slot: interactive before batch, tenants in turn, then by admission.

    Within a priority each tenant has a count of the jobs it was served (`take`), and a job's
    turn is that count plus the number of its tenant's jobs waiting ahead of it; the lowest turn
    goes first, ties to the older job. The priority's clock is the turn of the job taken last: a
    tenant with nothing waiting that sends a job starts at least there (start-time fair
    queueing), so time it spent away earns it no turns, and no tenant is owed more than one.
    A tenant with 100 jobs waiting and one with 1 alternate.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] | None = []
        self._served: dict[tuple[str, str], int] = {}
        self._clock: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def push(self, job: Job) -> None:
        group = (job.request.priority, job.tenant)
        if not any((j.request.priority, j.tenant) == group for j in self._jobs.values()):
            clock = self._clock.get(group[0], 0)
            self._served[group] = max(self._served.get(group, 0), clock)
        self._jobs[job.id] = job
        self._order = None

    def remove(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._order = None
        return job

    def take(self, job_id: str) -> Job | None:
        """Remove a job that starts running: its tenant's turn is used."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        group = (job.request.priority, job.tenant)
        ahead = sum(
            1
            for j in self._jobs.values()
            if (j.request.priority, j.tenant) == group and j.seq < job.seq
        )
        served = self._served.get(group, 0)
        self._clock[group[0]] = max(self._clock.get(group[0], 0), served + ahead)
        self._served[group] = served + 1
        return self.remove(job_id)

    def in_order(self) -> list[Job]:
        """A copy of the waiting jobs in serving order (safe to change the queue while iterating)."""
        if self._order is None:
            ahead: dict[tuple[str, str], int] = {}
            ranked = []
            for job in sorted(self._jobs.values(), key=lambda j: j.seq):
                group = (job.request.priority, job.tenant)
                turn = self._served.get(group, 0) + ahead.get(group, 0)
                ahead[group] = ahead.get(group, 0) + 1
                ranked.append((job.request.priority != "interactive", turn, job.seq, job))
            ranked.sort(key=lambda r: r[:3])
            self._order = [r[3] for r in ranked]
        return list(self._order)
