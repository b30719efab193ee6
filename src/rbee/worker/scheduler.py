"""Continuous batching, the trio part: admits jobs into slots, runs `Batch.step` in a thread.

Jobs arrive with `Scheduler.submit` (from the HTTP handlers), wait in a bounded queue for a slot,
join the batch at the next step and leave it when done. Each job's events go into its own unbounded
memory channel (at most ``max_tokens`` of them), so generation starts at submit time whether or not
anyone reads yet. A job whose stream is not opened within ``unopened_timeout_s`` is cancelled and
forgotten, so that a client that never comes back cannot hold a slot or memory.

Engine work runs in one worker thread, one step at a time, so the event loop stays free for HTTP;
cancellation is a flag that the next step acts on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Literal

import trio

from rbee.errors import ApiError, NotFoundError, QueueFullError
from rbee.log import kv
from rbee.wire.worker import Finished, SamplingParams
from rbee.worker.batch import Admit, Batch, Event, StepOutput
from rbee.worker.interfaces import EngineLike, TokenizerLike

__all__ = ["Ended", "Job", "Scheduler", "StreamItem"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Ended:
    """The end of a job's stream: ``done`` (after `Finished`), ``cancelled`` or ``error``."""

    how: Literal["done", "cancelled", "error"]
    message: str = ""


StreamItem = Event | Ended


@dataclasses.dataclass(eq=False)
class Job:
    """One generation, from submit until its stream is read to the end or it is forgotten."""

    id: str
    prompt_ids: Sequence[int]
    params: SamplingParams
    submitted: float
    deadline: float
    send: trio.MemorySendChannel[StreamItem]
    receive: trio.MemoryReceiveChannel[StreamItem]
    state: Literal["waiting", "running", "ended"] = "waiting"
    slot: int = -1
    cancel_requested: bool = False
    opened: bool = False
    released: trio.Event = dataclasses.field(default_factory=trio.Event)

    def put(self, item: StreamItem) -> None:
        """Queue an item for the stream's reader (dropped if the reader is gone)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.send.send_nowait(item)

    def end(self, item: Ended) -> None:
        """Queue the terminal item; the job no longer holds a slot or a queue place."""
        self.state = "ended"
        self.put(item)
        self.send.close()
        self.released.set()


class Scheduler:
    """Owns the slots of one engine and the jobs that use them; `run` is the batching loop."""

    def __init__(
        self,
        engine: EngineLike,
        tokenizer: TokenizerLike,
        *,
        queue_size: int,
        unopened_timeout_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.unopened_timeout_s = unopened_timeout_s
        self._batch = Batch(engine, tokenizer)
        self._free = list(range(engine.slots))
        self._waiting: deque[Job] = deque()
        self._running: dict[str, Job] = {}
        self._jobs: dict[str, Job] = {}
        self._work = trio.Event()

    # Waiting jobs take free slots at the next step; count them as taken already, so that what
    # `/v1/info` says right after a POST does not depend on whether that step has run yet.
    @property
    def slots_free(self) -> int:
        return max(0, len(self._free) - len(self._waiting))

    @property
    def queue_depth(self) -> int:
        return max(0, len(self._waiting) - len(self._free))

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Job:
        """Queue a generation; `QueueFullError` when it would wait beyond the queue's size."""
        if self.queue_depth + 1 > self.queue_size and not self.slots_free:
            raise QueueFullError(
                f"worker is busy: {self.engine.slots} slots in use and {self.queue_depth} "
                f"requests waiting (queue size {self.queue_size}); retry later"
            )
        send, receive = trio.open_memory_channel[StreamItem](math.inf)
        now = trio.current_time()
        job = Job(
            id=f"job-{uuid.uuid4()}",
            prompt_ids=prompt_ids,
            params=params,
            submitted=time.perf_counter(),
            deadline=now + self.unopened_timeout_s,
            send=send,
            receive=receive,
        )
        self._jobs[job.id] = job
        self._waiting.append(job)
        self._work.set()
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r} on this worker (finished and read, or never)")
        return job

    def open(self, job_id: str) -> Job:
        """Claim the job's stream; a stream can be read once (409 for a second reader)."""
        job = self.get(job_id)
        if job.opened:
            raise ApiError(f"the stream of {job_id} is already being read", status=409)
        job.opened = True
        return job

    def cancel(self, job: Job) -> None:
        """Ask for ``job`` to stop: at once if it waits, at the next step if it runs."""
        if job.state == "waiting":
            self._waiting.remove(job)
            job.end(Ended("cancelled"))
        elif job.state == "running":
            job.cancel_requested = True
            self._work.set()

    def forget(self, job: Job) -> None:
        """Drop ``job`` from the table (its stream was read to the end or abandoned)."""
        self.cancel(job)
        self._jobs.pop(job.id, None)

    async def run(self) -> None:
        """The batching loop plus the reaper of unopened jobs; runs until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reap_unopened)
                await self._loop()
        finally:
            for job in list(self._jobs.values()):
                if job.state != "ended":
                    job.end(Ended("error", "the worker is shutting down"))

    async def _loop(self) -> None:
        while True:
            if not self._waiting and not self._running:
                await self._work.wait()
                self._work = trio.Event()
                continue
            admit = []
            while self._waiting and self._free:
                job = self._waiting.popleft()
                slot = self._batch.best_slot(self._free, job.prompt_ids)
                self._free.remove(slot)
                job.state, job.slot = "running", slot
                self._running[job.id] = job
                admit.append(Admit(job.id, job.slot, job.prompt_ids, job.params, job.submitted))
            cancel = [job.id for job in self._running.values() if job.cancel_requested]
            # The step is never abandoned: the engine must not be used by two threads at once.
            try:
                out = await trio.to_thread.run_sync(self._batch.step, admit, cancel)
            except Exception as err:
                self._recover(err)
                continue
            self._dispatch(out)

    def _recover(self, err: Exception) -> None:
        """A step failed outside the engine (a bug): end the running jobs, keep serving."""
        log.error("batch step failed", exc_info=err, extra=kv(jobs=len(self._running)))
        self._batch.reset()
        for job in self._running.values():
            self._free.append(job.slot)
            job.end(Ended("error", f"internal error: {type(err).__name__}: {err}"))
        self._running.clear()

    def _dispatch(self, out: StepOutput) -> None:
        for key, events in out.events.items():
            job = self._running[key]
            for event in events:
                job.put(event)
        for slot in out.freed:
            self._free.append(slot)
        for key in out.cancelled:
            self._running.pop(key).end(Ended("cancelled"))
        for key, message in out.errors.items():
            self._running.pop(key).end(Ended("error", message))
        for key, events in out.events.items():
            if events and isinstance(events[-1], Finished):
                self._running.pop(key).end(Ended("done"))

    async def _reap_unopened(self) -> None:
        while True:
            await trio.sleep(min(1.0, self.unopened_timeout_s))
            now = trio.current_time()
            for job in [j for j in self._jobs.values() if not j.opened and j.deadline <= now]:
                log.warning(
                    "stream never opened; job dropped",
                    extra=kv(job=job.id, timeout_s=self.unopened_timeout_s),
                )
                self.forget(job)
