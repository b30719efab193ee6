"""Admission, scheduling, retries and cancellation: what the queen does with a job.

A job is admitted into the `AdmissionQueue` and the queue is pumped at once: each waiting job, in
serving order, is shown to the scheduler with the registry's snapshot. `Route` starts an attempt
on that worker, `Queue` leaves it (and every later job for the same model) waiting, `Spawn` asks
the `Provisioner` for a worker (with none configured it is the clear "no worker serves model X"
error), `Reject` fails it. A job for a model that no worker serves, no hive has and the
provisioner cannot bring fails before the scheduler sees it (`ModelNotFoundError` at admission).

While hives are expected to report, a job that no worker can take waits instead of failing or
spawning: after a restart (the hives re-announce their workers within `STALE_INTERVALS`
heartbeats; only the jobs re-admitted from the database wait) and while a hive the queen started
has not reported yet (`expect_hive`, up to its bound; every job waits). Once the bound has passed,
the job is decided as usual and a rejection says which hive never reported. While a hive is
drained for an upgrade (`drain_hive`), its workers take no new job: a job goes to another worker,
or a spawn on another hive, or, for a model the hive had, waits for the upgraded hive instead of
being rejected.

The queue is pumped again whenever a slot may have freed up: a heartbeat,
an attempt ending, a worker exiting, and every housekeeping tick (which also enforces deadlines and
takes silent hives offline: their workers leave the registry and the attempts running on them
end as failures, retried elsewhere by the rule below).

An attempt whose worker fails is retried elsewhere after an exponential backoff, at most
``queen.max_attempts`` times in all. After tokens went out the next attempt resumes from them
(`rbee.queen.relay`): the client's stream continues on another worker of the model, or on one the
queen starts, as if nothing had happened; a stream that finds no worker to continue on within
``queen.migrate_timeout_s`` ends with the reason. A worker that went silent mid-stream (stopped,
swapped out) is taken out of rotation until it answers ``/health`` again. Every attempt and every
decision (but only the first `Queue` or `Spawn` of a job) is recorded.

A policy that raises (`PolicyError`, or any bug in it) does not stop the queen: the fallback policy
(``queen.policy_fallback``; ``"reject"`` rejects) decides instead, and the error is logged, counted
and kept for ``rbee status``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec
import trio

from rbee import __version__, sse, wire
from rbee.config import QueenConfig
from rbee.decisions import Decision, Queue, Reject, Route, Scheduler, Spawn, kind_target
from rbee.errors import ApiError, ModelNotFoundError, NoWorkerError, QueueFullError, UsageError
from rbee.hive.queen_link import MAX_BACKOFF_S
from rbee.log import kv
from rbee.queen.http11 import Pool, TransportError
from rbee.queen.jobs import AdmissionQueue, Job
from rbee.queen.metrics import Labels, Metrics
from rbee.queen.prompts import PromptCheck
from rbee.queen.registry import STALE_INTERVALS, Registry
from rbee.queen.relay import AttemptError, Outcome, StallBounds, cancel_on_worker, run_attempt
from rbee.queen.scheduler import Watched, make_fallback
from rbee.queen.store import HiveStore, JobStore, StoredJob
from rbee.wire.queen import (
    DecisionRecord,
    HiveHeartbeat,
    JobRequest,
    QueenStatus,
    RecentError,
    Snapshot,
    TenantView,
    WorkerExited,
)

__all__ = ["Dispatcher", "Provisioner"]

log = logging.getLogger(__name__)

TICK_S = 0.1
FINISHED_KEPT = 512
CANCEL_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 1.0


class Provisioner(Protocol):
    """Starts a worker for ``model`` on ``hive`` (``device`` e.g. ``cpu`` or ``cuda:0``).

    Returns once the hive has started it or raises an `RbeeError` saying why it could not; the
    queen routes to the worker when the hive's heartbeat lists it.
    """

    async def spawn(self, hive: str, model: str, device: str) -> None: ...

    def provides(self, model: str) -> bool:
        """Whether a spawn can bring ``model`` to a hive that lacks it (never raises)."""
        ...


Finished = Literal["completed", "failed", "cancelled"]


class Dispatcher:
    """Owns the queue, the running jobs and their records; `run` hosts its tasks."""

    def __init__(
        self,
        config: QueenConfig,
        conn: sqlite3.Connection,
        scheduler: Scheduler,
        provisioner: Provisioner | None = None,
    ) -> None:
        self.config = config
        self.records = JobStore(conn)
        self.hive_records = HiveStore(conn)
        self.hive_labels: dict[str, dict[str, str]] = {}
        # Awaited before the queen opens a connection to a worker (see `rbee.queen.http11`).
        self.before_connect: Callable[[str, int], Awaitable[None]] | None = None
        self.registry = Registry(trio.current_time)
        # A prompt too long for its model is refused before it is submitted; the daemon gives
        # it the queen's store, whose tokenizers count the prompts that may not fit.
        self.prompts = PromptCheck(self.registry, None)
        self.scheduler = scheduler
        self.fallback = make_fallback(config.policy_fallback, cpu_fallback=config.cpu_fallback)
        self.provisioner = provisioner
        self.metrics = Metrics()
        self.queue = AdmissionQueue()
        self.jobs: dict[str, Job] = {}
        self.running: dict[str, Job] = {}
        self.recent_errors: collections.deque[RecentError] = collections.deque(maxlen=20)
        self.last_policy_error: str | None = None
        self.draining = False
        self._finished: collections.deque[str] = collections.deque()
        self._spawns: dict[tuple[str, str], float] = {}
        self._seq = 0
        self._started_at = 0.0
        self._nursery: trio.Nursery | None = None
        self._pool: Pool | None = None
        self._idle = trio.Event()
        self._idle.set()
        self._heard = trio.Event()
        self._job_ended = trio.Event()
        self._lost: dict[str, str] = {}
        # Hives expected to report: name -> (deadline, bound in s, since when, as words).
        self._expected: dict[str, tuple[float, float, str]] = {}
        self._bounds = StallBounds(
            config.first_event_timeout_s, config.stall_steps, config.stall_floor_s
        )
        # The tenants and their quota use that policies see (`rbee.queen.auth` sets it).
        self.tenants: Callable[[], tuple[TenantView, ...]] = tuple
        # The token to call the worker at (host, port) with; None: ``queen.token``.
        self.worker_token: Callable[[tuple[str, int]], str] | None = None

    # --- lifetime --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-admit the jobs left queued, then host attempts and housekeeping until cancelled."""
        pool = Pool(self.config.token, self.before_connect, self.worker_token)
        try:
            async with trio.open_nursery() as nursery:
                self._pool = pool
                self._nursery = nursery
                self._started_at = trio.current_time()
                self._seq = self.records.next_seq()
                self._readmit()
                nursery.start_soon(self._housekeeping)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()

    def _readmit(self) -> None:
        """Queue again the jobs a queen that stopped left waiting; fail those it left running.

        A running job's events died with the queen that relayed them, so it cannot continue where
        its client left off: it fails with the reason, and a client that reconnects to its stream
        gets that reason. While re-admitted jobs wait, so does every job no worker can take, for
        the hives last seen online to report again (their heartbeats back off while the queen is
        down, up to `MAX_BACKOFF_S`).
        """
        now, t = time.time(), trio.current_time()
        readmitted = False
        for stored in self.records.unfinished():
            if stored.state == "running":
                self._interrupted_by_restart(stored, now)
                continue
            readmitted = True
            deadline = None if stored.deadline_at is None else t + (stored.deadline_at - now)
            job = Job(
                id=stored.id,
                seq=stored.seq,
                request=stored.request,
                created_at=stored.created_at,
                admitted_at=t,
                deadline=deadline,
                attempts=stored.attempts,
                readmitted=True,
                tenant=stored.tenant,
            )
            job.worker_body = wire.encode(stored.request.to_worker())
            self.jobs[job.id] = job
            self.queue.push(job)
        if readmitted:
            within = MAX_BACKOFF_S + STALE_INTERVALS * self.config.heartbeat_interval_s
            for hive in self.hive_records.all():
                if hive["status"] == "online":
                    self.expect_hive(hive["name"], within, "of the queen's restart")

    def _interrupted_by_restart(self, stored: StoredJob, now: float) -> None:
        error = "interrupted: the queen stopped while the job ran"
        self.records.update(stored.id, state="failed", finished_at=now, error=error)
        if stored.attempts:
            self.records.end_attempt(stored.id, stored.attempts, now, error)
        job = Job(
            id=stored.id,
            seq=stored.seq,
            request=stored.request,
            created_at=stored.created_at,
            admitted_at=trio.current_time(),
            attempts=stored.attempts,
            tenant=stored.tenant,
            state="failed",
            error=error,
        )
        # Kept like any finished job, so that a client reconnecting to its stream learns why.
        job.stream.restored = True
        job.stream.close(sse.error_marker(error))
        job.done.set()
        job.ended_at = trio.current_time()
        self.jobs[job.id] = job
        self._finished.append(job.id)

    async def close_idle_connections(self) -> None:
        """Close the kept-alive connections to workers that no attempt is using.

        A worker told to stop waits for its open connections to close (up to its server's grace
        period); closing ours first lets it stop at once.
        """
        if self._pool is not None:
            await self._pool.aclose()

    async def drain(self, grace_s: float) -> None:
        """Stop admitting, let running jobs finish for ``grace_s``, then stop the rest.

        Waiting jobs stay queued in the database and are re-admitted at the next start; so is a
        running job stopped before its first token.
        """
        self.draining = True
        for job in self.queue.in_order():
            job.stream.close(
                sse.error_marker("the queen is shutting down; the job runs when it restarts")
            )
        with trio.move_on_after(grace_s):
            await self._idle.wait()
        for job in list(self.running.values()):
            job.stop_reason = "shutdown"
            if job.scope is not None:
                job.scope.cancel()
        with trio.move_on_after(CANCEL_TIMEOUT_S + 1):
            await self._idle.wait()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            # Held records whose client went away before `accepted` wrote them.
            self.records.flush()
            self._forget_old()
            hive_of = {
                job.id: record.hive
                for job in self.running.values()
                if job.worker is not None and (record := self.registry.get(job.worker))
            }
            for name in self.registry.expire():
                for job_id, hive in hive_of.items():
                    if hive == name:
                        self._interrupt(self.running[job_id], f"hive {name} went offline")
                self.hive_records.offline(name, time.time())
                self._error(f"hive {name}", f"no heartbeat for {STALE_INTERVALS} intervals")
            now = trio.current_time()
            for job in self.queue.in_order():
                if job.interrupted_at is not None and now > job.interrupted_at + (
                    self.config.migrate_timeout_s
                ):
                    self.queue.remove(job.id)
                    self._finish(job, "failed", error=self._unresumed(job))
                elif job.deadline is not None and now > job.deadline:
                    self.queue.remove(job.id)
                    deadline_s = job.request.deadline_s or 0.0
                    self._finish(
                        job,
                        "failed",
                        error=f"deadline of {deadline_s:g} s passed while the job waited for a slot",
                    )
            if len(self.queue):
                self.pump()

    # --- admission -------------------------------------------------------------------------

    def _check_fits(self, request: JobRequest) -> None:
        """Refuse (400) a request the model's context cannot hold: as OpenAI does, ``max_tokens``
        is never cut down to what is left. The prompt's own length is checked by the worker,
        or, when it may be too long, before the job is submitted (`PromptCheck.check`)."""
        context = self.prompts.context(request.model)
        if context is not None and request.max_tokens >= context:
            raise UsageError(
                f"max_tokens is too large: {request.max_tokens}. Model {request.model!r} has a "
                f"context of {context} tokens, which leaves at most {context - 1} for the "
                "completion after a prompt of one token",
                param="max_tokens",
                code="invalid_value",
            )

    def submit(self, request: JobRequest, tenant: str = "") -> Job:
        """Admit a job of ``tenant``; raise `ModelNotFoundError`, `NoWorkerError`,
        `QueueFullError`, or a 503 while draining."""
        if self.draining:
            raise ApiError(
                "the queen is shutting down and admits no new jobs", 503, error_type="server_error"
            )
        self._check_fits(request)
        if request.seed is None:
            # A seed of its own makes the job resumable on another worker (and reproducible).
            request = msgspec.structs.replace(request, seed=secrets.randbits(63))
        t = trio.current_time()
        self._seq += 1
        job = Job(
            id=f"job-{uuid.uuid4()}",
            seq=self._seq,
            request=request,
            created_at=time.time(),
            admitted_at=t,
            deadline=None if request.deadline_s is None else t + request.deadline_s,
            tenant=tenant,
        )
        job.worker_body = wire.encode(request.to_worker())
        deadline_at = None if request.deadline_s is None else job.created_at + request.deadline_s
        with self.records.held():
            self.records.insert(job.id, job.seq, request, job.created_at, deadline_at, tenant)
            self.jobs[job.id] = job
            self.queue.push(job)
            self.pump()
        if job.state != "running":
            self.records.flush()
        if job.state == "failed":
            failure = job.failure or NoWorkerError(job.error or f"no worker serves {job.model!r}")
            self.metrics.rejected.inc(reason=failure.code or "no_worker")
            raise failure
        if job.state == "queued" and len(self.queue) > self.config.queue_size:
            self.queue.remove(job.id)
            self.jobs.pop(job.id, None)
            self.records.delete(job.id)
            self.metrics.rejected.inc(reason="queue_full")
            raise QueueFullError(
                f"every worker for model {request.model!r} is busy and the queue is full "
                f"({self.config.queue_size} jobs waiting): retry later",
                retry_after=1,
            )
        return job

    async def accepted(self, job: Job) -> None:
        """Return once a job just submitted is on record; answer its client only then.

        The records of a job that `submit` started on a worker are written once the attempt's
        request is on its way: the worker starts on the prompt while the queen writes them.
        """
        if job.state == "running":
            await job.sent.wait()
        self.records.flush()

    def pump(self) -> None:
        """Place waiting jobs, in serving order, until each model's head job has to wait."""
        if self.draining or not len(self.queue):
            return
        with self.records.batch():
            self._pump()

    def _pump(self) -> None:
        blocked: set[str] = set()
        tenants = self.tenants()
        # A hive being upgraded comes back: a job for one of its models that nothing else can
        # take waits for it (for one being stopped, until it has stopped: then it is decided).
        upgrading = self.registry.draining_models()
        for job in self.queue.in_order():
            if job.model in blocked:
                continue
            held = self._held(job)
            if not held and job.model not in upgrading and self._unknown(job.model):
                self.queue.remove(job.id)
                job.failure = ModelNotFoundError(_not_found(job.model) + self._overdue())
                self._finish(job, "failed", error=str(job.failure))
                continue
            decision = self._decide(job, tenants)
            if isinstance(decision, Route):
                worker = self.registry.get(decision.worker_id)
                if (
                    worker is None
                    or worker.stalled
                    or worker.slots_free <= 0
                    or worker.status.model != job.model
                ):
                    self._error("scheduler", f"chose unusable worker {decision.worker_id!r}")
                    blocked.add(job.model)
                    continue
                self._start(job, worker.id, worker.status.url)
            elif isinstance(decision, Queue) or held:
                blocked.add(job.model)
            elif isinstance(decision, Spawn):
                blocked.add(job.model)
                self._spawn(job, decision)
            elif job.model in upgrading:
                blocked.add(job.model)
            else:
                self.queue.remove(job.id)
                self._finish(job, "failed", error=decision.reason + self._overdue())

    def _held(self, job: Job) -> bool:
        """Whether ``job`` waits for hives to report before a spawn or a rejection."""
        now = trio.current_time()
        grace = STALE_INTERVALS * self.config.heartbeat_interval_s
        if job.readmitted and now < self._started_at + grace:
            return True
        return any(now < deadline for deadline, _, _ in self._expected.values())

    def _unknown(self, model: str) -> bool:
        """No worker serves ``model``, no online hive has it and the provisioner cannot bring it."""
        snapshot = self.registry.snapshot()
        if any(w.model == model for w in snapshot.workers):
            return False
        if any(model in h.models for h in snapshot.hives):
            return False
        return self.provisioner is None or not self.provisioner.provides(model)

    def _overdue(self) -> str:
        """What to add to a rejection about the expected hives that never reported."""
        now = trio.current_time()
        return "".join(
            f" (hive {name} did not report within {bound:g} s {since})"
            for name, (deadline, bound, since) in self._expected.items()
            if now >= deadline
        )

    def _decide(self, job: Job, tenants: tuple[TenantView, ...]) -> Decision:
        snapshot = self.registry.snapshot()
        if job.tried:
            others = [w for w in snapshot.workers if w.model == job.model and w.id not in job.tried]
            # A stream is never continued on a worker that broke it off: it is gone or unwell.
            if others or job.emitted_ids:
                snapshot = Snapshot(
                    workers=tuple(w for w in snapshot.workers if w.id not in job.tried),
                    hives=snapshot.hives,
                )
        if tenants:
            snapshot = msgspec.structs.replace(snapshot, tenants=tenants)
        view = job.view()
        policy = self.scheduler.name
        error: str | None = None
        try:
            decision = self.scheduler.schedule(view, snapshot)
        except Exception as err:  # PolicyError, or a bug in a policy: neither may stop the queen
            error = str(err)
            self.last_policy_error = error
            self.metrics.policy_errors.inc(policy=policy)
            self._error(f"policy {policy}", error)
            if self.fallback is None:
                policy = "reject"
                decision = Reject(f"the scheduling policy failed: {error}")
            else:
                policy = self.fallback.name
                decision = self.fallback.schedule(view, snapshot)
        kind, target = kind_target(decision)
        reasons = list(decision.reasons)
        if isinstance(decision, Reject):
            reasons.append(decision.reason)
        self.metrics.decisions.inc(kind=kind, policy=policy)
        # A job waits through many pumps (rejected ones too, while a hive is awaited); its first
        # decision of each kind explains the wait.
        if kind == "route" or kind not in job.logged:
            job.logged.add(kind)
            record = DecisionRecord(
                job_id=job.id,
                at=time.time(),
                policy=policy,
                job=view,
                snapshot=snapshot,
                kind=kind,
                target=target,
                reasons=reasons,
                error=error,
            )
            self.records.add_decision(record)
        return decision

    def _spawn(self, job: Job, decision: Spawn) -> None:
        if self.provisioner is None:
            self.queue.remove(job.id)
            self._finish(
                job,
                "failed",
                error=f"no worker serves model {job.model!r}: start one on a hive "
                f"(this queen has no way to start workers itself)",
            )
            return
        key = (decision.hive, decision.model)
        started = self._spawns.get(key)
        now = trio.current_time()
        if started is None:
            self._spawns[key] = now
            assert self._nursery is not None
            self._nursery.start_soon(self._provision, decision)
        elif now - started > self.config.spawn_timeout_s:
            self.queue.remove(job.id)
            self._finish(
                job,
                "failed",
                error=f"no worker for model {job.model!r} came up on hive {decision.hive} "
                f"within {self.config.spawn_timeout_s:g} s",
            )

    async def _provision(self, decision: Spawn) -> None:
        assert self.provisioner is not None
        try:
            await self.provisioner.spawn(decision.hive, decision.model, decision.device)
        except Exception as err:  # a provisioner's failure fails the jobs, never the queen
            self._spawns.pop((decision.hive, decision.model), None)
            message = f"could not start a worker for {decision.model!r} on {decision.hive}: {err}"
            self._error(f"hive {decision.hive}", message)
            for job in self.queue.in_order():
                if job.model == decision.model:
                    self.queue.remove(job.id)
                    self._finish(job, "failed", error=message)
        else:
            # A provisioner may have put the new worker in the registry already.
            self.pump()

    # --- attempts --------------------------------------------------------------------------

    def _start(self, job: Job, worker_id: str, url: str) -> None:
        self.queue.take(job.id)
        self.registry.acquire(worker_id)
        job.state = "running"
        job.attempts += 1
        job.worker = worker_id
        job.tried.add(worker_id)
        job.interrupted_at = None
        now = time.time()
        fields: dict[str, object] = {"state": "running", "worker": worker_id}
        fields["attempts"] = job.attempts
        if not job.started:
            job.started = True
            wait = trio.current_time() - job.admitted_at
            self.metrics.queue_wait.observe(wait)
            fields.update(started_at=now, queue_wait_ms=wait * 1000)
        self.records.update(job.id, **fields)
        self.records.start_attempt(job.id, job.attempts, worker_id, now)
        self.running[job.id] = job
        if self._idle.is_set():
            self._idle = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._run, job, worker_id, url)

    def _interrupt(self, job: Job, reason: str) -> None:
        """End a running attempt as failed (retried if no token came yet), e.g. its hive is gone."""
        if job.state == "running" and job.scope is not None and not job.stop_reason:
            self._lost[job.id] = reason
            job.scope.cancel()

    def _first_token(self, job: Job) -> None:
        job.first_token_at = trio.current_time()
        self.metrics.ttft.observe(job.first_token_at - job.admitted_at)

    async def _run(self, job: Job, worker_id: str, url: str) -> None:
        assert self._pool is not None
        outcome: Outcome | None = None
        failure: AttemptError | None = None
        with trio.CancelScope() as scope:
            job.scope = scope
            if job.stop_reason:
                scope.cancel()
            try:
                outcome = await run_attempt(
                    self._pool, worker_id, url, job, lambda: self._first_token(job), self._bounds
                )
            except AttemptError as err:
                failure = err
            finally:
                job.sent.set()
            # The client's stream goes out before the records are written.
            await trio.lowlevel.checkpoint()
        job.scope = None
        lost = self._lost.pop(job.id, None)
        if outcome is None and failure is None and lost is not None and not job.stop_reason:
            failure = AttemptError(lost, retryable=job.resumable or job.first_token_at is None)
        self.registry.release(worker_id)
        now = time.time()
        if outcome is None and failure is None:
            await self._stopped(job, url)
        elif outcome is not None:
            self.records.end_attempt(job.id, job.attempts, now, None)
            self._not_running(job)
            self._finish(job, "completed", outcome=outcome)
        elif failure is not None:
            message = str(failure)
            self.records.end_attempt(job.id, job.attempts, now, message)
            self.metrics.attempts_failed.inc(retried=str(failure.retryable).lower())
            self._error(f"worker {worker_id}", message)
            if failure.stalled:
                self._stalled(worker_id, url)
            if job.emitted_ids and job.interrupted_at is None:
                job.interrupted_at, job.interrupted = trio.current_time(), message
            retry = failure.retryable and job.attempts < self.config.max_attempts
            if retry and self.draining:
                self._not_running(job)
                self._back_to_queue_for_restart(job)
            elif retry and not job.stop_reason:
                await self._retry_later(job)
            else:
                self._not_running(job)
                if failure.refusal is not None:
                    job.failure = failure.refusal
                if failure.retryable and job.attempts > 1:
                    message = f"gave up after {job.attempts} attempts; last: {message}"
                self._finish(job, "failed", error=message)
        self.pump()

    async def _stopped(self, job: Job, url: str) -> None:
        """The attempt was cancelled: by a client, or by the shutdown."""
        if job.worker_job_url is not None and self._pool is not None:
            with trio.move_on_after(CANCEL_TIMEOUT_S) as cleanup:
                cleanup.shield = True
                await cancel_on_worker(self._pool, url, job.worker_job_url)
        self.records.end_attempt(job.id, job.attempts, time.time(), job.stop_reason)
        self._not_running(job)
        if job.stop_reason == "shutdown" and job.first_token_at is None:
            self._back_to_queue_for_restart(job)
        elif job.stop_reason == "shutdown":
            self._finish(job, "failed", error="the queen shut down while the job ran")
        else:
            self._finish(job, "cancelled")

    def _unresumed(self, job: Job) -> str:
        return (
            f"the stream broke off after {len(job.emitted_ids)} tokens ({job.interrupted}) and "
            f"no worker for model {job.model!r} took it up within "
            f"{self.config.migrate_timeout_s:g} s"
        )

    def _stalled(self, worker_id: str, url: str) -> None:
        """Take a silent worker out of rotation, and back in once it answers ``/health``."""
        self.registry.stall(worker_id)
        assert self._nursery is not None
        self._nursery.start_soon(self._probe, worker_id, url)

    async def _probe(self, worker_id: str, url: str) -> None:
        assert self._pool is not None
        while (record := self.registry.get(worker_id)) is not None and record.stalled:
            await trio.sleep(self.config.heartbeat_interval_s)
            with trio.move_on_after(PROBE_TIMEOUT_S), contextlib.suppress(*TransportError):
                async with await self._pool.request("GET", url, "/health") as response:
                    await response.body()
                    if response.status == 200:
                        self.registry.unstall(worker_id)
                        self.pump()

    def _back_to_queue_for_restart(self, job: Job) -> None:
        job.state = "queued"
        self.records.update(job.id, state="queued", worker=None)
        job.stream.close(
            sse.error_marker("the queen is shutting down; the job runs when it restarts")
        )

    async def _retry_later(self, job: Job) -> None:
        job.state = "queued"
        job.worker = None
        job.worker_job_url = None
        self.records.update(job.id, state="queued", worker=None)
        backoff = self.config.retry_backoff_s * 2 ** (job.attempts - 1)
        with trio.CancelScope() as scope:
            job.scope = scope
            await trio.sleep(backoff)
        job.scope = None
        self._not_running(job)
        if scope.cancelled_caught:
            if job.stop_reason == "shutdown":
                self._back_to_queue_for_restart(job)
            else:
                self._finish(job, "cancelled")
            return
        self.queue.push(job)

    def _not_running(self, job: Job) -> None:
        self.running.pop(job.id, None)
        if not self.running:
            self._idle.set()
        self._job_ended.set()
        self._job_ended = trio.Event()

    async def drain_hive(self, name: str, grace_s: float) -> int:
        """Route nothing more to hive ``name`` and wait up to ``grace_s`` for the jobs running
        on its workers to end; return how many still run. `end_drain` undoes the first.

        Until then a job for one of the hive's models that no other worker can take and no other
        hive can start one for waits, rather than fails: the hive is being upgraded and comes back.
        """
        self.registry.drain(name)

        def left() -> int:
            return sum(
                1
                for job in self.running.values()
                if job.worker is not None
                and (record := self.registry.get(job.worker)) is not None
                and record.hive == name
            )

        with trio.move_on_after(grace_s):
            while left():
                await self._job_ended.wait()
        return left()

    def end_drain(self, name: str) -> None:
        """Route to hive ``name`` again (it is back, or will not be); decide the waiting jobs."""
        self.registry.drain(name, on=False)
        self.pump()

    # --- ending ----------------------------------------------------------------------------

    def _finish(
        self, job: Job, state: Finished, *, error: str | None = None, outcome: Outcome | None = None
    ) -> None:
        with self.records.batch():
            self._record_end(job, state, error, outcome)

    def _record_end(
        self, job: Job, state: Finished, error: str | None, outcome: Outcome | None
    ) -> None:
        job.state = state
        job.error = error
        if state == "completed":
            job.stream.close(sse.DONE)
        elif state == "cancelled":
            job.stream.close(sse.CANCELLED)
        else:
            job.stream.close(sse.error_marker(error or "failed"))
        ttft_ms = None
        if job.first_token_at is not None:
            ttft_ms = (job.first_token_at - job.admitted_at) * 1000
        fields: dict[str, object] = {
            "state": state,
            "finished_at": time.time(),
            "ttft_ms": ttft_ms,
            "error": error,
        }
        if outcome is not None:
            fields.update(
                tokens_in=outcome.tokens_in,
                tokens_out=outcome.tokens_out,
                finish_reason=outcome.finish_reason,
            )
            self.metrics.tokens.inc(outcome.tokens_out)
        self.records.update(job.id, **fields)
        self.metrics.jobs.inc(state=state)
        if job.on_end is not None:
            job.on_end(None if outcome is None else outcome.tokens_in + outcome.tokens_out)
            job.on_end = None
        job.done.set()
        job.ended_at = trio.current_time()
        self._finished.append(job.id)
        while len(self._finished) > FINISHED_KEPT:
            self.jobs.pop(self._finished.popleft(), None)

    def _forget_old(self) -> None:
        """Drop the finished jobs whose events were kept for ``queen.events_kept_s``."""
        cutoff = trio.current_time() - self.config.events_kept_s
        while self._finished:
            job = self.jobs.get(self._finished[0])
            if job is not None and job.ended_at is not None and job.ended_at > cutoff:
                return
            self.jobs.pop(self._finished.popleft(), None)

    def reader_left(self, job: Job) -> None:
        """A client stopped reading ``job``'s stream before it ended: cancel the job, unless some
        client reads it still, or again within ``queen.reconnect_grace_s``."""
        if job.stream.readers:
            return
        if self.config.reconnect_grace_s <= 0:
            self.cancel(job.id)
        elif self._nursery is not None:
            self._nursery.start_soon(self._cancel_unread, job)

    async def _cancel_unread(self, job: Job) -> None:
        with trio.move_on_after(self.config.reconnect_grace_s):
            await job.done.wait()
        if not job.done.is_set() and not job.stream.readers:
            log.info("stream left unread; job cancelled", extra=kv(job=job.id))
            self.cancel(job.id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a waiting or running job (a no-op for a finished one); None if not held here."""
        job = self.jobs.get(job_id)
        if job is None or job.done.is_set():
            return job
        if self.queue.remove(job_id) is not None:
            self._finish(job, "cancelled")
            return job
        job.stop_reason = job.stop_reason or "cancelled"
        if job.scope is not None:
            job.scope.cancel()
        return job

    # --- hives -----------------------------------------------------------------------------

    def expect_hive(self, name: str, within_s: float, since: str = "of its start") -> None:
        """Hold the jobs no worker can take until hive ``name`` reports, for up to ``within_s``.

        The queen calls it as it starts a hive, so that a job sent before the hive's first
        heartbeat waits for it rather than fails for want of a hive; ``since`` says from when,
        for the rejection of a job that waited in vain.
        """
        self._expected[name] = (trio.current_time() + within_s, within_s, since)

    async def wait_for_hive(self, name: str, *, after: float | None = None) -> None:
        """Return once hive ``name`` is online (at once if it is) and, with ``after``, has
        reported since that time (``trio.current_time``).
        """
        while (
            (record := self.registry.hive(name)) is None
            or not record.online
            or (after is not None and record.seen_at <= after)
        ):
            await self._heard.wait()

    def heartbeat(self, hb: HiveHeartbeat) -> None:
        labels = self.hive_labels.get(hb.hive)
        if labels:
            # Labels given at registration (rbee hive add --label) join those the hive reports.
            hb = msgspec.structs.replace(hb, labels={**hb.labels, **labels})
        came_online, _ = self.registry.heartbeat(hb)
        self._expected.pop(hb.hive, None)
        self._heard.set()
        self._heard = trio.Event()
        if came_online:
            capabilities = {
                "host": wire.to_builtins(hb.host),
                "labels": hb.labels,
                "models": hb.models,
            }
            self.hive_records.seen(hb.hive, hb.url, capabilities, time.time())
        if self._spawns:
            served = {w.status.model for w in self.registry.workers()}
            for key in [k for k in self._spawns if k[1] in served]:
                del self._spawns[key]
        self.pump()

    def worker_exited(self, exited: WorkerExited) -> None:
        record = self.registry.remove_worker(exited.worker_id)
        tail = " | ".join(exited.log_tail[-3:])
        message = f"exited with code {exited.exit_code} on hive {exited.hive}" + (
            f": {tail}" if tail else ""
        )
        self._error(f"worker {exited.worker_id}", message)
        spawning = self._spawns.pop((exited.hive, exited.model), None) is not None
        starting = record is None or record.status.state == "loading"
        if (spawning or starting) and not self.registry.by_model(exited.model):
            # It died while loading: spawning it again would most likely fail the same way, so
            # the jobs that waited for it fail now with its last words, not at the spawn timeout.
            for job in self.queue.in_order():
                if job.model == exited.model:
                    self.queue.remove(job.id)
                    self._finish(
                        job,
                        "failed",
                        error=f"could not start a worker for {exited.model!r} on "
                        f"{exited.hive}: worker {exited.worker_id} {message}",
                    )
        self.pump()

    # --- reporting -------------------------------------------------------------------------

    def _error(self, what: str, message: str) -> None:
        self.recent_errors.append(RecentError(at=time.time(), what=what, message=message))
        log.warning(message, extra=kv(source=what))

    def status(self) -> QueenStatus:
        return QueenStatus(
            version=__version__,
            policy=self.scheduler.name,
            draining=self.draining,
            queue_depth=len(self.queue),
            running=sum(1 for j in self.running.values() if j.state == "running"),
            workers=self.registry.worker_entries(),
            hives=self.registry.hive_entries(),
            recent_errors=list(self.recent_errors),
            last_policy_error=self.last_policy_error,
            policy_file=self.scheduler.status() if isinstance(self.scheduler, Watched) else None,
        )

    def gauges(self) -> dict[str, tuple[str, dict[Labels, float]]]:
        """The metrics read from state at scrape time."""
        depth: dict[Labels, float] = {
            (("priority", "interactive"),): 0,
            (("priority", "batch"),): 0,
        }
        for job in self.queue.in_order():
            key: Labels = (("priority", job.request.priority),)
            depth[key] += 1
        workers: dict[Labels, float] = {}
        for w in self.registry.workers():
            key = (("state", w.status.state),)
            workers[key] = workers.get(key, 0) + 1
        hives: dict[Labels, float] = {}
        for h in self.registry.hives():
            key = (("status", "online" if h.online else "offline"),)
            hives[key] = hives.get(key, 0) + 1
        return {
            "rbee_queue_depth": ("Jobs waiting for a slot.", depth),
            "rbee_jobs_running": ("Jobs running on a worker.", {(): float(len(self.running))}),
            "rbee_workers": ("Workers in the registry, by state.", workers),
            "rbee_hives": ("Hives heard from, by status.", hives),
        }


def _not_found(model: str) -> str:
    return (
        f"no worker serves model {model!r}, no hive has it and the queen's store lacks it: "
        f"import it on the queen's host ('rbee model import FILE.gguf --name {model}')"
    )
