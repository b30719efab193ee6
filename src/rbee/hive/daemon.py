"""``rbee hive daemon``: serve the hive API, supervise workers, heartbeat to the queen, until a signal.

One nursery owns every task: the supervisor (whose own nursery owns each worker's watchers), the
HTTP server, the heartbeat loop and the crash reporter. On SIGTERM/SIGINT the hive retires every
worker (SIGTERM, grace, SIGKILL) while still answering, then stops serving. It prints one line on
stdout once bound::

    rbee hive listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

import httpx
import trio

from rbee import server
from rbee.client import auth_headers
from rbee.config import HiveConfig, WorkerConfig
from rbee.errors import ConfigError
from rbee.hive.app import HiveState, create_hive_app
from rbee.hive.queen_link import QueenLink
from rbee.hive.supervisor import Supervisor
from rbee.hive.telemetry import Gpus
from rbee.models import DEFAULT_MODEL
from rbee.models.store import ModelStore

__all__ = ["default_hive_name", "run_hive"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_WILDCARD = ("0.0.0.0", "::", "")
_SERVE_GRACE_S = 1.0


def default_hive_name() -> str:
    """This host's name, cut to what a hive name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:63]
    return name or "hive"


def _advertised_host(host: str) -> str:
    return socket.gethostname() if host in _WILDCARD else host


async def run_hive(
    config: HiveConfig,
    models_dir: Path,
    state_dir: Path,
    *,
    worker_defaults: WorkerConfig | None = None,
    worker_command: Sequence[str] | None = None,
    shutdown: Callable[[], Awaitable[None]] = server.until_signal,
    out: TextIO = sys.stdout,
    task_status: trio.TaskStatus[HiveState] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a hive until ``shutdown`` returns; report its `HiveState` (``.url``) once serving.

    ``worker_command`` replaces ``rbee`` itself as the program that workers are started with
    (``[*worker_command, "worker", "daemon", ...]``); tests use it for a stand-in worker.
    """
    server.require_token(config.host, config.token, "hive", "hive.token")
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
    control = httpx.AsyncClient(timeout=httpx.Timeout(2.0), headers=auth_headers(config.token))
    transfer = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
    try:
        async with control, transfer, trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            state = HiveState(
                name=name,
                url="",
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
            stop_serving = trio.Event()

            async def serve(task_status: trio.TaskStatus[str]) -> None:
                await server.serve(
                    create_hive_app(state),
                    config.host,
                    config.port,
                    shutdown=stop_serving.wait,
                    task_status=task_status,
                    # hypercorn waits out the whole grace for idle keep-alive connections (the
                    # queen's pooled ones); the workers are already retired by then.
                    graceful_timeout=_SERVE_GRACE_S,
                )
                nursery.cancel_scope.cancel()

            url: str = await nursery.start(serve)
            bound = httpx.URL(url)
            state.url = str(bound.copy_with(host=_advertised_host(bound.host))).rstrip("/")
            print(f"rbee hive listening on {url}", file=out, flush=True)
            link = QueenLink(config.queen_url, config.token, control)
            nursery.start_soon(
                partial(link.heartbeats, state.heartbeat, config.heartbeat_interval_s)
            )
            nursery.start_soon(link.crash_reports, supervisor.exits)
            task_status.started(state)
            await shutdown()
            await supervisor.retire_all()
            stop_serving.set()
    finally:
        gpus.close()
