"""The queen's web page: its files under ``/ui``, its session cookie and the routes only it uses.

The page (``rbee/queen/web/``: HTML, one stylesheet, plain ES modules; nothing fetched from any
other host) calls the queen's own API with the session cookie that ``POST /ui/login`` sets from a
key, an admin token or the cluster secret (`rbee.queen.auth`); a keyless loopback caller of a
home-mode queen needs none. The routes here (`rbee.wire.ui`): the session, the live overview as
SSE, a worker's log, a GGUF import on a hive, and the policy editor's check, preview, replay
and apply (`rbee.queen.drafts`).
"""

from __future__ import annotations

import importlib.resources
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import trio
from quart import Response, request
from quart_trio import QuartTrio

from rbee import sse, wire
from rbee.decisions import Scheduler
from rbee.errors import AuthError, ForbiddenError, NotFoundError, UsageError
from rbee.policy import PolicyHost
from rbee.queen import drafts
from rbee.queen.auth import SESSION_COOKIE, Gate, credential
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.provision import Hives
from rbee.queen.scheduler import BUILTIN_POLICIES, builtin
from rbee.server import json_response
from rbee.wire.queen import JobInfo
from rbee.wire.ui import (
    ModelImport,
    Overview,
    PolicyCompiled,
    PolicyDraft,
    PolicyPreviewRequest,
    PolicyReplayRequest,
    PolicySource,
    UiLogin,
    UiSession,
)

__all__ = ["OVERVIEW_INTERVAL_S", "RATE_WINDOW_S", "add_routes", "tokens_per_s"]

OVERVIEW_INTERVAL_S = 1.0
# Tokens per second are those of the jobs that ended within this window.
RATE_WINDOW_S = 10.0

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# Everything the page loads comes from the queen; it may be framed by no one.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, bytes]:
    """The page's files by name, read once from the package."""
    root = importlib.resources.files("rbee.queen") / "web"
    return {
        item.name: item.read_bytes()
        for item in root.iterdir()
        if item.is_file() and Path(item.name).suffix in _TYPES
    }


def tokens_per_s(
    jobs: list[JobInfo], now: float, window_s: float = RATE_WINDOW_S
) -> dict[str, float]:
    """Each worker's output tokens per second over the jobs that ended in the last ``window_s``."""
    rates: dict[str, float] = {}
    for job in jobs:
        if job.worker is None or job.finished_at is None or now - job.finished_at > window_s:
            continue
        rates[job.worker] = rates.get(job.worker, 0.0) + (job.tokens_out or 0) / window_s
    return rates


def add_routes(
    app: QuartTrio,
    dispatcher: Dispatcher,
    gate: Gate,
    hives: Hives,
    *,
    platform: bool,
    locked: bool,
    applied_path: Path,
    on_policy: Callable[[PolicyHost], None],
) -> None:
    """Add the page and its routes to the queen's ``app``.

    ``platform`` is the queen's mode, ``locked`` whether its policy may change from the API;
    ``applied_path`` is where an applied draft goes when the queen runs a built-in policy;
    ``on_policy`` is told of the policy host that schedules from then on.
    """
    files = _files()
    _page_routes(app, files, gate, platform)
    _policy_routes(app, dispatcher, locked, applied_path, on_policy)

    @app.get("/v1/ui/events")
    async def overview_events() -> Response:
        return Response(_overview(dispatcher), headers=sse.SSE_HEADERS)

    @app.post("/v1/hives/<name>/models/import")
    async def import_model(name: str) -> Response:
        wire.check_name(name, "name")
        req = wire.decode(await request.get_data(), ModelImport)
        if not req.path.endswith(".gguf") or not req.path.startswith("/"):
            raise UsageError(
                f"invalid request body: {req.path!r} is not the absolute path of a .gguf file "
                "- at `$.path`"
            )
        pulled = await sse.started(hives.client(name, long=True).pull(req.name, req.path))
        return Response(sse.encoded(pulled), headers=sse.SSE_HEADERS)

    @app.get("/v1/workers/<worker_id>/log")
    async def worker_log(worker_id: str) -> Response:
        hive = hives.worker_hive(worker_id)
        return json_response(await hives.client(hive).worker_log(worker_id))


