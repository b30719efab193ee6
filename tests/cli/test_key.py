"""``rbee key create|list|revoke`` against a real queen; when ``--expires`` means."""

from __future__ import annotations

import datetime
import json
import re

import click
import httpx
import pytest
import trio

from rbee.cli.key import parse_when
from rbee.config import QueenConfig, default_data_dir
from tests.cli.test_queen_commands import rbee
from tests.queen.conftest import QueenHandle, start_queen


@pytest.fixture
async def platform(nursery: trio.Nursery) -> QueenHandle:
    """A platform-mode queen whose database (and secret) are where the CLI looks by default."""
    db = default_data_dir() / "queen.db"
    return await start_queen(nursery, QueenConfig(port=0, db=str(db), platform=True))


async def test_create_list_revoke(
    platform: QueenHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await rbee(
        capsys,
        "key",
        "create",
        "alice",
        "--queen",
        platform.url,
        "--tenant",
        "acme",
        "--rpm",
        "10",
        "--models",
        "m1, m2",
        "--expires",
        "30d",
    )
    assert code == 0, err
    key = out.strip()
    assert re.fullmatch(r"rbee_[A-Za-z0-9_-]{43}", key)
    assert "cannot show it again" in err
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        models = await http.get(f"{platform.url}/v1/models")
    assert models.status_code == 200

    code, out, err = await rbee(capsys, "key", "list", "--json", "--queen", platform.url)
    assert code == 0, err
    (listed,) = json.loads(out)
    assert (listed["name"], listed["tenant"], listed["rpm"], listed["models"]) == (
        "alice",
        "acme",
        10,
        ["m1", "m2"],
    )
    assert 29 * 86400 < listed["expires_at"] - listed["created_at"] <= 30 * 86400
    assert key not in out

    code, out, err = await rbee(capsys, "key", "revoke", "alice", "--queen", platform.url)
    assert (code, out.strip()) == (0, "key alice: revoked")
    code, out, err = await rbee(capsys, "key", "list", "--queen", platform.url)
    assert "revoked" in out.splitlines()[1]
    code, out, err = await rbee(capsys, "key", "revoke", "nobody", "--queen", platform.url)
    assert code == 1
    assert "no key named 'nobody'" in err


async def test_a_bad_admin_token_is_one_line(
    platform: QueenHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = await rbee(
        capsys, "key", "list", "--queen", platform.url, "--token", "wrong-token-0123456789"
    )
    assert code == 1
    assert err.count("\n") == 1
    assert "invalid API key" in err


def test_when_is_a_duration_or_an_iso_time() -> None:
    now = 1_000_000.0
    assert parse_when("30d", now) == now + 30 * 86400
    assert parse_when("1w2h", now) == now + 7 * 86400 + 7200
    assert parse_when("90m", now) == now + 5400
    stamp = parse_when("2027-01-31T12:00:00+00:00", now)
    assert stamp == datetime.datetime(2027, 1, 31, 12, tzinfo=datetime.UTC).timestamp()
    assert parse_when("2027-01-31", now) == datetime.datetime(2027, 1, 31).timestamp()
    for bad in ("soon", "10", "30x"):
        with pytest.raises(click.BadParameter, match="neither a duration"):
            parse_when(bad, now)
