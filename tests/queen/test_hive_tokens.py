"""Hive tokens: the local hive takes only the token its queen made for it; hives must report with
a credential, loopback or not. A real queen starts a real local hive process here."""

from __future__ import annotations

import dataclasses

import httpx
import psutil
import trio

from rbee import wire
from rbee.config import QueenConfig
from rbee.queen.keys import hive_token
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