def _page_routes(app: QuartTrio, files: dict[str, bytes], gate: Gate, platform: bool) -> None:
    def page_file(name: str) -> Response:
        body = files.get(name)
        if body is None:
            raise NotFoundError(f"no file {name!r} in the queen's page")
        content_type = _TYPES[Path(name).suffix]
        return Response(body, content_type=content_type, headers=_HEADERS)

    @app.get("/ui")
    async def index() -> Response:
        return page_file("index.html")

    @app.get("/ui/<name>")
    async def asset(name: str) -> Response:
        return page_file(name)

    @app.post("/ui/login")
    async def login() -> Response:
        key = wire.decode(await request.get_data(), UiLogin).key
        # No loopback fallback here: a key that is nobody is refused even on loopback.
        who = gate.identify(f"Bearer {key}", None)
        if who.kind == "hive":
            raise ForbiddenError("a hive's token may not open the page", "admin_only")
        response = json_response(UiSession(kind=who.kind, tenant=who.tenant, platform=platform))
        response.set_cookie(
            SESSION_COOKIE,
            key,
            httponly=True,
            samesite="Strict",
            secure=request.scheme == "https",
            path="/",
        )
        return response

    @app.post("/ui/logout")
    async def logout() -> Response:
        response = Response(b"", status=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    @app.get("/ui/session")
    async def session() -> Response:
        """Who the page speaks as (kind ``none`` before it signs in): a 401 would be an error
        in the browser's console on every first visit."""
        authorization = credential(
            request.headers.get("Authorization", ""), request.cookies.get(SESSION_COOKIE)
        )
        try:
            who = gate.identify(authorization, request.remote_addr)
        except AuthError:
            return json_response(UiSession(kind="none", tenant="", platform=platform))
        return json_response(UiSession(kind=who.kind, tenant=who.tenant, platform=platform))


async def _overview(dispatcher: Dispatcher) -> AsyncGenerator[bytes, None]:
    """One `Overview` a second until the page goes away."""
    while True:
        now = time.time()
        jobs = dispatcher.records.recent("completed", 500)
        overview = Overview(
            at=now, status=dispatcher.status(), tokens_per_s=tokens_per_s(jobs, now)
        )
        yield sse.event(wire.encode(overview))
        await trio.sleep(OVERVIEW_INTERVAL_S)


def _running(dispatcher: Dispatcher) -> Scheduler:
    """The running policy to preview with: a fresh built-in, whose choices leave the live one's
    state (round-robin's turn) alone."""
    scheduler = dispatcher.scheduler
    if not isinstance(scheduler, PolicyHost) and scheduler.name in BUILTIN_POLICIES:
        return builtin(scheduler.name)
    return scheduler


def _policy_routes(
    app: QuartTrio,
    dispatcher: Dispatcher,
    locked: bool,
    applied_path: Path,
    on_policy: Callable[[PolicyHost], None],
) -> None:
    @app.get("/v1/policy")
    async def current_policy() -> Response:
        scheduler = dispatcher.scheduler
        if not isinstance(scheduler, PolicyHost):
            return json_response(PolicySource(policy=scheduler.name, locked=locked))
        return json_response(
            PolicySource(
                policy=scheduler.name,
                locked=locked or scheduler.locked,
                path=str(scheduler.path),
                source=scheduler.policy.source,
            )
        )

    @app.post("/v1/policy/check")
    async def check_policy() -> Response:
        draft = wire.decode(await request.get_data(), PolicyDraft)
        return json_response(drafts.check(draft.source, draft.format))

    @app.post("/v1/policy/compile")
    async def compile_policy() -> Response:
        draft = wire.decode(await request.get_data(), PolicyDraft)
        drafts.compile_draft(draft.source, draft.format)
        return json_response(PolicyCompiled(source=drafts.policy_text(draft.source, draft.format)))

    @app.post("/v1/policy/preview")
    async def preview_policy() -> Response:
        req = wire.decode(await request.get_data(), PolicyPreviewRequest)
        compiled = drafts.compile_draft(req.source, req.format)
        snapshot = dispatcher.registry.snapshot()
        return json_response(drafts.preview(compiled, _running(dispatcher), req.jobs, snapshot))

    @app.post("/v1/policy/replay")
    async def replay_policy() -> Response:
        req = wire.decode(await request.get_data(), PolicyReplayRequest)
        compiled = drafts.compile_draft(req.source, req.format)
        return json_response(drafts.replay(compiled, dispatcher.records.decisions(req.last)))

    @app.post("/v1/policy/apply")
    async def apply_policy() -> Response:
        draft = wire.decode(await request.get_data(), PolicyDraft)
        host, status = drafts.apply(
            dispatcher.scheduler,
            draft.source,
            draft.format,
            locked=locked,
            default_path=applied_path,
        )
        if host is not dispatcher.scheduler:
            on_policy(host)
        return json_response(status)
