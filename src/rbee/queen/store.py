"""The queen's persistent records: jobs, their attempts, scheduling decisions and hives.

Queries only; the dispatcher decides when to write. Times are Unix seconds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import msgspec

from rbee import wire
from rbee.wire.queen import AttemptRecord, DecisionRecord, JobInfo, JobRequest, JobState

__all__ = ["HiveStore", "JobStore", "StoredJob"]

_decision_decoder = msgspec.json.Decoder(DecisionRecord)
_request_decoder = msgspec.json.Decoder(JobRequest)


class StoredJob(msgspec.Struct, frozen=True, kw_only=True):
    """What re-admitting an unfinished job after a restart needs."""

    id: str
    seq: int
    state: JobState
    request: JobRequest
    created_at: float
    deadline_at: float | None
    attempts: int
    tenant: str = ""


class JobStore:
    """Job records, attempts and decisions in the queen's database.

    Writes made inside `held` wait in memory until `flush`: the dispatcher holds a new job's
    records until its request is on the way to a worker, and writes them while the worker works.
    Any other write or read flushes them first, so that the order of the writes, and what a
    reader sees, are the same as if nothing had been held.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._holding = False
        self._held: list[tuple[str, tuple[object, ...]]] = []

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the writes made inside in memory until `flush` (or the next write or read).

        As with `batch`, an exception drops the writes made inside.
        """
        start = len(self._held)
        self._holding = True
        try:
            yield
        except BaseException:
            del self._held[start:]
            raise
        finally:
            self._holding = False

    def flush(self) -> None:
        """Make the held writes, in one transaction."""
        if not self._held:
            return
        held, self._held = self._held, []
        with self.batch():
            for sql, params in held:
                self._conn.execute(sql, params)

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        if self._holding:
            self._held.append((sql, params))
            return
        self.flush()
        self._conn.execute(sql, params)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes inside one transaction (one commit instead of one per statement)."""
        if self._conn.in_transaction or self._holding:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def next_seq(self) -> int:
        self.flush()
        row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        return int(row[0]) + 1

    def insert(
        self,
        job_id: str,
        seq: int,
        request: JobRequest,
        created_at: float,
        deadline_at: float | None,
        tenant: str = "",
    ) -> None:
        self._write(
            "INSERT INTO jobs (id, seq, operation, model, priority, state, request, created_at,"
            " deadline_at, tenant) VALUES (?, ?, 'infer', ?, ?, 'queued', ?, ?, ?, ?)",
            (
                job_id,
                seq,
                request.model,
                request.priority,
                wire.encode(request),
                created_at,
                deadline_at,
                tenant,
            ),
        )

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of one job (names come from the dispatcher, never from a request)."""
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._write(f"UPDATE jobs SET {columns} WHERE id = ?", (*fields.values(), job_id))

    def delete(self, job_id: str) -> None:
        """Forget a job that was never admitted (refused with 429)."""
        self._write("DELETE FROM decisions WHERE job_id = ?", (job_id,))
        self._write("DELETE FROM jobs WHERE id = ?", (job_id,))

    def start_attempt(self, job_id: str, n: int, worker: str, at: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO job_attempts (job_id, n, worker, started_at) VALUES (?, ?, ?, ?)",
            (job_id, n, worker, at),
        )

    def end_attempt(self, job_id: str, n: int, at: float, error: str | None) -> None:
        self._write(
            "UPDATE job_attempts SET ended_at = ?, error = ? WHERE job_id = ? AND n = ?",
            (at, error, job_id, n),
        )

    def add_decision(self, record: DecisionRecord) -> None:
        """Record a decision about a job; it becomes the one the job's record shows."""
        self._write(
            "INSERT INTO decisions (job_id, at, kind, policy, record) VALUES (?, ?, ?, ?, ?)",
            (record.job_id, record.at, record.kind, record.policy, wire.encode(record)),
        )
        self._write(
            "UPDATE jobs SET decision_id = last_insert_rowid() WHERE id = ?", (record.job_id,)
        )

    def decisions(self, last: int, job_id: str | None = None) -> list[DecisionRecord]:
        """The last ``last`` decisions (of one job, with ``job_id``), oldest first."""
        self.flush()
        args: tuple[object, ...] = (last,) if job_id is None else (job_id, last)
        where = "" if job_id is None else "WHERE job_id = ?"
        query = f"SELECT record FROM decisions {where} ORDER BY id DESC LIMIT ?"
        rows = self._conn.execute(query, args).fetchall()
        return [_decision_decoder.decode(r[0]) for r in reversed(rows)]

    def get(self, job_id: str) -> JobInfo | None:
        self.flush()
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        decision = None
        if row["decision_id"] is not None:
            d = self._conn.execute(
                "SELECT record FROM decisions WHERE id = ?", (row["decision_id"],)
            ).fetchone()
            decision = _decision_decoder.decode(d[0]) if d is not None else None
        attempts = [
            AttemptRecord(
                n=a["n"],
                worker=a["worker"],
                started_at=a["started_at"],
                ended_at=a["ended_at"],
                error=a["error"],
            )
            for a in self._conn.execute(
                "SELECT * FROM job_attempts WHERE job_id = ? ORDER BY n", (job_id,)
            )
        ]
        return _info(row, decision, attempts)

    def recent(
        self, state: JobState | None = None, limit: int = 100, tenant: str | None = None
    ) -> list[JobInfo]:
        """The newest ``limit`` jobs (in ``state``, of ``tenant``, if given), newest first."""
        self.flush()
        where = [
            f"{column} = ?" for column, v in (("state", state), ("tenant", tenant)) if v is not None
        ]
        args = [v for v in (state, tenant) if v is not None]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._conn.execute(
            f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*args, limit)
        )
        return [_info(r, None, []) for r in rows]

    def unfinished(self) -> list[StoredJob]:
        """Jobs left queued or running when the queen last stopped, oldest first."""
        self.flush()
        rows = self._conn.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq"
        ).fetchall()
        return [
            StoredJob(
                id=r["id"],
                seq=r["seq"],
                state=r["state"],
                request=_request_decoder.decode(r["request"]),
                created_at=r["created_at"],
                deadline_at=r["deadline_at"],
                attempts=r["attempts"],
                tenant=r["tenant"],
            )
            for r in rows
        ]


