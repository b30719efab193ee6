"""The worker's HTTP API (see `rbee.wire.worker`): the dual call or one call, cancel, health, info.

The app exists before the model is loaded: ``/health`` says ``loading`` and inference answers 503
until `WorkerState.ready` is called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator

import trio
from quart import Response, request
from quart_trio import QuartTrio

from rbee import __version__, server, sse, wire
from rbee.errors import ApiError, UsageError
from rbee.openapi import add_route as add_openapi_route
from rbee.wire.worker import (
    Health,
    InferenceAccepted,
    InferenceRequest,
    WorkerInfo,
    prompt_chars,
)
from rbee.worker import openapi as routes
from rbee.worker.interfaces import TokenizerLike
from rbee.worker.prompt import prompt_ids
from rbee.worker.scheduler import Ended, Job, Scheduler

__all__ = ["WorkerState", "create_worker_app"]

CANCEL_WAIT_S = 30.0
# A short prompt is encoded in less time than handing it to a thread takes (about 0.5 ms here); a
# long one would hold up the event loop, and every stream's tokens with it.
INLINE_PROMPT_CHARS = 1024


@dataclasses.dataclass
class WorkerState:
    """What the routes read: the model's identity, and once loaded, its scheduler."""

    model: str
    precision: str
    device: str
    slots: int
    provider: str = ""
    context_length: int = 0
    scheduler: Scheduler | None = None
    tokenizer: TokenizerLike | None = None

    def ready(self, scheduler: Scheduler, tokenizer: TokenizerLike, provider: str) -> None:
        self.scheduler, self.tokenizer, self.provider = scheduler, tokenizer, provider
        self.context_length = scheduler.engine.context_length

    def loaded(self) -> tuple[Scheduler, TokenizerLike]:
        if self.scheduler is None or self.tokenizer is None:
            raise ApiError(f"worker is still loading model {self.model}; retry shortly", 503)
        return self.scheduler, self.tokenizer

    def info(self) -> WorkerInfo:
        scheduler = self.scheduler
        return WorkerInfo(
            model=self.model,
            precision=self.precision,
            provider=self.provider,
            device=self.device,
            context_length=self.context_length,
            slots_total=self.slots,
            slots_free=scheduler.slots_free if scheduler else 0,
            queue_depth=scheduler.queue_depth if scheduler else 0,
            pid=os.getpid(),
            version=__version__,
        )


def _stream_payload(item: object) -> str:
    if isinstance(item, Ended):
        if item.how == "done":
            return sse.DONE
        if item.how == "cancelled":
            return sse.CANCELLED
        return sse.error_marker(item.message)
    return wire.encode(item).decode()


def create_worker_app(state: WorkerState, token: str = "") -> QuartTrio:
    """The routes of one worker, reading ``state`` on every request."""
    app = server.create_app("rbee-worker", token)
    add_openapi_route(app, routes.ROUTES, "rbee worker")

    @app.get("/health")
    async def health() -> Response:
        return server.json_response(Health("ready" if state.scheduler else "loading"))

    @app.get("/v1/info")
    async def info() -> Response:
        return server.json_response(state.info())

    @app.post("/v1/inference")
    async def start() -> Response:
        body = wire.decode(await request.get_data(), InferenceRequest)
        if body.model is not None and body.model != state.model:
            raise UsageError(
                f"invalid request body: this worker serves model {state.model!r}, not {body.model!r}"
            )
        scheduler, tokenizer = state.loaded()
        if prompt_chars(body.prompt, body.messages) <= INLINE_PROMPT_CHARS:
            ids = prompt_ids(tokenizer, body, state.context_length)
        else:
            ids = await trio.to_thread.run_sync(prompt_ids, tokenizer, body, state.context_length)
        resumed = 0
        if body.resume is not None:
            resumed = len(body.resume.emitted_ids)
            _check_ids(body.resume.emitted_ids, scheduler.engine.vocab_size)
        job = scheduler.submit(ids, body.sampling(), resumed)
        if sse.wants_stream(request.headers.get("Accept")):
            return _stream_response(scheduler, job)
        accepted = InferenceAccepted(job_id=job.id, sse_url=f"/v1/inference/{job.id}/stream")
        return server.json_response(accepted, status=202)

    @app.get("/v1/inference/<job_id>/stream")
    async def stream(job_id: str) -> Response:
        scheduler, _ = state.loaded()
        return _stream_response(scheduler, scheduler.get(job_id))

    @app.delete("/v1/inference/<job_id>")
    async def cancel(job_id: str) -> Response:
        scheduler, _ = state.loaded()
        job = scheduler.get(job_id)
        scheduler.cancel(job)
        # Answer once the slot is free again, so that a caller can rely on it.
        with trio.move_on_after(CANCEL_WAIT_S):
            await job.released.wait()
        if not job.opened:
            scheduler.forget(job)
        return Response(b"", status=204)

    return app


def _check_ids(ids: list[int], vocab_size: int) -> None:
    """Refuse token ids that the model does not have (400, naming the first such)."""
    bad = next((i for i in ids if i >= vocab_size), None)
    if bad is not None:
        raise UsageError(
            f"invalid request body: token id {bad} is not in the model's vocabulary of "
            f"{vocab_size} - at `$.resume.emitted_ids`"
        )


def _stream_response(scheduler: Scheduler, job: Job) -> Response:
    scheduler.open(job.id)
    headers = {**sse.SSE_HEADERS, sse.JOB_ID_HEADER: job.id}
    response = Response(_events(scheduler, job), headers=headers)
    response.timeout = None
    return response


async def _events(scheduler: Scheduler, job: Job) -> AsyncIterator[bytes]:
    """The SSE body; a reader that goes away cancels the job (the ``finally``).

    The events a step produced together (``started`` and the first token, say) go out in one
    write: one wake-up for the reader instead of one per event.
    """
    try:
        async for item in job.receive:
            events = [sse.event(_stream_payload(item))]
            while not isinstance(item, Ended):
                try:
                    item = job.receive.receive_nowait()
                except trio.WouldBlock:
                    break
                events.append(sse.event(_stream_payload(item)))
            yield b"".join(events)
            if isinstance(item, Ended):
                return
    finally:
        scheduler.forget(job)
