"""Hive tokens: the local hive takes only the token its queen made for it; hives must report with
a credential, loopback or not; an upgrade's new generation refuses the older tokens. A real queen
starts a real local hive process here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from rbee import wire
from rbee.config import QueenConfig
from rbee.errors import AuthError
from rbee.queen.db import open_db
from rbee.queen.keys import HiveTokens, hive_epoch, hive_token, token_hive
from rbee.queen.local_hive import LOCAL_HIVE
from tests.helpers import RBEE, eventually
from tests.queen.conftest import start_queen
from tests.queen.fake_worker import QUEEN_SECRETS, heartbeat
from tests.queen.test_keys import bearer


async def test_the_local_hive_refuses_an_unauthenticated_spawn(
    nursery: trio.Nursery, queen_config: QueenConfig
) -> None:
    # A real hive process on a loaded machine can take a while to answer.
    async with httpx.AsyncClient(timeout=60) as http:
        await _refuses_unauthenticated(nursery, queen_config, http)


async def _refuses_unauthenticated(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, hive_start_timeout_s=60.0)
    queen = await start_queen(nursery, config, local_hive=RBEE)

    async def hive_url() -> str:
        hives = (await http.get(f"{queen.url}/v1/hives")).json()["hives"]
        online = [h for h in hives if h["name"] == LOCAL_HIVE and h["status"] == "online"]
        return str(online[0]["url"]) if online else ""

    async def reported() -> bool:
        return bool(await hive_url())

    await eventually(reported, within=60, what="the local hive reports")
    url = await hive_url()
    token = hive_token(QUEEN_SECRETS[queen.url], LOCAL_HIVE)
    spawn = {"model": "no-such-model", "device": "cpu"}
    for headers in ({}, bearer("guess"), bearer(QUEEN_SECRETS[queen.url])):
        refused = await http.post(f"{url}/v1/workers", json=spawn, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"]["code"] == "invalid_api_key"
        listed = await http.get(f"{url}/v1/workers", headers=headers)
        assert listed.status_code == 401, (headers, listed.status_code, listed.text)
    assert (await http.get(f"{url}/health")).status_code == 200
    # With its token the call gets through, to a refusal about the model itself.
    allowed = await http.post(f"{url}/v1/workers", json=spawn, headers=bearer(token))
    assert allowed.status_code not in (401, 403), allowed.text
    assert "no-such-model" in allowed.json()["error"]["message"]
    # The queen reaches it with that token: listing its workers through the queen works.
    assert (await http.get(f"{queen.url}/v1/workers")).status_code == 200
    # The token came through the environment: no process's command line shows it.
    for proc in psutil.Process().children(recursive=True):
        assert token not in " ".join(proc.cmdline())
    await queen.shutdown()


async def test_a_heartbeat_without_a_credential_is_refused_even_from_loopback(
    queen_config: QueenConfig, nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, queen_config)
    beat = wire.encode(heartbeat("hive-x", []))
    refused = await http.post(f"{queen.url}/v1/heartbeat", content=beat)
    assert refused.status_code == 401
    wrong = await http.post(f"{queen.url}/v1/heartbeat", content=beat, headers=bearer("guess"))
    assert wrong.status_code == 401
    exited = await http.post(f"{queen.url}/v1/workers/w/exited", content=b"{}")
    assert exited.status_code == 401
    other = hive_token(QUEEN_SECRETS[queen.url], "hive-y")
    impostor = await http.post(f"{queen.url}/v1/heartbeat", content=beat, headers=bearer(other))
    assert impostor.status_code == 403
    assert impostor.json()["error"]["code"] == "wrong_hive"
    own = hive_token(QUEEN_SECRETS[queen.url], "hive-x")
    accepted = await http.post(f"{queen.url}/v1/heartbeat", content=beat, headers=bearer(own))
    assert accepted.status_code == 204
    hives = (await http.get(f"{queen.url}/v1/hives")).json()["hives"]
    assert [h["name"] for h in hives] == ["hive-x"]


SECRET = "s" * 43


def test_hive_tokens_name_their_hive_and_generation() -> None:
    token = hive_token(SECRET, "gpu1.lab")
    assert token_hive(SECRET, token) == ("gpu1.lab", 0)
    assert token_hive("t" * 43, token) is None
    assert token_hive(SECRET, token.replace("gpu1.lab", "gpu2.lab")) is None
    assert token_hive(SECRET, "rbeeh_nodot") is None
    # A name that ends in digits after a dot stays one name, at every generation.
    assert token_hive(SECRET, hive_token(SECRET, "10.0.0.5")) == ("10.0.0.5", 0)
    third = hive_token(SECRET, "10.0.0.5", 3)
    assert third.startswith("rbeeh_10.0.0.5~3.")
    assert token_hive(SECRET, third) == ("10.0.0.5", 3)
    # Each generation has its own HMAC: the number cannot be changed on a token.
    assert token_hive(SECRET, third.replace("~3.", "~4.")) is None
    for spelling in ("~03.", "~0.", "~.", "~-3.", "~\u0663."):
        assert token_hive(SECRET, third.replace("~3.", spelling)) is None, spelling


def test_a_rotated_token_refuses_the_old_one_also_after_a_restart(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "queen.db")
    tokens = HiveTokens(SECRET, conn)
    old, other = tokens.token("gpu1"), tokens.token("gpu2")
    assert old == hive_token(SECRET, "gpu1")
    assert tokens.hive(old) == "gpu1"
    new = tokens.rotate("gpu1")
    assert new != old
    assert tokens.token("gpu1") == new
    assert tokens.hive(new) == "gpu1"
    with pytest.raises(AuthError, match="replaced by a newer one at an upgrade") as refused:
        tokens.hive(old)
    assert refused.value.status == 401
    assert tokens.hive(other) == "gpu2"
    # A token of a generation this queen never made is no token of its.
    assert tokens.hive(hive_token(SECRET, "gpu1", 2)) is None
    conn.close()

    again = HiveTokens(SECRET, open_db(tmp_path / "queen.db"))
    assert again.token("gpu1") == new
    assert again.hive(new) == "gpu1"
    with pytest.raises(AuthError, match="replaced"):
        again.hive(old)
    assert again.hive(other) == "gpu2"
    newest = again.rotate("gpu1")
    with pytest.raises(AuthError, match="replaced"):
        again.hive(new)
    assert again.hive(newest) == "gpu1"
    # What a hive started by hand on the queen's host reads to make its own token.
    assert hive_epoch(tmp_path / "queen.db", "gpu1") == 2
    assert hive_epoch(tmp_path / "queen.db", "gpu2") == 0
    assert hive_epoch(tmp_path / "none.db", "gpu1") == 0
    assert not (tmp_path / "none.db").exists()


async def test_the_queen_refuses_a_replaced_hive_token_with_a_reason(
    queen_config: QueenConfig, nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    conn = open_db(queen_config.db)
    # A generation made by an earlier queen on this database (the secret does not enter it).
    HiveTokens("x" * 43, conn).rotate("hive-x")
    conn.close()
    queen = await start_queen(nursery, queen_config)
    secret = QUEEN_SECRETS[queen.url]
    beat = wire.encode(heartbeat("hive-x", []))
    old = hive_token(secret, "hive-x")
    refused = await http.post(f"{queen.url}/v1/heartbeat", content=beat, headers=bearer(old))
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert "hive hive-x's token was replaced by a newer one at an upgrade" in error["message"]
    current = hive_token(secret, "hive-x", 1)
    accepted = await http.post(f"{queen.url}/v1/heartbeat", content=beat, headers=bearer(current))
    assert accepted.status_code == 204, accepted.text
