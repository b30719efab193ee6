"""Bad input on every hive route: a 4xx JSON error naming what was wrong, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from rbee.config import HiveConfig
from rbee.errors import ConfigError
from rbee.hive.app import create_hive_app
from rbee.hive.daemon import run_hive
from tests.helpers import assert_body_limit, raw_http
from tests.hive.conftest import Hive, start_hive

ROUTES = [
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/shutdown"),
    ("GET", "/v1/status"),
    ("GET", "/v1/workers"),
    ("POST", "/v1/workers"),
    ("GET", "/v1/workers/w1"),
    ("GET", "/v1/workers/w1/log"),
    ("DELETE", "/v1/workers/w1"),
    ("GET", "/v1/models"),
    ("DELETE", "/v1/models/m"),
    ("POST", "/v1/models/pull"),
    ("GET", "/v1/store/models"),
    ("GET", "/v1/store/models/m"),
    ("GET", "/v1/store/models/m/files/f"),
]
_EXAMPLE = {"<worker_id>": "w1", "<name>": "m", "<filename>": "f"}
# The routes with a body: one whose one field is wrong, that field, a string field it reads.
BODIES = [
    ("/v1/workers", {"model": "tiny", "slots": 0}, "slots", "model"),
    ("/v1/models/pull", {"name": "x", "source": ""}, "source", "name"),
]


def example(rule: str) -> str:
    for key, value in _EXAMPLE.items():
        rule = rule.replace(key, value)
    return rule


async def test_every_route_is_in_the_list(hive: Hive) -> None:
    app = create_hive_app(hive.state)
    rules = {
        (m, example(r.rule))
        for r in app.url_map.iter_rules()
        for m in r.methods or ()
        if m not in ("HEAD", "OPTIONS") and r.endpoint != "static"
    }
    assert rules == set(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_body_over_the_limit_is_413_unread(hive: Hive, method: str, path: str) -> None:
    await assert_body_limit(hive.state.url, method, path)


@pytest.mark.parametrize(("path", "body", "param", "field"), BODIES)
async def test_a_bad_body_is_400_naming_the_field(
    hive: Hive, path: str, body: dict[str, object], param: str, field: str
) -> None:
    for content, message, named in [
        (b"{nope", "not valid JSON", None),
        (b'{"' + field.encode() + b'": "caf\xe9"}', "not UTF-8", None),
    ]:
        r = await hive.client.post(path, content=content)
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == named
    r = await hive.client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert hive.state.supervisor.statuses() == []


@pytest.mark.parametrize("name", ["Bad", "a..b", "-x", "x" * 81])
async def test_an_unsafe_model_name_is_400(hive: Hive, name: str) -> None:
    r = await hive.client.delete(f"/v1/models/{name}")
    assert r.status_code == 400, r.text
    assert "invalid model name" in r.json()["error"]["message"]


async def test_an_empty_bearer_never_matches(
    nursery: trio.Nursery, tmp_path: Path, hive: Hive
) -> None:
    guarded = await start_hive(nursery, tmp_path / "guarded", hive.state.queen_url, token="h" * 32)
    for header in (b"Bearer ", b"Bearer", b""):
        head = b"GET /v1/workers HTTP/1.1\r\nHost: h\r\nAuthorization: %s\r\n\r\n" % header
        with trio.fail_after(10):
            status_line, _ = await raw_http(guarded.state.url, head)
        assert status_line == b"HTTP/1.1 401 ", header
    guarded.stop.set()
    await guarded.stopped.wait()


@pytest.mark.parametrize("token", ["short", " " * 20, "x" * 15])
async def test_a_short_or_blank_token_is_refused_at_start(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError, match="at least 16 characters, without spaces"):
        await run_hive(HiveConfig(token=token), tmp_path / "m", tmp_path / "s")
