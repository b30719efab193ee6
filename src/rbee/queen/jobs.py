"""A job while the queen holds it: its event buffer and the admission queue.

The worker's events land in a `JobStream` (payloads kept as the worker sent them) and every client reading the job's stream follows that buffer, so a client may connect after the
first tokens, and a retried attempt is invisible to it. The `AdmissionQueue` orders waiting jobs:
interactive before batch, first come first served within a class (by admission number, so a job
that is retried keeps its place).
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

    async def batches(self) -> AsyncGenerator[list[bytes], None]:
        """Everything pushed so far, then each new batch of payloads, until the stream closes."""
        sent = 0
        while True:
            if sent < len(self._payloads):
                batch = self._payloads[sent:]
                sent += len(batch)
                yield batch
            elif self.closed:
                return
            else:
                await self._changed.wait()

    async def follow(self) -> AsyncGenerator[bytes, None]:
        """The same as SSE bytes: one ``data:`` event per payload, batched per write."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                yield b"".join([b"data: " + p + b"\n\n" for p in batch])


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
    """Jobs waiting for a slot: interactive before batch, then by admission number."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] | None = []

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def push(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._order = None

    def remove(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._order = None
        return job

    def in_order(self) -> list[Job]:
        """A copy of the waiting jobs in serving order (safe to change the queue while iterating)."""
        if self._order is None:
            self._order = sorted(
                self._jobs.values(), key=lambda j: (j.request.priority != "interactive", j.seq)
            )
        return list(self._order)
