"""The cluster routes' errors come from the one mapping (`rbee.server.error_parts`)."""

from __future__ import annotations

import httpx

from rbee import wire
from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import heartbeat, hive_auth


async def test_an_unreachable_hive_is_a_502_and_an_unknown_one_a_404(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    # The heartbeat names a hive URL where nothing listens.
    beat = wire.encode(heartbeat("hive-a", []))
    answer = await http.post(
        f"{queen.url}/v1/heartbeat", content=beat, headers=hive_auth(queen.url)
    )
    assert answer.status_code == 204
    down = await http.get(f"{queen.url}/v1/hives/hive-a/models")
    assert down.status_code == 502
    error = down.json()["error"]
    assert error["type"] == "server_error"
    assert "cannot reach the hive at http://127.0.0.1:1" in error["message"]
    unknown = await http.get(f"{queen.url}/v1/hives/hive-b/models")
    assert unknown.status_code == 404
    assert "no hive named 'hive-b'" in unknown.json()["error"]["message"]
