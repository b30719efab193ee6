"""The queen's HTTP API: hive heartbeats, the jobs API, keys, status, decisions, metrics, health.

The OpenAI-compatible routes are added by `rbee.queen.openai_api`. Every body is validated by its
wire type (a bad one is a 400 naming the field); unknown jobs are 404. Every request passes the
`Gate` first (`rbee.queen.auth`: who the caller is, which routes it may call); the caller is
`rbee.queen.auth.caller` inside a route.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from rbee import sse, wire
from rbee.errors import ForbiddenError, NotFoundError, UsageError
from rbee.queen import openai_api, openapi
from rbee.queen.auth import (
    SESSION_COOKIE,
    Gate,
    bearer,
    caller,
    credential,
    cross_site,
    route_class,
)
from rbee.queen.dispatcher import CANCEL_TIMEOUT_S, Dispatcher
from rbee.queen.jobs import Job
from rbee.queen.keys import KeyStore
from rbee.server import create_app, error_response, json_response
from rbee.wire.queen import (
    DecisionList,
    HiveHeartbeat,
    JobAccepted,
    JobInfo,
    JobList,
    JobRequest,
    JobState,
    KeyCreate,
    KeyCreated,
    KeyList,
    WorkerExited,
)
from rbee.wire.worker import Health

__all__ = ["build_app", "follow_job", "last_event_id"]

_STATES: tuple[JobState, ...] = ("queued", "running", "completed", "failed", "cancelled")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"invalid query parameter {name!r}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise UsageError(f"invalid query parameter {name!r}: must be {low}..{high}")
    return value


def last_event_id(job: Job, header: str | None) -> int:
    """How many of the job's events a reconnecting client has (its ``Last-Event-ID``); 0 without.

    `UsageError` for an id that is no number, or one the job never sent. A job interrupted by a
    queen restart lost its events: any client of it gets the end, with its reason.
    """
    if header is None or not header.strip() or job.stream.restored:
        return 0
    value = header.strip()
    if not value.isdigit() or int(value) > len(job.stream):
        raise UsageError(
            f"invalid Last-Event-ID header: {value!r} is not an event id of job {job.id} "
            f"(it has sent {len(job.stream)} events, numbered from 1)"
        )
    return int(value)


async def follow_job(
    dispatcher: Dispatcher, job: Job, after: int = 0
) -> AsyncGenerator[bytes, None]:
    """The job's stream as SSE bytes, past its first ``after`` events.

    A client that goes away before the job ends cancels it, unless it (or another) reconnects
    within ``queen.reconnect_grace_s`` (`Dispatcher.reader_left`).
    """
    try:
        async with contextlib.aclosing(job.stream.follow(after)) as each:
            async for frame in each:
                yield frame
    finally:
        if not job.done.is_set():
            dispatcher.reader_left(job)


def _stream_response(dispatcher: Dispatcher, job: Job, after: int = 0) -> Response:
    return Response(
        follow_job(dispatcher, job, after),
        headers={**sse.SSE_HEADERS, sse.JOB_ID_HEADER: job.id},
    )


def build_app(dispatcher: Dispatcher, gate: Gate) -> QuartTrio:
    """The queen's app around ``dispatcher``, its callers checked by ``gate``."""
    app = create_app("rbee-queen")
    # Made at the first request, once every route (the cluster's and the SSH hives') is added.
    described: list[bytes] = []

    @app.before_request
    async def _check_caller() -> None:
        authorization = request.headers.get("Authorization", "")
        headers = request.headers
        if cross_site(
            request.method,
            authorization,
            headers.get("Sec-Fetch-Site"),
            headers.get("Origin"),
            headers.get("Host"),
        ):
            raise ForbiddenError(
                "cross-site request refused: send it from the queen's page", "cross_site"
            )
        route = route_class(request.method, request.path)
        if route == "open":
            return
        authorization = credential(authorization, request.cookies.get(SESSION_COOKIE))
        who = gate.identify(authorization, request.remote_addr)
        gate.allow(who, route)
        g.caller = who

    _key_routes(app, gate.keys)

    @app.get("/health")
    async def health() -> Response:
        return json_response(Health(status="ready"))

    @app.post("/v1/heartbeat")
    async def heartbeat() -> Response:
        hb = wire.decode(await request.get_data(), HiveHeartbeat)
        gate.check_hive(caller(), hb.hive)
        gate.credentials.heard(hb, bearer(request.headers.get("Authorization", "")))
        dispatcher.heartbeat(hb)
        return Response(b"", status=204)

    @app.post("/v1/workers/<worker_id>/exited")
    async def worker_exited(worker_id: str) -> Response:
        exited = wire.decode(await request.get_data(), WorkerExited)
        if exited.worker_id != worker_id:
            raise UsageError(
                f"invalid request body: worker_id {exited.worker_id!r} is not {worker_id!r} "
                "from the path - at `$.worker_id`"
            )
        gate.check_hive(caller(), exited.hive)
        dispatcher.worker_exited(exited)
        return Response(b"", status=204)

    @app.post("/v1/jobs")
    async def submit() -> Response:
        job_request = wire.decode(await request.get_data(), JobRequest)
        await dispatcher.prompts.check(job_request)
        job = gate.submit(dispatcher, caller(), job_request)
        await dispatcher.accepted(job)
        if sse.wants_stream(request.headers.get("Accept")):
            return _stream_response(dispatcher, job)
        return json_response(JobAccepted(job.id, f"/v1/jobs/{job.id}/stream"), status=202)

    @app.get("/v1/jobs")
    async def list_jobs() -> Response:
        state = request.args.get("state")
        if state is not None and state not in _STATES:
            raise UsageError(
                f"invalid query parameter 'state': {state!r} (one of {', '.join(_STATES)})"
            )
        limit = _int_arg("limit", 100, 1, 10_000)
        who = caller()
        tenant = None if who.key is None else who.tenant
        return json_response(JobList(dispatcher.records.recent(state, limit, tenant)))

    def record(job_id: str) -> JobInfo:
        """A job's record; a key's caller sees only its own tenant's jobs."""
        info = dispatcher.records.get(job_id)
        who = caller()
        if info is None or (who.key is not None and info.tenant != who.tenant):
            raise NotFoundError(f"no job {job_id}")
        return info

    @app.get("/v1/jobs/<job_id>")
    async def get_job(job_id: str) -> Response:
        return json_response(record(job_id))

    @app.get("/v1/jobs/<job_id>/stream")
    async def stream_job(job_id: str) -> Response:
        record(job_id)
        job = dispatcher.jobs.get(job_id)
        if job is None:
            return error_response(
                f"job {job_id} ended long ago and its stream is no longer held: "
                f"GET /v1/jobs/{job_id} has its record",
                410,
            )
        after = last_event_id(job, request.headers.get("Last-Event-ID"))
        return _stream_response(dispatcher, job, after)

    @app.delete("/v1/jobs/<job_id>")
    async def cancel_job(job_id: str) -> Response:
        record(job_id)
        job = dispatcher.cancel(job_id)
        if job is not None:
            with trio.move_on_after(CANCEL_TIMEOUT_S + 1):
                await job.done.wait()
        return json_response(record(job_id))

    @app.get("/v1/decisions")
    async def decisions() -> Response:
        last = _int_arg("last", 20, 1, 10_000)
        job_id = request.args.get("job_id")
        return json_response(DecisionList(dispatcher.records.decisions(last, job_id)))

    @app.get("/v1/status")
    async def status() -> Response:
        return json_response(dispatcher.status())

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        if not described:
            described.append(wire.encode(openapi.document(app)))
        return Response(described[0], mimetype="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        text = dispatcher.metrics.render(dispatcher.gauges)
        return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")

    openai_api.add_routes(app, dispatcher, gate)
    return app


def _key_routes(app: QuartTrio, keys: KeyStore) -> None:
    """``/v1/keys``: create, list and revoke API keys (admin only, as `route_class` says)."""

    @app.post("/v1/keys")
    async def create_key() -> Response:
        key, record = keys.create(wire.decode(await request.get_data(), KeyCreate))
        return json_response(KeyCreated(key=key, info=record.info()), status=201)

    @app.get("/v1/keys")
    async def list_keys() -> Response:
        return json_response(KeyList([r.info() for r in keys.all()]))

    @app.delete("/v1/keys/<name>")
    async def revoke_key(name: str) -> Response:
        return json_response(keys.revoke(wire.check_name(name, "name")).info())
