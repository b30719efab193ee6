"""What every daemon's HTTP side shares: token checks and the JSON error shape."""

from __future__ import annotations

import pytest

from rbee.errors import ConfigError
from rbee.server import create_app, is_loopback, require_token


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert is_loopback(host)
    require_token(host, "", "worker", "worker.token")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "gpu1.lan"])
def test_other_hosts_need_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve the hive on .* hive\.token"):
        require_token(host, "", "hive", "hive.token")
    require_token(host, "t", "hive", "hive.token")


async def test_a_token_guards_every_route_but_health() -> None:
    app = create_app("test", token="s3cret")

    @app.get("/v1/thing")
    async def thing() -> dict[str, bool]:
        return {"ok": True}

    client = app.test_client()
    denied = await client.get("/v1/thing")
    assert denied.status_code == 401
    assert "Bearer" in (await denied.get_json())["error"]["message"]
    wrong = await client.get("/v1/thing", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    allowed = await client.get("/v1/thing", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200
    assert (await client.get("/health")).status_code == 404  # open (not 401), just not defined here


async def test_unknown_route_is_a_json_404() -> None:
    client = create_app("test").test_client()
    response = await client.get("/v1/nope")
    assert response.status_code == 404
    assert "error" in await response.get_json()
