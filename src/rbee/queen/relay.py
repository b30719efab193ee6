"""One attempt of a job on one worker: start it there and relay its stream into the job's buffer.

The worker's event payloads are pushed on as they arrived (bytes, not re-encoded); each is decoded
once to tell a token from the final event and to keep the token ids it names (`Job.emitted_ids`).
A later attempt resumes from those ids (`rbee.wire.worker.Resume`), so a stream that a worker
broke off continues on another one, and its client sees no seam: the second worker's started
event is not passed on, its tokens carry on the first one's text and numbering.

A failure is an `AttemptError` that says whether the job may continue elsewhere: when the worker
failed (connection refused, 5xx or 429, a dropped, failed or malformed stream, silence), unless a
token already went out without its ids. Silence is bounded (`StallBounds`): a worker that says
nothing for too long is taken as stalled (``AttemptError.stalled``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import msgspec
import trio

from rbee import sse, wire
from rbee.errors import ApiError, RbeeError
from rbee.queen.http11 import Pool, TransportError
from rbee.queen.jobs import Job
from rbee.wire import worker as wire_worker

__all__ = ["AttemptError", "Outcome", "StallBounds", "cancel_on_worker", "run_attempt"]

_events = wire_worker.stream_event_decoder()
_DONE = sse.DONE.encode()
_CANCELLED = sse.CANCELLED.encode()
_ERROR = sse.ERROR_PREFIX.encode()


class AttemptError(Exception):
    """The attempt failed; ``retryable`` when the job may run (or continue) elsewhere.

    ``stalled``: the worker went silent, rather than failing or going away. ``refusal``: the
    worker refused the request itself (a 4xx), as the error its client should get.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        stalled: bool = False,
        refusal: RbeeError | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.stalled = stalled
        self.refusal = refusal


@dataclasses.dataclass(frozen=True)
class StallBounds:
    """How long a worker may say nothing: ``first_s`` until an attempt's first token, then
    ``steps`` of the step time its started event gave, but never less than ``floor_s``."""

    first_s: float
    steps: float
    floor_s: float

    def between(self, step_ms: float) -> float:
        return max(self.floor_s, self.steps * step_ms / 1000)


@dataclasses.dataclass
class Outcome:
    finish_reason: str
    tokens_in: int
    tokens_out: int


_error_body = msgspec.json.Decoder(wire.ErrorBody)


def _error_detail(status: int, body: bytes) -> wire.ErrorDetail:
    try:
        return _error_body.decode(body).error
    except (msgspec.DecodeError, UnicodeDecodeError):
        return wire.ErrorDetail(message=f"HTTP {status}")


class _Relay:
    """Pushes one attempt's events into the job; knows whether a token went out yet."""

    def __init__(self, job: Job, where: str, on_first_token: Callable[[], None]) -> None:
        self.job = job
        self.where = where
        self.on_first_token = on_first_token
        self.tokens = 0
        self.step_ms = 0.0
        self.outcome: Outcome | None = None

    def fail(self, message: str, *, stalled: bool = False) -> AttemptError:
        resumable = self.job.resumable or self.job.first_token_at is None
        return AttemptError(message, retryable=resumable, stalled=stalled)

    def line(self, line: bytes) -> bool:
        """Handle one line of the worker's stream; True once it ended well."""
        if not line.startswith(b"data:"):
            return False
        payload = line[5:].removeprefix(b" ")
        if payload == _DONE:
            if self.outcome is None:
                raise self.fail(f"{self.where} ended the stream without a final event")
            return True
        if payload == _CANCELLED:
            raise self.fail(f"{self.where} cancelled the generation")
        if payload.startswith(_ERROR):
            message = payload[len(_ERROR) :].decode(errors="replace").strip()
            raise self.fail(f"{self.where} failed: {message}")
        event = _events.decode(payload)
        if isinstance(event, wire_worker.Token):
            if self.job.first_token_at is None:
                self.on_first_token()
            self.tokens += 1
            self.job.resumable = self.job.resumable and bool(event.ids)
            self.job.emitted_ids += event.ids
            self.job.stream.push(payload)
        elif isinstance(event, wire_worker.Finished):
            usage = event.usage
            self.outcome = Outcome(
                event.finish_reason, usage.prompt_tokens, usage.completion_tokens
            )
            self.job.stream.push(payload)
        else:
            self.step_ms = event.step_ms
            if not self.job.started_sent:
                self.job.started_sent = True
                self.job.stream.push(payload)
        return False

    def timeout(self, bounds: StallBounds) -> float:
        return bounds.first_s if self.tokens == 0 else bounds.between(self.step_ms)


