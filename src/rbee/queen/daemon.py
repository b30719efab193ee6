"""The queen daemon: one nursery owns the dispatcher's tasks and the HTTP server.

On SIGTERM/SIGINT (or ``shutdown`` returning) the queen drains: it admits no new jobs, lets the
running ones finish within ``queen.drain_grace_s``, stops the rest, lets the last streams end, and
exits. Jobs still waiting stay queued in the database and run after the next start.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from rbee.config import QueenConfig, default_data_dir
from rbee.errors import ConfigError
from rbee.queen.app import build_app
from rbee.queen.db import open_db
from rbee.queen.dispatcher import Dispatcher, Provisioner
from rbee.queen.scheduler import Scheduler, Watched, make_scheduler
from rbee.server import is_loopback, serve, until_signal

__all__ = ["check_exposure", "db_path", "first_of", "run_queen"]

# After the drain every job stream has ended; what is left are idle keep-alive connections.
CLOSE_GRACE_S = 1.0
# How often a policy file is checked for changes (hot reload).
POLICY_CHECK_INTERVAL_S = 1.0


def db_path(config: QueenConfig) -> Path:
    """The database file: ``queen.db`` / ``--db``, else ``queen.db`` in the data directory."""
    return Path(config.db).expanduser() if config.db else default_data_dir() / "queen.db"


def check_exposure(config: QueenConfig) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(config.host) and not config.token:
        raise ConfigError(
            f"refusing to listen on {config.host} without an API token: anyone who can reach it "
            "could run jobs. Set --token (or queen.token in the config file), or listen on "
            "127.0.0.1"
        )


E = TypeVar("E", bound=BaseException)


def first_of(error: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``error`` or, through nested exception groups, inside it."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = first_of(inner, kind)
            if found is not None:
                return found
    return None


async def _listen(
    nursery: trio.Nursery, config: QueenConfig, serving: Callable[..., Awaitable[None]]
) -> str:
    try:
        url: str = await nursery.start(serving)
    except (OSError, BaseExceptionGroup) as err:
        cause = first_of(err, OSError)
        if cause is None:
            raise
        raise ConfigError(
            f"cannot listen on {config.host}:{config.port}: {cause.strerror or cause} "
            "(is another queen running there? choose another --port)"
        ) from None
    return url


async def run_queen(
    config: QueenConfig,
    *,
    scheduler: Scheduler | None = None,
    provisioner: Provisioner | None = None,
    shutdown: Callable[[], Awaitable[None]] = until_signal,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the queen until ``shutdown`` returns; report its base URL through ``task_status``.

    ``scheduler`` defaults to `make_scheduler` of ``config.policy``; ``provisioner`` is what starts
    workers on a `Spawn` decision (none: such a decision is a "no worker serves model" error).
    """
    check_exposure(config)
    conn = open_db(db_path(config))
    try:
        scheduler = scheduler or make_scheduler(config.policy, locked=config.policy_locked)
        dispatcher = Dispatcher(config, conn, scheduler, provisioner)
        app = build_app(dispatcher, config.token)
        stop_serving = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            if isinstance(scheduler, Watched):
                nursery.start_soon(scheduler.watch, POLICY_CHECK_INTERVAL_S)
            async with trio.open_nursery() as http:
                url = await _listen(
                    http,
                    config,
                    functools.partial(
                        serve,
                        app,
                        config.host,
                        config.port,
                        shutdown=stop_serving.wait,
                        graceful_timeout=CLOSE_GRACE_S,
                    ),
                )
                task_status.started(url)
                await shutdown()
                await dispatcher.drain(config.drain_grace_s)
                stop_serving.set()
            nursery.cancel_scope.cancel()
    finally:
        conn.close()
