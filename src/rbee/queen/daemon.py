"""The queen daemon: one nursery owns the dispatcher's tasks and the HTTP server.

On SIGTERM/SIGINT (or ``shutdown`` returning) the queen drains: it admits no new jobs, lets the
running ones finish within ``queen.drain_grace_s``, stops the rest, lets the last streams end, and
exits. Jobs still waiting stay queued in the database and run after the next start. The local
hive, if the queen runs one, is stopped after the drain (it retires its workers) and before the
queen stops serving.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from rbee.config import QueenConfig
from rbee.decisions import Scheduler
from rbee.errors import ConfigError
from rbee.models.http import store_blueprint
from rbee.models.store import ModelStore
from rbee.policy import PolicyHost
from rbee.queen import cluster_api, drafts, fast_routes, ui
from rbee.queen.app import build_app
from rbee.queen.auth import Gate
from rbee.queen.db import db_path, open_db
from rbee.queen.dispatcher import Dispatcher, Provisioner
from rbee.queen.keys import HiveTokens, KeyStore, load_secret, secret_path
from rbee.queen.lifecycle import routes as lifecycle_routes
from rbee.queen.lifecycle.manager import HostHives, own_file
from rbee.queen.local_hive import LOCAL_HIVE, LocalHive
from rbee.queen.prompts import PromptCheck
from rbee.queen.provision import Hives
from rbee.queen.scheduler import Watched, make_scheduler
from rbee.server import require_token, serve, shutdown_trigger
from rbee.ssh import KnownHosts

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["check_exposure", "first_of", "make_gate", "run_queen"]

# After the drain every job stream has ended; what is left are idle keep-alive connections.
CLOSE_GRACE_S = 1.0
HIVE_CALL_TIMEOUT_S = 10.0
# How often a policy file is checked for changes (hot reload).
POLICY_CHECK_INTERVAL_S = 1.0


def make_gate(config: QueenConfig, conn: sqlite3.Connection) -> Gate:
    """The queen's `Gate`: its keys, the cluster secret (made on the first start), the hives'
    token generations, its mode."""
    secret = load_secret(secret_path(config))
    return Gate(
        KeyStore(conn),
        secret,
        token=config.token,
        loopback_keyless=config.loopback_keyless,
        platform=config.platform,
        hive_tokens=HiveTokens(secret, conn),
    )


def check_exposure(config: QueenConfig) -> None:
    """Refuse to serve beyond this machine without a token."""
    require_token(config.host, config.token, "queen", "queen.token")


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
    provision: bool = False,
    store_dir: Path | None = None,
    local_hive: Sequence[str] | None = None,
    on_ready: Callable[[], None] | None = None,
    deploy_file: Path | None = None,
    known_hosts: KnownHosts | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the queen until ``shutdown`` returns (default: SIGTERM or SIGINT); report its base URL
    through ``task_status``.

    ``scheduler`` defaults to `make_scheduler` of ``config.policy``; ``provisioner`` is what starts
    workers on a `Spawn` decision (none: such a decision is a "no worker serves model" error,
    unless ``provision`` makes the queen start them on its hives itself and retire them after
    ``config.keep_alive_s`` idle). ``store_dir`` is the model store the queen serves to its hives
    under ``/v1/store``. ``local_hive`` is the command (`rbee_command`) that runs a hive on this
    machine, started once the queen is bound; jobs that no worker can take wait for its first
    heartbeat (up to ``config.hive_start_timeout_s``), and ``on_ready`` is called after it (at
    once without a local hive). ``deploy_file`` is the file pushed to the hives started over
    SSH (default: the ``rbee.pyz`` this process runs from), whose host keys are checked against
    ``known_hosts`` (default: ``known_hosts`` next to the database, and the user's).
    """
    check_exposure(config)
    conn = open_db(db_path(config))
    gate = make_gate(config, conn)
    control = httpx.AsyncClient(timeout=httpx.Timeout(HIVE_CALL_TIMEOUT_S))
    # Spawns that wait for a model to load and pull streams: bounded per read, not in total.
    transfer = httpx.AsyncClient(timeout=httpx.Timeout(config.spawn_timeout_s, connect=5.0))
    try:
        locked = config.policy_locked or config.platform
        scheduler = scheduler or make_scheduler(
            config.policy, locked=locked, cpu_fallback=config.cpu_fallback
        )
        dispatcher = Dispatcher(config, conn, scheduler, provisioner)
        if isinstance(scheduler, Watched):
            # Only a policy file reads the tenants; the built-in policies never pay for them.
            dispatcher.tenants = lambda: gate.quotas.tenants(gate.keys.tenant_limits)
        dispatcher.worker_token = gate.credentials.worker
        app = build_app(dispatcher, gate)
        fast_routes.install(app, dispatcher, gate)
        hives = _hives(config, dispatcher, control, transfer, store_dir)
        dispatcher.prompts = PromptCheck(dispatcher.registry, hives.store)
        if provision and provisioner is None:
            dispatcher.provisioner = hives
        hives.token_for = gate.credentials.hive
        hives.before_retire = dispatcher.close_idle_connections
        if local_hive is not None:
            # Before the first request can arrive: a job sent right away waits for this hive.
            dispatcher.expect_hive(LOCAL_HIVE, config.hive_start_timeout_s)
        cluster_api.add_routes(app, hives)

        def use_policy(host: PolicyHost) -> None:
            dispatcher.scheduler = host
            dispatcher.tenants = lambda: gate.quotas.tenants(gate.keys.tenant_limits)

        ui.add_routes(
            app,
            dispatcher,
            gate,
            hives,
            platform=config.platform,
            locked=locked,
            applied_path=db_path(config).parent / drafts.APPLIED_FILE,
            on_policy=use_policy,
        )
        hosts = HostHives(
            conn,
            dispatcher,
            known_hosts or KnownHosts(own=db_path(config).parent / "known_hosts"),
            file=deploy_file or own_file(),
            token=config.token,
            queen_host=config.host,
            heartbeat_interval_s=config.heartbeat_interval_s,
            http=control,
        )
        hosts.tokens = gate.hive_tokens
        lifecycle_routes.add_routes(app, hosts)
        dispatcher.before_connect = hosts.before_connect
        if hives.store is not None:
            app.register_blueprint(store_blueprint(hives.store))
        stop_serving = trio.Event()
        async with control, transfer, trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            if provision:
                nursery.start_soon(hives.keep_alive)
            if isinstance(scheduler, Watched):
                nursery.start_soon(scheduler.watch, POLICY_CHECK_INTERVAL_S)
            with contextlib.ExitStack() as signals:
                # Entered before the address is reported, for a SIGTERM sent as soon as it shows.
                stop = signals.enter_context(shutdown_trigger(shutdown))
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
                    hosts.queen_port = httpx.URL(url).port or config.port
                    await nursery.start(hosts.run)
                    hive: LocalHive | None = None
                    if local_hive is not None:
                        hive = LocalHive(
                            local_hive,
                            url,
                            token=gate.hive_tokens.token(LOCAL_HIVE),
                            models_dir=str(store_dir) if config.models_dir and store_dir else "",
                            heartbeat_interval_s=config.heartbeat_interval_s,
                        )
                        await nursery.start(hive.run)
                        if on_ready is not None:
                            nursery.start_soon(_when_online, dispatcher, LOCAL_HIVE, on_ready)
                    elif on_ready is not None:
                        on_ready()
                    await stop()
                    # A second signal during the drain ends the queen at once.
                    signals.close()
                    await dispatcher.drain(config.drain_grace_s)
                    if hive is not None:
                        await dispatcher.close_idle_connections()
                        await hive.stop()
                    stop_serving.set()
            nursery.cancel_scope.cancel()
    finally:
        conn.close()


def _hives(
    config: QueenConfig,
    dispatcher: Dispatcher,
    control: httpx.AsyncClient,
    transfer: httpx.AsyncClient,
    store_dir: Path | None,
) -> Hives:
    return Hives(
        dispatcher.registry,
        control,
        transfer,
        token=config.token,
        store=ModelStore(store_dir) if store_dir is not None else None,
        keep_alive_s=config.keep_alive_s,
    )


async def _when_online(dispatcher: Dispatcher, name: str, then: Callable[[], None]) -> None:
    await dispatcher.wait_for_hive(name)
    then()