def _info(
    row: sqlite3.Row, decision: DecisionRecord | None, attempts: list[AttemptRecord]
) -> JobInfo:
    return JobInfo(
        id=row["id"],
        operation=row["operation"],
        model=row["model"],
        priority=row["priority"],
        state=row["state"],
        created_at=row["created_at"],
        tenant=row["tenant"],
        worker=row["worker"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        queue_wait_ms=row["queue_wait_ms"],
        ttft_ms=row["ttft_ms"],
        tokens_in=row["tokens_in"],
        tokens_out=row["tokens_out"],
        finish_reason=row["finish_reason"],
        error=row["error"],
        decision=decision,
        attempt_log=attempts,
    )


class HiveStore:
    """Hives the queen has heard from (and, for the lifecycle code, how to reach them)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def seen(self, name: str, url: str, capabilities: dict[str, Any], at: float) -> None:
        """Record a hive that came online (first heartbeat, or back after going stale)."""
        self._conn.execute(
            "INSERT INTO hives (name, url, capabilities, status, last_seen)"
            " VALUES (?, ?, ?, 'online', ?)"
            " ON CONFLICT (name) DO UPDATE SET url = excluded.url,"
            " capabilities = excluded.capabilities, status = 'online', last_seen = excluded.last_seen",
            (name, url, json.dumps(capabilities), at),
        )

    def offline(self, name: str, at: float) -> None:
        self._conn.execute(
            "UPDATE hives SET status = 'offline', last_seen = ? WHERE name = ?", (at, name)
        )

    def all(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute("SELECT * FROM hives ORDER BY name")]
