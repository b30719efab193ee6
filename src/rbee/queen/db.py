"""The queen's SQLite database: one connection, WAL mode, numbered migrations.

``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``; ``PRAGMA user_version`` holds the
version a file is at, so opening an older file applies only what it lacks, each step in its own
transaction. Append a migration to change the schema; never edit one that has shipped.

The queen writes from its trio thread, synchronously: every write is one short transaction on a
local file (WAL with ``synchronous=NORMAL`` commits without an fsync, tens of microseconds), and
none happens per token, only when a job changes state.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rbee.config import QueenConfig, default_data_dir
from rbee.errors import ConfigError

__all__ = ["MIGRATIONS", "db_path", "open_db"]


def db_path(config: QueenConfig) -> Path:
    """The database file: ``queen.db`` / ``--db``, else ``queen.db`` in the data directory."""
    return Path(config.db).expanduser() if config.db else default_data_dir() / "queen.db"


MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE hives (
        name TEXT PRIMARY KEY,
        url TEXT,
        ssh_address TEXT,
        ssh_port INTEGER,
        identity_file TEXT,
        capabilities TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'unknown',
        last_seen REAL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        operation TEXT NOT NULL,
        model TEXT NOT NULL,
        priority TEXT NOT NULL,
        state TEXT NOT NULL,
        request BLOB NOT NULL,
        worker TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        deadline_at REAL,
        started_at REAL,
        finished_at REAL,
        queue_wait_ms REAL,
        ttft_ms REAL,
        tokens_in INTEGER,
        tokens_out INTEGER,
        finish_reason TEXT,
        error TEXT,
        decision_id INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs (state, seq);
    CREATE TABLE job_attempts (
        job_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        error TEXT,
        PRIMARY KEY (job_id, n)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        policy TEXT NOT NULL,
        record BLOB NOT NULL
    );
    CREATE INDEX decisions_by_job ON decisions (job_id);
    """,
    """
    ALTER TABLE hives ADD COLUMN ssh_user TEXT;
    ALTER TABLE hives ADD COLUMN python TEXT;
    ALTER TABLE hives ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE hives ADD COLUMN auto_start INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hives ADD COLUMN tunnel INTEGER NOT NULL DEFAULT 0;
    """,
    # API keys (only the SHA-256 of a key is kept) and the tenant each job belongs to.
    """
    CREATE TABLE keys (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        rpm INTEGER NOT NULL DEFAULT 0,
        tpm INTEGER NOT NULL DEFAULT 0,
        concurrent INTEGER NOT NULL DEFAULT 0,
        models TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    """,
    # Each hive's token generation (`rbee.queen.keys.HiveTokens`); a hive without a row is at 0.
    """
    CREATE TABLE hive_tokens (
        name TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL
    );
    """,
)


def _migrate(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise ConfigError(
            f"the queen database is at schema version {version}, newer than this rbee knows "
            f"({len(MIGRATIONS)}): upgrade rbee or point --db at another file"
        )
    for n in range(version, len(MIGRATIONS)):
        # executescript commits first; the explicit BEGIN makes each step all-or-nothing.
        conn.executescript(f"BEGIN;\n{MIGRATIONS[n]}\nPRAGMA user_version = {n + 1};\nCOMMIT;")


def open_db(path: Path | str) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date.

    ``":memory:"`` gives a private in-memory database. Errors become `ConfigError` naming the file.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        _migrate(conn)
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"cannot open the queen database {path}: {err}") from None
    return conn
