"""``rbee status``: the queen's workers with their telemetry, its queue, and recent errors."""

from __future__ import annotations

import time

import click

from rbee.cli import Context, json_option, pass_context
from rbee.keeper.api import client_for, token_option
from rbee.keeper.output import emit_json, table, worker_row

__all__ = ["status"]


@click.command()
@json_option
@token_option
@pass_context
def status(ctx: Context, as_json: bool, token: str | None) -> None:
    """Show workers, queue depth and recent errors."""
    with client_for(ctx, token) as queen:
        report = queen.status()
    if as_json:
        emit_json(report)
        return
    rows = [worker_row(w) for w in report.workers]
    table(
        rows,
        [
            "worker",
            "hive",
            "model",
            "device",
            "state",
            "slots",
            "inflight",
            "cpu%",
            "rss_mb",
            "vram_mb",
            "seen_s",
        ],
        empty="no workers (hives report theirs every second)",
    )
    offline = [h.name for h in report.hives if h.status == "offline"]
    click.echo(
        f"\nqueue: {report.queue_depth} waiting, {report.running} running; "
        f"policy {report.policy}; hives: {len(report.hives) - len(offline)} online"
        + (f", offline: {', '.join(offline)}" if offline else "")
        + ("; draining" if report.draining else "")
    )
    if report.last_policy_error:
        click.echo(f"last policy error: {report.last_policy_error}")
    if report.recent_errors:
        click.echo("recent errors:")
        for e in report.recent_errors[-10:]:
            when = time.strftime("%H:%M:%S", time.localtime(e.at))
            click.echo(f"  {when}  {e.what}: {e.message}")
