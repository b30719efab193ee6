"""The web page's files, its session cookie and the cross-site guard (`rbee.queen.ui`)."""

from __future__ import annotations

import dataclasses
import re

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.queen.auth import SESSION_COOKIE, cross_site
from rbee.queen.keys import hive_token
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import QUEEN_SECRETS

TOKEN = "admin-token-for-the-page"


@pytest.fixture
async def guarded(nursery: trio.Nursery, queen_config: QueenConfig) -> QueenHandle:
    """A queen with an admin token: no caller is keyless, loopback neither."""
    return await start_queen(nursery, dataclasses.replace(queen_config, token=TOKEN))


async def test_the_page_and_every_module_it_imports_are_served(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    index = await http.get(f"{queen.url}/ui")
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    csp = index.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    # Follow the page's references and the modules' imports: each is there, with its type.
    pending = re.findall(r'(?:src|href)="/ui/([\w.]+)"', index.text)
    assert pending == ["style.css", "app.js"]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        answer = await http.get(f"{queen.url}/ui/{name}")
        assert answer.status_code == 200, name
        if name.endswith(".js"):
            assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
            pending += re.findall(r'from "\./([\w.]+)"', answer.text)
            # Nothing the page loads or calls lives on another host.
            assert not re.search(r"https?://", answer.text), name
    assert {"overview.js", "playground.js", "policy.js", "jobs.js", "models.js", "logs.js"} <= seen
    missing = await http.get(f"{queen.url}/ui/nothing.js")
    assert missing.status_code == 404
    assert "nothing.js" in missing.json()["error"]["message"]


async def test_a_keyless_loopback_caller_is_signed_in_already(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    session = await http.get(f"{queen.url}/ui/session")
    assert session.json() == {"kind": "local", "tenant": "", "platform": False}


async def test_a_key_entered_once_becomes_an_httponly_strict_cookie(
    guarded: QueenHandle, http: httpx.AsyncClient
) -> None:
    url = guarded.url
    assert (await http.get(f"{url}/ui/session")).json()["kind"] == "none"
    assert (await http.get(f"{url}/v1/status")).status_code == 401

    wrong = await http.post(f"{url}/ui/login", json={"key": "not-the-token"})
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers

    login = await http.post(f"{url}/ui/login", json={"key": TOKEN})
    assert login.status_code == 200
    assert login.json() == {"kind": "admin", "tenant": "", "platform": False}
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie

    # The client keeps the cookie: the API answers it like the header.
    assert (await http.get(f"{url}/v1/status")).status_code == 200
    assert (await http.get(f"{url}/ui/session")).json()["kind"] == "admin"
    out = await http.post(f"{url}/ui/logout")
    assert out.status_code == 204
    assert (await http.get(f"{url}/v1/status")).status_code == 401


async def test_an_api_key_signs_in_as_its_tenant_and_a_hive_token_not_at_all(
    guarded: QueenHandle, http: httpx.AsyncClient
) -> None:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    made = await http.post(
        f"{guarded.url}/v1/keys", json={"name": "alice", "tenant": "team-a"}, headers=admin
    )
    assert made.status_code == 201, made.text
    login = await http.post(f"{guarded.url}/ui/login", json={"key": made.json()["key"]})
    assert login.json() == {"kind": "key", "tenant": "team-a", "platform": False}
    # The key's routes, and only those.
    assert (await http.get(f"{guarded.url}/v1/jobs")).status_code == 200
    assert (await http.get(f"{guarded.url}/v1/status")).status_code == 403

    hive = hive_token(QUEEN_SECRETS[guarded.url], "local")
    refused = await http.post(f"{guarded.url}/ui/login", json={"key": hive})
    assert refused.status_code == 403
    assert "hive" in refused.json()["error"]["message"]


async def test_a_cookie_does_not_act_for_a_page_on_another_site(
    guarded: QueenHandle, http: httpx.AsyncClient
) -> None:
    url = guarded.url
    assert (await http.post(f"{url}/ui/login", json={"key": TOKEN})).status_code == 200
    body = {"name": "bob"}
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        refused = await http.post(f"{url}/v1/keys", json=body, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["code"] == "cross_site"
    # The page's own requests pass.
    same = {"Sec-Fetch-Site": "same-origin", "Origin": url}
    assert (await http.post(f"{url}/v1/keys", json=body, headers=same)).status_code == 201
    # Reading stays allowed: a browser never sends SameSite=Strict cookies cross-site anyway.
    assert (await http.get(f"{url}/v1/keys", headers={"Sec-Fetch-Site": "cross-site"})).is_success


async def test_a_keyless_loopback_queen_refuses_jobs_from_another_site(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    job = {"operation": "infer", "model": "fake-model", "prompt": "hi"}
    refused = await http.post(
        f"{queen.url}/v1/jobs", json=job, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "cross_site"
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    refused = await http.post(
        f"{queen.url}/v1/chat/completions", json=chat, headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("method", "authorization", "fetch_site", "origin", "expected"),
    [
        ("POST", "", "cross-site", None, True),
        ("POST", "", "same-site", None, True),
        ("POST", "", "same-origin", "http://q:7833", False),
        ("POST", "", "none", None, False),
        ("POST", "", None, "http://other:7833", True),
        ("POST", "", None, "http://q:7833", False),
        ("POST", "", None, None, False),
        ("DELETE", "", "cross-site", None, True),
        ("GET", "", "cross-site", None, False),
        ("POST", "Bearer k", "cross-site", None, False),
    ],
)
def test_cross_site_is_told_by_fetch_site_then_origin(
    method: str, authorization: str, fetch_site: str | None, origin: str | None, expected: bool
) -> None:
    assert cross_site(method, authorization, fetch_site, origin, "q:7833") is expected
