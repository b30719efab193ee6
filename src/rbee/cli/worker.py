"""``rbee worker daemon``: run a worker; ``rbee worker spawn|list|retire``: workers on the hives.

``daemon`` serves one model on this machine (a hive starts it so); the other commands manage the
hives' workers through the queen. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import re

import click

from rbee.cli.common import Context, Group, json_option, pass_context, queen_options, token_option
from rbee.wire.worker import Precision

__all__ = ["worker"]

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _DEVICE.match(value):
        raise click.BadParameter(f"{value!r} is not 'cpu', 'cuda' or 'cuda:N'")
    return value


@click.group(cls=Group)
def worker() -> None:
    """Run a worker daemon (one model on one device), or spawn, list and retire workers.

    Hives start their workers themselves ('rbee worker daemon --model M ...'); 'spawn', 'list'
    and 'retire' act on them through the queen.
    """


@worker.command()
@click.option("--model", metavar="NAME", required=True, help="The model to serve (from the store).")
@click.option("--device", callback=_device, help="cpu, cuda or cuda:N (default from config: cpu).")
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind; 0 picks a free one.")
@click.option("--slots", type=click.IntRange(1, 256), help="Sequences decoded together.")
@click.option(
    "--threads", type=click.IntRange(0, 1024), help="CPU threads (0: ONNX Runtime's choice)."
)
@click.option(
    "--precision",
    type=click.Choice(["int4", "fp16", "fp32"]),
    help="Which graph to run (default from config, else fp16 on cuda, int4 on cpu).",
)
@click.option(
    "--queue-size", type=click.IntRange(0, 100_000), help="Requests that may wait for a slot."
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    help="Model store directory (default ~/.cache/rbee/models).",
)
@token_option("API token callers must send (the hive passes its own as RBEE_WORKER_TOKEN).")
@pass_context
def daemon(
    ctx: Context,
    model: str,
    device: str | None,
    host: str | None,
    port: int | None,
    slots: int | None,
    threads: int | None,
    precision: str | None,
    queue_size: int | None,
    models_dir: str | None,
) -> None:
    """Run a worker daemon for MODEL until SIGTERM or SIGINT.

    It prints 'rbee worker listening on http://HOST:PORT' once bound and
    'rbee worker ready model=NAME provider=...' once the model is loaded (GET /health turns
    from "loading" to "ready" at the same moment).
    """
    import trio

    from rbee import config as config_mod
    from rbee.models.store import validate_name
    from rbee.worker.daemon import run_worker

    settings = config_mod.override(
        ctx.config.worker,
        device=device,
        host=host,
        port=port,
        slots=slots,
        threads=threads,
        precision=precision,
        queue_size=queue_size,
        models_dir=models_dir,
        token=ctx.token,
    )
    store = ctx.config.models_dir(settings.models_dir)
    trio.run(run_worker, validate_name(model), settings, store)


@worker.command()
@click.option("--hive", required=True, help="The hive to start it on (see 'rbee hive list').")
@click.option("--model", "-m", required=True, help="The model to serve (in the hive's store).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["int4", "fp16", "fp32"]),
    help="The graph to run (default: the hive's setting, else fp16 on a GPU, int4 on the CPU).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Return once the model is loaded, or at once with the worker still loading.",
)
@click.option(
    "--pin/--no-pin",
    default=True,
    show_default=True,
    help="Keep it until 'rbee worker retire'; unpinned, it is retired after queen.keep_alive_s "
    "idle or when its host runs short of memory, like the workers the queen starts on demand.",
)
@json_option
@queen_options
@pass_context
def spawn(
    ctx: Context,
    hive: str,
    model: str,
    device: str,
    precision: Precision | None,
    wait: bool,
    pin: bool,
    as_json: bool,
) -> None:
    """Start a worker for MODEL on HIVE."""
    from rbee.cli.output import emit_json
    from rbee.wire.queen import WorkerSpawn

    with ctx.client() as queen:
        request = WorkerSpawn(
            hive=hive, model=model, device=device, precision=precision, wait=wait, pinned=pin
        )
        status = queen.spawn(request)
    if as_json:
        emit_json(status)
        return
    click.echo(
        f"worker {status.id}: {status.model} on hive {hive} ({status.device}), "
        f"pid {status.pid}, {status.state}"
        + (f" at {status.url}" if status.url else "")
        + (", pinned" if status.pinned else "")
    )


@worker.command("list")
@json_option
@queen_options
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List the workers every hive reports, with their telemetry."""
    from rbee.cli.output import emit_json, table, worker_row

    with ctx.client() as queen:
        workers = queen.workers()
    if as_json:
        emit_json(workers)
        return
    rows = [worker_row(w) for w in workers]
    columns = ["worker", "hive", "model", "device", "state", "slots", "pid", "cpu%", "rss_mb"]
    table(rows, [*columns, "vram_mb", "uptime_s"], empty="no workers")


@worker.command()
@click.argument("worker_id", metavar="ID")
@json_option
@queen_options
@pass_context
def retire(ctx: Context, worker_id: str, as_json: bool) -> None:
    """Stop worker ID (SIGTERM, its grace period, then SIGKILL)."""
    from rbee.cli.output import emit_json

    with ctx.client() as queen:
        retired = queen.retire(worker_id)
    if as_json:
        emit_json(retired)
        return
    how = "killed after the grace period" if retired.killed else f"exit code {retired.exit_code}"
    click.echo(f"retired worker {retired.id} ({how})")
