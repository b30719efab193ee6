"""``rbee key create|list|revoke``: the queen's API keys (needs the admin token, see
`rbee.queen.auth`)."""

from __future__ import annotations

import datetime
import re
import time

import click

from rbee.cli.common import Context, Group, json_option, pass_context, queen_options
from rbee.cli.output import emit_json, table
from rbee.wire.queen import KeyCreate, KeyInfo

__all__ = ["key", "parse_when"]

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """Unix seconds for ``text``: a duration from now (``30d``, ``12h``, ``90m``, ``1w2d``) or
    an ISO date or date and time (local time unless it names its zone)."""
    now = time.time() if now is None else now
    spec = text.strip().lower()
    if spec and _DURATION.sub("", spec).strip() == "":
        return now + sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(spec))
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30d, 12h, 90m) nor an ISO date/time "
            "(2027-01-31, 2027-01-31T12:00)",
            param_hint="--expires",
        ) from None
    return when.timestamp()


def _models(text: str | None) -> list[str]:
    return [m.strip() for m in (text or "").split(",") if m.strip()]


@click.group(cls=Group)
def key() -> None:
    """Create, list and revoke API keys (admin: the queen's --token, or its cluster secret)."""


def _row(info: KeyInfo) -> dict[str, object]:
    now = time.time()
    state = "revoked" if info.revoked_at else "ok"
    if info.expires_at is not None and info.expires_at <= now and state == "ok":
        state = "expired"
    expires = (
        "-"
        if info.expires_at is None
        else datetime.datetime.fromtimestamp(info.expires_at).isoformat(timespec="minutes")
    )
    return {
        "name": info.name,
        "tenant": info.tenant,
        "rpm": info.rpm or "-",
        "tpm": info.tpm or "-",
        "concurrent": info.concurrent or "-",
        "models": info.models or "any",
        "expires": expires,
        "state": state,
    }


@key.command("create")
@click.argument("name")
@click.option("--tenant", help="The tenant its jobs belong to (default: the key's name).")
@click.option("--rpm", type=click.IntRange(0), default=0, help="Requests a minute (0: no limit).")
@click.option("--tpm", type=click.IntRange(0), default=0, help="Tokens a minute (0: no limit).")
@click.option("--concurrent", type=click.IntRange(0), default=0, help="Jobs at once (0: no limit).")
@click.option("--models", help="Comma-separated models it may use (default: any).")
@click.option("--expires", help="When it expires: a duration (30d, 12h) or an ISO date/time.")
@json_option
@queen_options
@pass_context
def create(
    ctx: Context,
    name: str,
    tenant: str | None,
    rpm: int,
    tpm: int,
    concurrent: int,
    models: str | None,
    expires: str | None,
    as_json: bool,
) -> None:
    """Create key NAME and print it: it is shown this once (the queen keeps only its hash)."""
    spec = KeyCreate(
        name=name,
        tenant=tenant,
        rpm=rpm,
        tpm=tpm,
        concurrent=concurrent,
        models=_models(models),
        expires_at=None if expires is None else parse_when(expires),
    )
    with ctx.client() as queen:
        created = queen.create_key(spec)
    if as_json:
        emit_json(created)
        return
    click.echo(created.key)
    click.echo(
        f"key {created.info.name} (tenant {created.info.tenant}): keep it now, the queen cannot "
        "show it again",
        err=True,
    )


@key.command("list")
@json_option
@queen_options
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List the keys (never the keys themselves), revoked ones too."""
    with ctx.client() as queen:
        found = queen.keys()
    if as_json:
        emit_json(found)
        return
    columns = ["name", "tenant", "rpm", "tpm", "concurrent", "models", "expires", "state"]
    table([_row(k) for k in found], columns, empty="no keys")


@key.command("revoke")
@click.argument("name")
@queen_options
@pass_context
def revoke(ctx: Context, name: str) -> None:
    """Revoke key NAME: the queen refuses it from now on."""
    with ctx.client() as queen:
        info = queen.revoke_key(name)
    click.echo(f"key {info.name}: revoked")
