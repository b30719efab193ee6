"""``rbee hive daemon``: serve the hive API, supervise workers, heartbeat to the queen, until a signal.

One nursery owns every task: the supervisor (whose own nursery owns each worker's watchers), the
HTTP server, the heartbeat loop and the crash reporter. On SIGTERM/SIGINT, or ``POST
/v1/shutdown`` with its token, the hive retires every worker (SIGTERM, grace, SIGKILL) while still
answering, then stops serving. It prints one line on
stdout once bound::

    rbee hive listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TextIO

import httpx
import trio

from rbee.client import auth_headers
from rbee.config import HiveConfig, WorkerConfig, require_token
from rbee.errors import ConfigError
from rbee.hive.queen_link import QueenLink
from rbee.hive.state import HiveState
from rbee.hive.supervisor import Supervisor
from rbee.hive.telemetry import Gpus
from rbee.models import DEFAULT_MODEL
from rbee.models.store import ModelStore

__all__ = ["default_hive_name", "run_hive"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_WILDCARD = ("0.0.0.0", "::", "")
# Nothing is left to finish when the server stops (the workers are retired before it), but
# hypercorn waits out the whole grace for idle keep-alive connections (the queen's pooled ones):
# with 1 s, a stopped hive's process outlived its API by a second, and a `hive start` right after
# `hive stop` spent 1.7 s stopping it again.
_SERVE_GRACE_S = 0.1


class _TlsOnDemand(httpx.AsyncBaseTransport):
    """httpx's transport, whose TLS half (and CA bundle) is made on the first ``https`` request.

    Loading the CA bundle costs each client ~50-100 ms of CPU at start, which hives starting on a
    busy host pay in full, while a hive mostly speaks plain HTTP to its queen and workers.
    """

    def __init__(self) -> None:
        # A context that trusts no CA: this transport never opens a TLS connection.
        self._plain = httpx.AsyncHTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        self._tls: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return await self._plain.handle_async_request(request)
        if self._tls is None:
            self._tls = httpx.AsyncHTTPTransport()
        return await self._tls.handle_async_request(request)

    async def aclose(self) -> None:
        await self._plain.aclose()
        if self._tls is not None:
            await self._tls.aclose()


def default_hive_name() -> str:
    """This host's name, cut to what a hive name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:63]
    return name or "hive"


def _advertised_host(host: str) -> str:
    return socket.gethostname() if host in _WILDCARD else host


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: any port) and listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


async def run_hive(
    config: HiveConfig,
    models_dir: Path,
    state_dir: Path,
    *,
    worker_defaults: WorkerConfig | None = None,
    worker_command: Sequence[str] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    out: TextIO = sys.stdout,
    task_status: trio.TaskStatus[HiveState] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a hive until ``shutdown`` returns (default: SIGTERM or SIGINT) or a caller asks it
    to stop (``POST /v1/shutdown``); report its `HiveState` (``.url``) once serving.

    ``worker_command`` replaces ``rbee`` itself as the program that workers are started with
    (``[*worker_command, "worker", "daemon", ...]``); tests use it for a stand-in worker.

    The socket is bound and the first heartbeat sent before the web stack is imported (most of
    a hive's start-up CPU): the queen counts the hive online that much sooner, and what it
    sends meanwhile waits in the socket's backlog.
    """
    require_token(config.host, config.token, "hive", "hive.token")
    name = config.name or default_hive_name()
    if not _NAME.match(name):
        raise ConfigError(f"invalid hive name {name!r}: letters, digits, '.', '_', '-' (max 63)")
    store = ModelStore(models_dir)
    gpus = Gpus()
    workers = worker_defaults or WorkerConfig()
    supervisor = Supervisor(
        hive=name,
        store=store,
        state_dir=state_dir,
        gpus=gpus,
        default_model=DEFAULT_MODEL,
        command=worker_command,
        worker_host=config.host,
        advertise_host=_advertised_host(config.host),
        default_slots=workers.slots,
        default_precision=workers.precision,
        ready_timeout_s=config.worker_ready_timeout_s,
        stop_grace_s=config.worker_stop_grace_s,
        token=config.token,
    )
    # The same token guards the queen, this hive and its workers.
    control = httpx.AsyncClient(
        timeout=httpx.Timeout(2.0), headers=auth_headers(config.token), transport=_TlsOnDemand()
    )
    transfer = httpx.AsyncClient(
        timeout=httpx.Timeout(60.0, connect=10.0), transport=_TlsOnDemand()
    )
    try:
        listener = _listen(config.host, config.port)
    except OSError as err:
        gpus.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {err.strerror}") from None
    try:
        async with control, transfer, trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            bound_host, port = listener.getsockname()[:2]
            bound = httpx.URL(scheme="http", host=bound_host, port=port)
            state = HiveState(
                name=name,
                url=str(bound.copy_with(host=_advertised_host(bound_host))).rstrip("/"),
                store=store,
                supervisor=supervisor,
                gpus=gpus,
                control=control,
                transfer=transfer,
                tasks=nursery,
                token=config.token,
                queen_url=config.queen_url,
                interval_s=config.heartbeat_interval_s,
            )
            link = QueenLink(config.queen_url, config.token, control)
            reporting = trio.CancelScope()

            async def heartbeats() -> None:
                with reporting:
                    await link.heartbeats(state.heartbeat, config.heartbeat_interval_s)

            nursery.start_soon(heartbeats)
            nursery.start_soon(link.crash_reports, supervisor.exits)
            with trio.move_on_after(config.heartbeat_interval_s):
                await link.first_tried.wait()
            await _serve(state, config, listener, nursery, out, shutdown, task_status, reporting)
    finally:
        listener.close()
        gpus.close()


async def _serve(
    state: HiveState,
    config: HiveConfig,
    listener: socket.socket,
    nursery: trio.Nursery,
    out: TextIO,
    shutdown: Callable[[], Awaitable[None]] | None,
    task_status: trio.TaskStatus[HiveState],
    reporting: trio.CancelScope,
) -> None:
    """Serve the hive's API on ``listener`` until told to stop; then end the heartbeats in
    ``reporting`` (a stopping hive is no hive to send jobs to, and a late heartbeat would put
    it back online at the queen) and retire the workers.
    """
    from rbee import server
    from rbee.hive.app import create_hive_app

    stop_serving = trio.Event()

    async def serve(task_status: trio.TaskStatus[str]) -> None:
        await server.serve(
            create_hive_app(state),
            config.host,
            config.port,
            shutdown=stop_serving.wait,
            task_status=task_status,
            graceful_timeout=_SERVE_GRACE_S,
            listener=listener,
        )
        nursery.cancel_scope.cancel()

    # Entered before the "listening" line, for a SIGTERM sent as soon as it shows.
    with server.shutdown_trigger(shutdown) as stop:
        url: str = await nursery.start(serve)
        print(f"rbee hive listening on {url}", file=out, flush=True)
        task_status.started(state)
        async with trio.open_nursery() as waiting:

            async def until(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(until, stop)
            waiting.start_soon(until, state.stop_requested.wait)
    reporting.cancel()
    await state.supervisor.retire_all()
    stop_serving.set()
