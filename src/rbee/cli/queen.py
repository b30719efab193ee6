"""``rbee queen``: run the queen daemon."""

from __future__ import annotations

import functools
import sys

import click
import trio

from rbee.cli.common import Context, pass_context, token_option
from rbee.config import QueenConfig, override
from rbee.errors import RbeeError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["queen"]


@click.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1; others need a token).")
@click.option("--port", type=int, help="Port to listen on (default 7833; 0 picks a free one).")
@click.option("--db", help="SQLite database file (default ~/.local/share/rbee/queen.db).")
@click.option(
    "--policy",
    help="Scheduling policy: first-available, least-loaded, round-robin, most-vram-free, or a "
    "policy file (hot-reloaded; see docs/policies.md).",
)
@click.option(
    "--policy-locked/--policy-unlocked",
    default=None,
    help="Never reload the policy file.",
)
@click.option(
    "--platform/--home",
    default=None,
    help="Platform mode: the policy is locked, every caller needs an API key (loopback too), "
    "quotas are enforced and tenants share the queue fairly (default queen.platform).",
)
@token_option(
    "API token clients must send as 'Authorization: Bearer <token>' (default queen.token)."
)
@click.option(
    "--local-hive/--no-local-hive",
    default=None,
    help="Run a hive on this machine too (default: queen.local_hive, on).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    help="The queen's model store, served to hives (default ~/.cache/rbee/models).",
)
@click.option(
    "--keep-alive",
    "keep_alive_s",
    type=click.FloatRange(0.1),
    help="Seconds a worker may stay idle before it is retired (default 600).",
)
@pass_context
def queen(
    ctx: Context,
    host: str | None,
    port: int | None,
    db: str | None,
    policy: str | None,
    policy_locked: bool | None,
    platform: bool | None,
    local_hive: bool | None,
    models_dir: str | None,
    keep_alive_s: float | None,
) -> None:
    """Run the queen daemon: scheduling, job queue, API.

    Prints 'rbee queen listening on http://HOST:PORT' once it accepts connections and, once its
    local hive has reported (at once with --no-local-hive), 'rbee queen ready'. Workers are started
    on the hives when a job needs one and retired after queen.keep_alive_s idle. Drains on
    SIGTERM: no new jobs, running ones get queen.drain_grace_s to finish, waiting ones stay queued
    in the database for the next start; then the local hive stops its workers.
    """
    from rbee.process import rbee_command
    from rbee.queen.daemon import check_exposure, first_of, run_queen
    from rbee.queen.scheduler import make_scheduler

    config: QueenConfig = override(
        ctx.config.queen,
        host=host,
        port=port,
        db=db,
        policy=policy,
        policy_locked=policy_locked,
        platform=platform,
        token=ctx.token,
        local_hive=local_hive,
        models_dir=models_dir,
        keep_alive_s=keep_alive_s,
    )
    check_exposure(config)
    scheduler = make_scheduler(
        config.policy,
        locked=config.policy_locked or config.platform,
        cpu_fallback=config.cpu_fallback,
    )
    try:
        trio.run(
            functools.partial(
                run_queen,
                config,
                scheduler=scheduler,
                provision=True,
                store_dir=ctx.config.models_dir(config.models_dir),
                local_hive=rbee_command() if config.local_hive else None,
                on_ready=_ready,
                task_status=_Announce(),
            )
        )
    except BaseExceptionGroup as group:
        # The daemon's nurseries wrap what went wrong; a user needs the one error, not the tree.
        raise first_of(group, RbeeError) or group from None


class _Announce(trio.TaskStatus[str]):
    """Prints the bound address once the queen accepts connections (parents read this line)."""

    def started(self, value: str | None = None) -> None:
        click.echo(f"rbee queen listening on {value}")
        sys.stdout.flush()


def _ready() -> None:
    click.echo("rbee queen ready")
    sys.stdout.flush()
