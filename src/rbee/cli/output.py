"""How commands print: aligned tables for people, ``--json`` for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

from rbee import wire
from rbee.wire.queen import WorkerEntry

__all__ = ["ProgressBar", "emit_json", "table", "worker_row"]

_BAR = 30


def emit_json(obj: Any) -> None:
    """Print a wire struct or plain data as indented JSON."""
    click.echo(json.dumps(wire.to_builtins(obj), indent=2, sort_keys=False))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def table(rows: Iterable[Mapping[str, object]], columns: Sequence[str], empty: str) -> None:
    """Print ``rows`` as an aligned table of ``columns``, or ``empty`` when there are none."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    if not cells:
        click.echo(empty)
        return
    header = [c.upper() for c in columns]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(columns))]
    for row in [header, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def worker_row(entry: WorkerEntry) -> dict[str, object]:
    """Every column a worker table may show; each command picks its own."""
    w = entry.worker
    return {
        "worker": w.id,
        "hive": entry.hive,
        "model": w.model,
        "device": w.device,
        "state": w.state + (" (pinned)" if w.pinned else ""),
        "slots": f"{w.slots_free}/{w.slots_total}",
        "inflight": entry.inflight,
        "pid": w.pid,
        "cpu%": w.cpu_pct,
        "rss_mb": w.rss_mb,
        "vram_mb": w.vram_mb,
        "uptime_s": w.uptime_s,
        "seen_s": entry.last_seen_s,
    }


class ProgressBar:
    """Percent on stderr: a redrawn bar on a terminal, a line every quarter otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._tty = sys.stderr.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if self._tty:
            filled = _BAR * done // max(total, 1)
            bar = "#" * filled + " " * (_BAR - filled)
            click.echo(f"\r{self._label} [{bar}] {percent:3d}%", err=True, nl=done >= total)
        elif percent // 25 > self._shown // 25 or done >= total:
            click.echo(f"{self._label}: {percent}%", err=True)
        self._shown = percent
