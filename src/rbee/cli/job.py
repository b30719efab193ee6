"""``rbee job list|show|cancel`` (``rbee jobs ...`` works too): the queen's job records."""

from __future__ import annotations

import time

import click

from rbee.cli.common import Context, Group, json_option, pass_context, queen_options
from rbee.cli.output import emit_json, table
from rbee.wire.queen import JobInfo

__all__ = ["job"]

STATES = ["queued", "running", "completed", "failed", "cancelled"]


@click.group(cls=Group)
def job() -> None:
    """List, show or cancel jobs ('rbee jobs' works too)."""


def _row(job: JobInfo) -> dict[str, object]:
    return {
        "id": job.id,
        "state": job.state,
        "model": job.model,
        "priority": job.priority,
        "worker": job.worker,
        "attempts": job.attempts,
        "tokens": job.tokens_out,
        "ttft_ms": job.ttft_ms,
        "age_s": time.time() - job.created_at,
        "error": job.error,
    }


@job.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
@queen_options
@pass_context
def list_(ctx: Context, state: str | None, limit: int, as_json: bool) -> None:
    """List the newest jobs, newest first."""
    with ctx.client() as queen:
        found = queen.jobs(state, limit)
    if as_json:
        emit_json(found)
        return
    table(
        [_row(j) for j in found],
        [
            "id",
            "state",
            "model",
            "priority",
            "worker",
            "attempts",
            "tokens",
            "ttft_ms",
            "age_s",
            "error",
        ],
        empty="no jobs",
    )


@job.command("show")
@click.argument("job_id")
@json_option
@queen_options
@pass_context
def show(ctx: Context, job_id: str, as_json: bool) -> None:
    """Show one job: its record, attempts and scheduling decision."""
    with ctx.client() as queen:
        job = queen.job(job_id)
    if as_json:
        emit_json(job)
        return
    for key, value in _row(job).items():
        if value is not None:
            click.echo(
                f"{key + ':':<10} {value:.1f}"
                if isinstance(value, float)
                else f"{key + ':':<10} {value}"
            )
    click.echo(f"{'wait_ms:':<10} {job.queue_wait_ms if job.queue_wait_ms is not None else '-'}")
    click.echo(f"{'tokens_in:':<10} {job.tokens_in if job.tokens_in is not None else '-'}")
    if job.finish_reason:
        click.echo(f"{'finish:':<10} {job.finish_reason}")
    for a in job.attempt_log:
        click.echo(f"attempt {a.n} on {a.worker}: {a.error or 'ok'}")
    if job.decision is not None:
        d = job.decision
        target = f" {d.target}" if d.target else ""
        click.echo(f"decision: {d.kind}{target} by policy {d.policy}")
        for reason in d.reasons:
            click.echo(f"  - {reason}")
        if d.error:
            click.echo(f"  policy error: {d.error}")


@job.command("cancel")
@click.argument("job_id")
@queen_options
@pass_context
def cancel(ctx: Context, job_id: str) -> None:
    """Cancel a waiting or running job (it stops at the worker too)."""
    with ctx.client() as queen:
        job = queen.cancel(job_id)
    click.echo(f"{job.id}: {job.state}")
