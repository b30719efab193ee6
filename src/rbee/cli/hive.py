"""``rbee hive daemon``: run the hive daemon; ``rbee hive list``: the hives, through the queen.

Nothing heavy is imported until a command runs: the daemon's modules load only when it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rbee.cli.common import (
    Context,
    Group,
    json_option,
    pass_context,
    queen_option,
    queen_options,
    token_option,
)

if TYPE_CHECKING:
    from rbee.config import HiveConfig

__all__ = ["hive"]


@click.group(cls=Group)
def hive() -> None:
    """Run a hive daemon (one per host), or list hives.

    The queen starts the hive on its own machine; 'rbee hive daemon --queen URL' runs one by
    hand, on another host.
    """


@hive.command()
@queen_option("The queen to heartbeat to (default hive.queen_url).")
@click.option("--name", help="This hive's name (default: the host name).")
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind; 0 picks a free one.")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    help="Model store directory (default ~/.cache/rbee/models).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where worker logs go (default ~/.local/share/rbee/hive).",
)
@token_option(
    "API token: required from callers, sent to the queen (default hive.token; for a queen on "
    "this machine whose cluster secret this user can read, this hive's own token from it)."
)
@click.option(
    "--heartbeat-interval",
    "heartbeat_interval_s",
    type=click.FloatRange(0.05, 3600),
    help="Seconds between heartbeats (default 1).",
)
@pass_context
def daemon(
    ctx: Context,
    name: str | None,
    host: str | None,
    port: int | None,
    models_dir: str | None,
    state_dir: str | None,
    heartbeat_interval_s: float | None,
) -> None:
    """Run the hive daemon until SIGTERM or SIGINT.

    The hive starts and stops workers for the queen, reports the host's and each worker's use of
    CPU, memory and GPUs in a heartbeat every second, and keeps the host's model store. It prints
    'rbee hive listening on http://HOST:PORT' once bound and stops its workers when it stops.
    """
    from functools import partial

    import trio

    from rbee import config as config_mod
    from rbee.hive.daemon import run_hive

    settings = config_mod.override(
        ctx.config.hive,
        queen_url=ctx.queen_url,
        name=name,
        host=host,
        port=port,
        models_dir=models_dir,
        state_dir=state_dir,
        token=ctx.token,
        heartbeat_interval_s=heartbeat_interval_s,
    )
    if not settings.token:
        settings = config_mod.override(settings, token=_own_token(ctx, settings))
    store = ctx.config.models_dir(settings.models_dir)
    state = (
        Path(settings.state_dir).expanduser()
        if settings.state_dir
        else config_mod.default_data_dir() / "hive"
    )
    trio.run(partial(run_hive, settings, store, state, worker_defaults=ctx.config.worker))


def _own_token(ctx: Context, settings: HiveConfig) -> str | None:
    """A hive started by hand without a token, for a queen on this machine whose cluster secret
    this user can read, takes its own hive token from that secret (else it has none)."""
    from rbee.hive.daemon import default_hive_name
    from rbee.queen.keys import hive_token

    secret = ctx.local_secret(settings.queen_url)
    return hive_token(secret, settings.name or default_hive_name()) if secret else None


@hive.command("list")
@json_option
@queen_options
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List hives: online or offline, host telemetry, models."""
    from rbee.cli.output import emit_json, table

    with ctx.client() as queen:
        hives = queen.hives()
        workers = queen.workers()
    if as_json:
        emit_json(hives)
        return
    counts: dict[str, int] = {}
    for w in workers:
        counts[w.hive] = counts.get(w.hive, 0) + 1
    rows = [
        {
            "hive": h.name,
            "status": h.status,
            "url": h.url,
            "workers": counts.get(h.name, 0),
            "cpus": h.host.cpu_count,
            "ram_free_mb": h.host.ram_free_mb,
            "ram_total_mb": h.host.ram_total_mb,
            "gpus": len(h.host.gpus),
            "models": h.models,
            "seen_s": h.last_seen_s,
        }
        for h in hives
    ]
    columns = ["hive", "status", "url", "workers", "cpus", "ram_free_mb", "ram_total_mb", "gpus"]
    table(rows, [*columns, "models", "seen_s"], empty="no hives have reported to this queen")
