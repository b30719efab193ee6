"""``rbee hive``: run the hive daemon (``rbee hive --queen URL``); subcommands manage hives.

The daemon's options sit on the group so that a bare ``rbee hive ...`` runs it. Nothing heavy is
imported until the daemon starts.
"""

from __future__ import annotations

from pathlib import Path

import click

from rbee.cli import Context
from rbee.keeper import hives as manage

__all__ = ["hive"]


@click.group(invoke_without_command=True)
@click.option("--queen", "queen_url", metavar="URL", help="The queen to heartbeat to.")
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
@click.option("--token", help="API token: required from callers, sent to the queen.")
@click.option(
    "--heartbeat-interval",
    "heartbeat_interval_s",
    type=click.FloatRange(0.05, 3600),
    help="Seconds between heartbeats (default 1).",
)
@click.pass_context
def hive(
    click_ctx: click.Context,
    queen_url: str | None,
    name: str | None,
    host: str | None,
    port: int | None,
    models_dir: str | None,
    state_dir: str | None,
    token: str | None,
    heartbeat_interval_s: float | None,
) -> None:
    """Run a hive daemon (one per host), or manage hives.

    The hive starts and stops workers for the queen, reports the host's and each worker's use of
    CPU, memory and GPUs in a heartbeat every second, and keeps the host's model store. It prints
    'rbee hive listening on http://HOST:PORT' once bound and stops its workers on SIGTERM/SIGINT.
    """
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    if click_ctx.invoked_subcommand is not None:
        # 'rbee hive --queen URL list' means that queen too.
        ctx.queen_url = queen_url or ctx.queen_url
        return
    _run_daemon(
        ctx,
        queen_url=queen_url or ctx.queen_url,
        name=name,
        host=host,
        port=port,
        models_dir=models_dir,
        state_dir=state_dir,
        token=token,
        heartbeat_interval_s=heartbeat_interval_s,
    )


def _run_daemon(ctx: Context, **flags: object) -> None:
    from functools import partial

    import trio

    from rbee import config as config_mod
    from rbee.hive.daemon import run_hive

    settings = config_mod.override(ctx.config.hive, **flags)
    models_dir = ctx.config.models_dir(settings.models_dir)
    state_dir = (
        Path(settings.state_dir).expanduser()
        if settings.state_dir
        else config_mod.default_data_dir() / "hive"
    )
    trio.run(partial(run_hive, settings, models_dir, state_dir, worker_defaults=ctx.config.worker))


hive.add_command(manage.list_)