def worker_body(job: Job) -> bytes | None:
    """What to post to the next worker: the job's request, or its resumption where tokens went
    out already; None when no token is left to generate."""
    if not job.emitted_ids:
        return job.worker_body
    request = job.request.to_worker()
    left = request.max_tokens - len(job.emitted_ids)
    if left <= 0:
        return None
    resume = wire_worker.Resume(emitted_ids=job.emitted_ids)
    return wire.encode(msgspec.structs.replace(request, max_tokens=left, resume=resume))


def _length_outcome(job: Job) -> Outcome:
    """The end of a job whose worker broke off after its last token (before its final event)."""
    n = len(job.emitted_ids)
    usage = wire_worker.Usage(prompt_tokens=0, completion_tokens=n, total_tokens=n)
    timings = wire_worker.Timings(0.0, 0.0, 0.0, 0.0, 0.0)
    finished = wire_worker.Finished(finish_reason="length", usage=usage, timings=timings)
    job.stream.push(wire.encode(finished))
    return Outcome("length", 0, n)


async def run_attempt(
    pool: Pool,
    worker_id: str,
    url: str,
    job: Job,
    on_first_token: Callable[[], None],
    bounds: StallBounds,
) -> Outcome:
    """Run ``job`` on the worker at ``url`` until its stream ends; raise `AttemptError` if it fails.

    One call: the worker answers the ``POST`` with the stream. ``job.worker_job_url`` is set as
    soon as the worker accepted, so that a cancel can reach it.
    """
    where = f"worker {worker_id} ({url})"
    relay = _Relay(job, where, on_first_token)
    body = worker_body(job)
    if body is None:
        job.sent.set()
        return _length_outcome(job)
    pending = b""
    silent = f"{where} stalled: it sent nothing for {bounds.first_s:g} s"
    try:
        with trio.move_on_after(bounds.first_s) as waiting:
            response = await pool.request(
                "POST", url, "/v1/inference", body, "text/event-stream", job.sent.set
            )
    except TransportError as err:
        raise AttemptError(f"cannot reach {where}: {err!r}", retryable=True) from None
    if waiting.cancelled_caught:
        raise relay.fail(silent, stalled=True)
    try:
        async with response:
            if response.status != 200:
                raise _refused(where, response.status, await response.body())
            job_id = response.headers.get(sse.JOB_ID_HEADER.lower().encode())
            if job_id is None:
                raise relay.fail(f"{where} answered a stream without its job id")
            job.worker_job_url = f"/v1/inference/{job_id.decode()}"
            # One watchdog whose deadline each read moves on: a cancel scope a read would cost
            # the queen more than the relaying itself for short jobs.
            with trio.CancelScope() as watchdog:
                while True:
                    timeout = relay.timeout(bounds)
                    watchdog.deadline = trio.current_time() + timeout
                    chunk = await response.read()
                    if chunk is None:
                        break
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        if relay.line(line.rstrip(b"\r")):
                            assert relay.outcome is not None
                            # Read the (empty) rest, so that the connection goes back to the pool.
                            watchdog.deadline = math.inf
                            while await response.read() is not None:
                                pass
                            return relay.outcome
            if watchdog.cancelled_caught:
                raise relay.fail(
                    f"{where} stalled: it sent nothing for {timeout:g} s", stalled=True
                )
    except (*TransportError, msgspec.DecodeError) as err:
        raise relay.fail(f"the stream from {where} broke: {err!r}") from None
    except UnicodeDecodeError:
        raise relay.fail(f"the stream from {where} broke: it is not UTF-8") from None
    raise relay.fail(f"{where} dropped the stream")


def _refused(where: str, status: int, body: bytes) -> AttemptError:
    detail = _error_detail(status, body)
    if status == 429 or status >= 500:
        return AttemptError(f"{where} answered {status}: {detail.message}", retryable=True)
    refusal = ApiError(detail.message, status, error_type=detail.type, code=detail.code)
    refusal.param = detail.param
    return AttemptError(
        f"{where} refused the job: {detail.message}", retryable=False, refusal=refusal
    )


async def cancel_on_worker(pool: Pool, url: str, worker_job_path: str) -> None:
    """Ask the worker to stop a generation; a worker that is gone has nothing left to stop."""
    with contextlib.suppress(*TransportError):
        async with await pool.request("DELETE", url, worker_job_path) as response:
            await response.body()
