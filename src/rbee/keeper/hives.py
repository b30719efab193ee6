"""``rbee hive list``: the hives the queen hears from (its local hive included), through the queen.

The command sits on the ``hive`` group of `rbee.hive.cli` (whose bare form runs a hive daemon).
"""

from __future__ import annotations

import click

from rbee.cli import Context, json_option, pass_context

# rbee.keeper.api's option, spelled out: importing that module (httpx) would slow every daemon start.
token_option = click.option("--token", help="API token for the queen (default keeper.token).")

__all__ = ["list_"]


@click.command("list")
@json_option
@token_option
@pass_context
def list_(ctx: Context, as_json: bool, token: str | None) -> None:
    """List hives: online or offline, host telemetry, models."""
    from rbee.keeper.cluster_api import cluster_for
    from rbee.keeper.output import emit_json, table

    with cluster_for(ctx, token) as queen:
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
