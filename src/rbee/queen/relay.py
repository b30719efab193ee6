"""One attempt of a job on one worker: start it there and relay its stream into the job's buffer.

The worker's event payloads are pushed on as they arrived (bytes, not re-encoded); each is decoded
once only to tell a token from the final event, for the job's record. A failure is an
`AttemptError` that says whether the job may be retried elsewhere: only when the worker failed
before the first token (connection refused, 5xx or 429, a dropped or failed stream).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import msgspec

from rbee import sse
from rbee.queen.http11 import Pool, TransportError
from rbee.queen.jobs import Job
from rbee.wire import worker as wire_worker

__all__ = ["AttemptError", "Outcome", "cancel_on_worker", "run_attempt"]

_events = wire_worker.stream_event_decoder()
_DONE = sse.DONE.encode()
_CANCELLED = sse.CANCELLED.encode()
_ERROR = sse.ERROR_PREFIX.encode()


class AttemptError(Exception):
    """The attempt failed; ``retryable`` when no token reached the client yet."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclasses.dataclass
class Outcome:
    finish_reason: str
    tokens_in: int
    tokens_out: int


def _error_message(status: int, body: bytes) -> str:
    try:
        return str(msgspec.json.decode(body)["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return f"HTTP {status}"


class _Relay:
    """Pushes one attempt's events into the job; knows whether a token went out yet."""

    def __init__(self, job: Job, where: str, on_first_token: Callable[[], None]) -> None:
        self.job = job
        self.where = where
        self.on_first_token = on_first_token
        self.tokens = 0
        self.outcome: Outcome | None = None

    def fail(self, message: str) -> AttemptError:
        return AttemptError(message, retryable=self.tokens == 0)

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
            if self.tokens == 0:
                self.on_first_token()
            self.tokens += 1
            self.job.stream.push(payload)
        elif isinstance(event, wire_worker.Finished):
            usage = event.usage
            self.outcome = Outcome(
                event.finish_reason, usage.prompt_tokens, usage.completion_tokens
            )
            self.job.stream.push(payload)
        elif not self.job.started_sent:
            self.job.started_sent = True
            self.job.stream.push(payload)
        return False


async def run_attempt(
    pool: Pool,
    worker_id: str,
    url: str,
    job: Job,
    on_first_token: Callable[[], None],
) -> Outcome:
    """Run ``job`` on the worker at ``url`` until its stream ends; raise `AttemptError` if it fails.

    One call: the worker answers the ``POST`` with the stream. ``job.worker_job_url`` is set as
    soon as the worker accepted, so that a cancel can reach it.
    """
    where = f"worker {worker_id} ({url})"
    relay = _Relay(job, where, on_first_token)
    pending = b""
    try:
        response = await pool.request(
            "POST", url, "/v1/inference", job.worker_body, "text/event-stream", job.sent.set
        )
    except TransportError as err:
        raise AttemptError(f"cannot reach {where}: {err!r}", retryable=True) from None
    try:
        async with response:
            if response.status != 200:
                raise _refused(where, response.status, await response.body())
            job_id = response.headers.get(sse.JOB_ID_HEADER.lower().encode())
            if job_id is None:
                raise relay.fail(f"{where} answered a stream without its job id")
            job.worker_job_url = f"/v1/inference/{job_id.decode()}"
            while (chunk := await response.read()) is not None:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if relay.line(line.rstrip(b"\r")):
                        assert relay.outcome is not None
                        # Read the (empty) rest, so that the connection goes back to the pool.
                        while await response.read() is not None:
                            pass
                        return relay.outcome
    except (*TransportError, msgspec.DecodeError) as err:
        raise relay.fail(f"the stream from {where} broke: {err!r}") from None
    raise relay.fail(f"{where} dropped the stream")


def _refused(where: str, status: int, body: bytes) -> AttemptError:
    message = _error_message(status, body)
    if status == 429 or status >= 500:
        return AttemptError(f"{where} answered {status}: {message}", retryable=True)
    return AttemptError(f"{where} refused the job: {message}", retryable=False)


async def cancel_on_worker(pool: Pool, url: str, worker_job_path: str) -> None:
    """Ask the worker to stop a generation; a worker that is gone has nothing left to stop."""
    with contextlib.suppress(*TransportError):
        async with await pool.request("DELETE", url, worker_job_path) as response:
            await response.body()
