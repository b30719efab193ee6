"""API keys, the cluster secret and the hives' tokens: what the queen checks callers against.

A key is ``rbee_`` and 43 characters of URL-safe base64 (32 random bytes). A random 256-bit key
needs no slow hash: the queen keeps only its SHA-256, finds a presented key by that hash in a
dict and compares the two digests in constant time, a few microseconds a request.

The cluster secret is 32 random bytes in ``cluster.secret`` (mode 0600) beside the queen's
database (its data directory by default), made on the first start. It is the cluster's admin
credential besides ``queen.token`` (a keeper on the queen's host reads it from the file) and the
root of each hive's token (`hive_token`), so that a hive's token says which hive holds it and
outlives a queen restart.

A hive's token has a generation (`HiveTokens`), 0 until ``rbee hive upgrade`` first replaces it;
each upgrade starts the new hive process with the next one, and the queen refuses the older
ones from then on. The generations are kept in the queen's database (``hive_tokens``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from pathlib import Path

from rbee.config import QueenConfig
from rbee.errors import ApiError, AuthError, ConfigError, NotFoundError
from rbee.queen.db import db_path
from rbee.wire.queen import KeyCreate, KeyInfo

__all__ = [
    "HIVE_PREFIX",
    "KEY_PREFIX",
    "SECRET_FILE",
    "HiveTokens",
    "KeyRecord",
    "KeyStore",
    "Limits",
    "hive_epoch",
    "hive_token",
    "key_hash",
    "load_secret",
    "new_key",
    "secret_path",
    "token_hive",
]

KEY_PREFIX = "rbee_"
HIVE_PREFIX = "rbeeh_"
SECRET_FILE = "cluster.secret"


def new_key() -> str:
    """A fresh API key: ``rbee_`` + 43 characters (32 random bytes, URL-safe base64)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """The SHA-256 of a key, in hex: what the queen stores and looks keys up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def hive_token(secret: str, hive: str, epoch: int = 0) -> str:
    """Hive ``hive``'s token of generation ``epoch``, under the cluster secret.

    Generation 0: ``rbeeh_<hive>.<HMAC of "hive:<hive>">``; generation N after it:
    ``rbeeh_<hive>~<N>.<HMAC of "hive:<hive>:<N>">``. Neither ``~`` nor ``:`` can be in a hive's
    name (`rbee.wire.NAME_PATTERN`), so the name and the generation read back unambiguously.
    """
    if epoch == 0:
        message, generation = f"hive:{hive}", ""
    else:
        message, generation = f"hive:{hive}:{epoch}", f"~{epoch}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{HIVE_PREFIX}{hive}{generation}.{digest}"


def token_hive(secret: str, token: str) -> tuple[str, int] | None:
    """The hive and generation of `hive_token` ``token`` (compared in constant time); None if it
    is no hive token under ``secret``."""
    head, dot, _ = token.removeprefix(HIVE_PREFIX).rpartition(".")
    name, tilde, generation = head.partition("~")
    if not dot or not name:
        return None
    epoch = 0
    if tilde:
        # Only the canonical spelling (digits, no leading zero, not 0) is a token `hive_token` makes.
        if not (generation.isdigit() and generation.isascii() and generation[0] != "0"):
            return None
        epoch = int(generation)
    return (name, epoch) if hmac.compare_digest(hive_token(secret, name, epoch), token) else None


class HiveTokens:
    """Each hive's current token generation, kept in the queen's database (``conn``; None: in
    memory only) and held in memory, where every request's check reads it.
    """

    def __init__(self, secret: str, conn: sqlite3.Connection | None = None) -> None:
        self._secret = secret
        self._conn = conn
        rows = conn.execute("SELECT name, epoch FROM hive_tokens").fetchall() if conn else []
        self._epochs: dict[str, int] = {row[0]: row[1] for row in rows}

    def epoch(self, name: str) -> int:
        """Hive ``name``'s current generation (0 for a hive whose token was never replaced)."""
        return self._epochs.get(name, 0)

    def token(self, name: str) -> str:
        """Hive ``name``'s current token."""
        return hive_token(self._secret, name, self.epoch(name))

    def hive(self, token: str) -> str | None:
        """The hive whose current token ``token`` is; None if it is no hive's token.

        A token of an older generation is refused with an `AuthError` saying so: its hive was
        upgraded since, and the process holding it is no longer the hive the queen started.
        """
        found = token_hive(self._secret, token)
        if found is None:
            return None
        name, epoch = found
        current = self.epoch(name)
        if epoch == current:
            return name
        if epoch < current:
            raise AuthError(
                f"hive {name}'s token was replaced by a newer one at an upgrade (generation "
                f"{epoch}, now {current}): the hive the queen started last holds the current one"
            )
        return None

    def rotate(self, name: str) -> str:
        """Start hive ``name``'s next generation, refusing its older tokens from now on; the new
        token."""
        epoch = self.epoch(name) + 1
        if self._conn is not None:
            self._conn.execute(
                "INSERT INTO hive_tokens (name, epoch) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch",
                (name, epoch),
            )
        self._epochs[name] = epoch
        return self.token(name)


