"""``rbee status``: the queen's workers and their telemetry, its queue, policy and recent errors."""

from __future__ import annotations

import time

import click

from rbee.cli.common import Context, json_option, pass_context, queen_options
from rbee.cli.output import emit_json, table, worker_row
from rbee.wire.queen import PolicyStatus

__all__ = ["status"]


@click.command()
@json_option
@queen_options
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show workers, queue depth, policy and recent errors."""
    with ctx.client() as queen:
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
    if report.policy_file is not None:
        click.echo(_policy_file(report.policy_file))
    if report.last_policy_error:
        click.echo(f"last policy error: {report.last_policy_error}")
    if report.recent_errors:
        click.echo("recent errors:")
        for e in report.recent_errors[-10:]:
            when = time.strftime("%H:%M:%S", time.localtime(e.at))
            click.echo(f"  {when}  {e.what}: {e.message}")


def _policy_file(file: PolicyStatus) -> str:
    """One line on the policy file: where, since when, reloads, and why the last reload failed."""
    loaded = time.strftime("%H:%M:%S", time.localtime(file.loaded_at))
    mode = "locked" if file.locked else f"reloads: {file.reloads}"
    line = f"policy file: {file.path} (loaded {loaded}, {mode})"
    return line + (f"; reload failed: {file.reload_error}" if file.reload_error else "")
