"""``rbee worker daemon --model M``: bind, announce, load the model, serve until SIGTERM/SIGINT.

The port is bound before the model loads so a parent learns the address at once; it then polls
``GET /health`` (``loading`` -> ``ready``) or reads the second stdout line. Both lines are flushed::

    rbee worker listening on http://127.0.0.1:PORT
    rbee worker ready model=NAME provider=CPUExecutionProvider

A model that fails to load ends the process with one ``rbee: error: ...`` line and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import trio
from quart_trio import QuartTrio

from rbee import server
from rbee.config import WorkerConfig
from rbee.errors import ModelError, RbeeError
from rbee.log import kv
from rbee.models import default_precision
from rbee.worker.app import WorkerState, create_worker_app
from rbee.worker.interfaces import EngineLike, TokenizerLike
from rbee.worker.scheduler import Scheduler

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["load_model", "run_worker"]

log = logging.getLogger(__name__)


def load_model(
    model: str, config: WorkerConfig, models_dir: Path
) -> tuple[EngineLike, TokenizerLike, str]:
    """Open ``model`` from the store (importing the default model on first use).

    Returns the engine, the tokenizer and the execution provider actually in use. A GPU
    without room for the model (`rbee.models.vram.ensure_room`) is a `ModelError` before
    anything loads.
    """
    from rbee.models.importer import ensure_model
    from rbee.models.store import ModelStore
    from rbee.models.tokenizer import ModelTokenizer
    from rbee.models.vram import ensure_room, gpu_precision
    from rbee.worker.engine import Engine

    store = ModelStore(models_dir)
    manifest = ensure_model(store, model)
    directory = store.dir(model)
    precision = gpu_precision(manifest, config.precision)
    ensure_room(directory, manifest, device=config.device, precision=precision, slots=config.slots)
    engine = Engine(
        directory,
        manifest,
        precision=config.precision or None,
        device=config.device,
        threads=config.threads,
        slots=config.slots,
    )
    engine.calibrate()
    return engine, ModelTokenizer.load(directory, manifest), engine.provider


SERVE_GRACE_S = 1.0


async def run_worker(
    model: str,
    config: WorkerConfig,
    models_dir: Path,
    *,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Serve ``model`` until ``shutdown`` returns (default: SIGTERM or SIGINT).

    Raises `RbeeError` when the address cannot be bound and `ModelError` when the model cannot be
    loaded; both are raised after every task has stopped, so the CLI sees the error itself.
    """
    precision = config.precision or default_precision(config.device)
    state = WorkerState(model=model, precision=precision, device=config.device, slots=config.slots)
    server.require_token(config.host, config.token, "worker", "worker.token")
    app = create_worker_app(state, config.token)
    # Entered before the "listening" line, for a SIGTERM sent as soon as it shows (or while the
    # model loads after it).
    with server.shutdown_trigger(shutdown) as stop:
        failure = await _serve(app, state, model, config, models_dir, shutdown=stop, out=out)
    if failure is not None:
        raise failure


async def _serve(
    app: QuartTrio,
    state: WorkerState,
    model: str,
    config: WorkerConfig,
    models_dir: Path,
    *,
    shutdown: Callable[[], Awaitable[None]],
    out: TextIO,
) -> RbeeError | None:
    """Serve ``app``, announce it, load the model, until ``shutdown`` returns; what failed."""
    failure: RbeeError | None = None
    async with trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[str]) -> None:
            await server.serve(
                app,
                config.host,
                config.port,
                shutdown=shutdown,
                task_status=task_status,
                # hypercorn waits out the whole grace for idle keep-alive connections, and the
                # hive's telemetry poll always holds one: keep retiring a worker quick.
                graceful_timeout=SERVE_GRACE_S,
            )
            nursery.cancel_scope.cancel()

        url = ""
        try:
            url = await nursery.start(serve_then_stop)
        except (OSError, BaseExceptionGroup) as err:
            if not isinstance(cause := _leaf(err), OSError):
                raise
            failure = RbeeError(f"cannot listen on {config.host}:{config.port}: {cause}")
        if failure is None:
            print(f"rbee worker listening on {url}", file=out, flush=True)
            failure = await _load(state, model, config, models_dir, nursery)
            if failure is None:
                log.info("worker ready", extra=kv(model=model, provider=state.provider, url=url))
                print(
                    f"rbee worker ready model={model} provider={state.provider}",
                    file=out,
                    flush=True,
                )
        if failure is not None:
            nursery.cancel_scope.cancel()
    return failure


def _leaf(error: BaseException) -> BaseException:
    """The first plain exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _load(
    state: WorkerState, model: str, config: WorkerConfig, models_dir: Path, nursery: trio.Nursery
) -> RbeeError | None:
    """Load the model in a thread, start the batching loop, mark the worker ready."""
    try:
        engine, tokenizer, provider = await trio.to_thread.run_sync(
            load_model, model, config, models_dir, abandon_on_cancel=True
        )
    except RbeeError as err:
        return err
    except Exception as err:
        return ModelError(f"cannot load {model}: {type(err).__name__}: {err}")
    scheduler = Scheduler(engine, tokenizer, queue_size=config.queue_size)
    nursery.start_soon(scheduler.run)
    state.ready(scheduler, tokenizer, provider)
    return None