def hive_epoch(db: Path, name: str) -> int:
    """Hive ``name``'s current token generation in the queen database ``db``, read without
    writing (0 when the file or its ``hive_tokens`` table is not there, or cannot be read)."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("SELECT epoch FROM hive_tokens WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return int(row[0]) if row is not None else 0


def secret_path(config: QueenConfig) -> Path:
    """The cluster secret's file: beside the queen's database, so that the two move together."""
    return db_path(config).parent / SECRET_FILE


def load_secret(path: Path) -> str:
    """The cluster secret in ``path``, made (mode 0600) if there is none yet."""
    data_dir = path.parent
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two queens starting at once must not each write their own secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    except OSError as err:
        raise ConfigError(f"cannot create the cluster secret {path}: {err}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the cluster secret {path}: {err}") from None
    if len(text) < 32:
        raise ConfigError(f"the cluster secret {path} is too short: remove it to make a new one")
    return text


# Requests a minute, tokens a minute, concurrent jobs; 0: no limit.
Limits = tuple[int, int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as the queen holds it; limits of 0 mean none, empty ``models`` any model."""

    name: str
    hash: str
    tenant: str
    rpm: int = 0
    tpm: int = 0
    concurrent: int = 0
    models: frozenset[str] = frozenset()
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def info(self) -> KeyInfo:
        return KeyInfo(
            name=self.name,
            tenant=self.tenant,
            rpm=self.rpm,
            tpm=self.tpm,
            concurrent=self.concurrent,
            models=sorted(self.models),
            created_at=self.created_at,
            expires_at=self.expires_at,
            revoked_at=self.revoked_at,
        )


class KeyStore:
    """The keys in the queen's database, with the live ones held in memory by hash."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.by_hash: dict[str, KeyRecord] = {}
        # Each tenant with a limit: its keys' limits summed, 0 where one of its keys has none.
        self.tenant_limits: dict[str, Limits] = {}
        for record in self.all():
            if record.revoked_at is None:
                self.by_hash[record.hash] = record
        self._sum_limits()

    def _sum_limits(self) -> None:
        sums: dict[str, list[int]] = {}
        for key in self.by_hash.values():
            row = sums.get(key.tenant)
            limits = (key.rpm, key.tpm, key.concurrent)
            if row is None:
                sums[key.tenant] = list(limits)
            else:
                sums[key.tenant] = [
                    a + b if a and b else 0 for a, b in zip(row, limits, strict=True)
                ]
        self.tenant_limits = {t: (r[0], r[1], r[2]) for t, r in sums.items() if any(r)}

    def all(self) -> list[KeyRecord]:
        rows = self._conn.execute("SELECT * FROM keys ORDER BY name").fetchall()
        return [_record(r) for r in rows]

    def create(self, spec: KeyCreate, now: float | None = None) -> tuple[str, KeyRecord]:
        """Make a key; return it (the only time it exists outside its holder) and its record."""
        now = time.time() if now is None else now
        if spec.expires_at is not None and spec.expires_at <= now:
            raise ApiError(
                "invalid request body: expires_at is in the past - at `$.expires_at`", 400
            )
        key = new_key()
        record = KeyRecord(
            name=spec.name,
            hash=key_hash(key),
            tenant=spec.tenant or spec.name,
            rpm=spec.rpm,
            tpm=spec.tpm,
            concurrent=spec.concurrent,
            models=frozenset(spec.models),
            created_at=now,
            expires_at=spec.expires_at,
        )
        try:
            self._conn.execute(
                "INSERT INTO keys (name, hash, tenant, rpm, tpm, concurrent, models, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.hash,
                    record.tenant,
                    record.rpm,
                    record.tpm,
                    record.concurrent,
                    ",".join(sorted(record.models)),
                    record.created_at,
                    record.expires_at,
                ),
            )
        except sqlite3.IntegrityError:
            raise ApiError(
                f"a key named {spec.name!r} exists already (revoked keys keep their name): "
                "choose another name",
                409,
                code="key_exists",
            ) from None
        self.by_hash[record.hash] = record
        self._sum_limits()
        return key, record

    def revoke(self, name: str, now: float | None = None) -> KeyRecord:
        """Revoke key ``name`` at once; its record stays (``rbee key list`` shows it)."""
        now = time.time() if now is None else now
        row = self._conn.execute("SELECT * FROM keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no key named {name!r} ('rbee key list' shows them)")
        record = _record(row)
        if record.revoked_at is None:
            self._conn.execute("UPDATE keys SET revoked_at = ? WHERE name = ?", (now, name))
            record = dataclasses.replace(record, revoked_at=now)
        self.by_hash.pop(record.hash, None)
        self._sum_limits()
        return record


def _record(row: sqlite3.Row) -> KeyRecord:
    models = row["models"]
    return KeyRecord(
        name=row["name"],
        hash=row["hash"],
        tenant=row["tenant"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        concurrent=row["concurrent"],
        models=frozenset(models.split(",")) if models else frozenset(),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )
