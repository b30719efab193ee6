"""``rbee worker spawn|list|retire``: workers on the queen's hives, through the queen.

The commands sit on the ``worker`` group of `rbee.worker.cli` (whose bare form runs a worker
daemon); nothing but click is imported until one runs.
"""

from __future__ import annotations

import click

from rbee.cli import Context, json_option, pass_context

# rbee.keeper.api's option, spelled out: importing that module (httpx) would slow every daemon start.
token_option = click.option("--token", help="API token for the queen (default keeper.token).")

__all__ = ["list_", "retire", "spawn"]


@click.command()
@click.option("--hive", required=True, help="The hive to start it on (see 'rbee hive list').")
@click.option("--model", "-m", required=True, help="The model to serve (in the hive's store).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda:N.")
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
@token_option
@pass_context
def spawn(
    ctx: Context,
    hive: str,
    model: str,
    device: str,
    wait: bool,
    pin: bool,
    as_json: bool,
    token: str | None,
) -> None:
    """Start a worker for MODEL on HIVE."""
    from rbee.keeper.cluster_api import cluster_for
    from rbee.keeper.output import emit_json
    from rbee.wire.queen import WorkerSpawn

    with cluster_for(ctx, token) as queen:
        spawn = WorkerSpawn(hive=hive, model=model, device=device, wait=wait, pinned=pin)
        status = queen.spawn(spawn)
    if as_json:
        emit_json(status)
        return
    click.echo(
        f"worker {status.id}: {status.model} on hive {hive} ({status.device}), "
        f"pid {status.pid}, {status.state}"
        + (f" at {status.url}" if status.url else "")
        + (", pinned" if status.pinned else "")
    )


@click.command("list")
@json_option
@token_option
@pass_context
def list_(ctx: Context, as_json: bool, token: str | None) -> None:
    """List the workers every hive reports, with their telemetry."""
    from rbee.keeper.cluster_api import cluster_for
    from rbee.keeper.output import emit_json, table, worker_row

    with cluster_for(ctx, token) as queen:
        workers = queen.workers()
    if as_json:
        emit_json(workers)
        return
    rows = [worker_row(w) for w in workers]
    columns = ["worker", "hive", "model", "device", "state", "slots", "pid", "cpu%", "rss_mb"]
    table(rows, [*columns, "vram_mb", "uptime_s"], empty="no workers")


@click.command()
@click.argument("worker_id", metavar="ID")
@json_option
@token_option
@pass_context
def retire(ctx: Context, worker_id: str, as_json: bool, token: str | None) -> None:
    """Stop worker ID (SIGTERM, its grace period, then SIGKILL)."""
    from rbee.keeper.cluster_api import cluster_for
    from rbee.keeper.output import emit_json

    with cluster_for(ctx, token) as queen:
        retired = queen.retire(worker_id)
    if as_json:
        emit_json(retired)
        return
    how = "killed after the grace period" if retired.killed else f"exit code {retired.exit_code}"
    click.echo(f"retired worker {retired.id} ({how})")
