"""Hives registered by SSH address, in the queen's ``hives`` table (its ``ssh_*`` columns).

A row that heartbeats alone made (the local hive, a hive started by hand) has no SSH address and
is not a registered hive. Queries only.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from rbee.ssh import Target

__all__ = ["HostRecord", "HostRecords"]


@dataclasses.dataclass(frozen=True)
class HostRecord:
    name: str
    target: Target
    python: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    auto_start: bool = False
    tunnel: bool = False


def _record(row: sqlite3.Row) -> HostRecord:
    target = Target(
        row["ssh_address"], row["ssh_user"] or "", row["ssh_port"] or 0, row["identity_file"] or ""
    )
    return HostRecord(
        name=row["name"],
        target=target,
        python=row["python"] or "",
        labels=json.loads(row["labels"] or "{}"),
        auto_start=bool(row["auto_start"]),
        tunnel=bool(row["tunnel"]),
    )


class HostRecords:
    """The registered hives in the queen's database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, record: HostRecord) -> bool:
        """Register ``record``; False when a hive of that name is registered already."""
        t = record.target
        cursor = self._conn.execute(
            "INSERT INTO hives (name, ssh_address, ssh_user, ssh_port, identity_file, python,"
            " labels, tunnel) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET ssh_address = excluded.ssh_address,"
            " ssh_user = excluded.ssh_user, ssh_port = excluded.ssh_port,"
            " identity_file = excluded.identity_file, python = excluded.python,"
            " labels = excluded.labels, tunnel = excluded.tunnel WHERE hives.ssh_address IS NULL",
            (
                record.name,
                t.host,
                t.user or None,
                t.port or None,
                t.identity or None,
                record.python or None,
                json.dumps(record.labels),
                int(record.tunnel),
            ),
        )
        return cursor.rowcount == 1

    def get(self, name: str) -> HostRecord | None:
        row = self._conn.execute(
            "SELECT * FROM hives WHERE name = ? AND ssh_address IS NOT NULL", (name,)
        ).fetchone()
        return _record(row) if row is not None else None

    def all(self) -> list[HostRecord]:
        rows = self._conn.execute(
            "SELECT * FROM hives WHERE ssh_address IS NOT NULL ORDER BY name"
        ).fetchall()
        return [_record(r) for r in rows]

    def set_auto_start(self, name: str, on: bool) -> None:
        """Whether the queen starts the hive again after a restart when it does not report."""
        self._conn.execute("UPDATE hives SET auto_start = ? WHERE name = ?", (int(on), name))

    def remove(self, name: str) -> None:
        self._conn.execute("DELETE FROM hives WHERE name = ?", (name,))
