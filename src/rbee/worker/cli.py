"""``rbee worker``: run a worker daemon (``rbee worker --model M``), or manage workers.

The daemon's options sit on the group so that ``rbee worker --model M`` runs it, while subcommands
(``rbee worker spawn|list|retire``) manage workers through the queen. Nothing heavy is imported
until the daemon actually starts.
"""

from __future__ import annotations

import re

import click

from rbee.cli import Context
from rbee.keeper import workers as manage

__all__ = ["worker"]

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _DEVICE.match(value):
        raise click.BadParameter(f"{value!r} is not 'cpu', 'cuda' or 'cuda:N'")
    return value


@click.group(invoke_without_command=True)
@click.option("--model", metavar="NAME", help="The model to serve (from the model store).")
@click.option("--device", callback=_device, help="cpu, cuda or cuda:N (default from config: cpu).")
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind; 0 picks a free one.")
@click.option("--slots", type=click.IntRange(1, 256), help="Sequences decoded together.")
@click.option(
    "--threads", type=click.IntRange(0, 1024), help="CPU threads (0: ONNX Runtime's choice)."
)
@click.option("--precision", type=click.Choice(["int4", "fp32"]), help="Which graph to run.")
@click.option(
    "--queue-size", type=click.IntRange(0, 100_000), help="Requests that may wait for a slot."
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    help="Model store directory (default ~/.cache/rbee/models).",
)
@click.option(
    "--token",
    help="API token callers must send (the hive passes its own as RBEE_WORKER_TOKEN).",
)
@click.pass_context
def worker(
    click_ctx: click.Context,
    model: str | None,
    device: str | None,
    host: str | None,
    port: int | None,
    slots: int | None,
    threads: int | None,
    precision: str | None,
    queue_size: int | None,
    models_dir: str | None,
    token: str | None,
) -> None:
    """Run a worker daemon (one model on one device), or manage workers.

    The daemon prints 'rbee worker listening on http://HOST:PORT' once bound and
    'rbee worker ready model=NAME provider=...' once the model is loaded (GET /health turns
    from "loading" to "ready" at the same moment). It stops on SIGTERM or SIGINT.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    if model is None:
        raise click.UsageError("Missing option '--model'.", click_ctx)
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    _run_daemon(
        ctx,
        model,
        device=device,
        host=host,
        port=port,
        slots=slots,
        threads=threads,
        precision=precision,
        queue_size=queue_size,
        models_dir=models_dir,
        token=token,
    )


def _run_daemon(ctx: Context, model: str, **flags: object) -> None:
    import trio

    from rbee import config as config_mod
    from rbee.models.store import validate_name
    from rbee.worker.daemon import run_worker

    settings = config_mod.override(ctx.config.worker, **flags)
    models_dir = ctx.config.models_dir(settings.models_dir)
    trio.run(run_worker, validate_name(model), settings, models_dir)


worker.add_command(manage.spawn)
worker.add_command(manage.list_)
worker.add_command(manage.retire)
