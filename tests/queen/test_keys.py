"""API keys on a real queen over HTTP: the cluster secret, key management, who may call what."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import stat
import time
from pathlib import Path

import httpx
import openai
import pytest
import trio

from rbee.config import QueenConfig
from rbee.queen.keys import SECRET_FILE, key_hash
from tests.queen.conftest import QueenHandle, read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, register

JOB = {"operation": "infer", "model": "fake-model", "prompt": "hello there", "max_tokens": 3}
SSE = {"Accept": "text/event-stream"}


def secret(queen: QueenHandle) -> str:
    return (Path(queen.config.db).parent / SECRET_FILE).read_text().strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_key(http: httpx.AsyncClient, queen: QueenHandle, name: str, **spec: object) -> str:
    response = await http.post(
        f"{queen.url}/v1/keys", json={"name": name, **spec}, headers=bearer(secret(queen))
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


@pytest.fixture
async def platform(nursery: trio.Nursery, queen_config: QueenConfig) -> QueenHandle:
    queen = await start_queen(nursery, dataclasses.replace(queen_config, platform=True))
    worker = await FakeWorker(tokens=3).start(nursery)
    await register(queen.url, "hive-a", worker, token=secret(queen))
    return queen


async def test_the_cluster_secret_is_made_once_and_private(
    nursery: trio.Nursery, queen_config: QueenConfig
) -> None:
    first = await start_queen(nursery, queen_config)
    made = secret(first)
    mode = (Path(queen_config.db).parent / SECRET_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert len(made) >= 43
    await first.shutdown()
    again = await start_queen(nursery, queen_config)
    assert secret(again) == made


async def test_a_key_is_shown_once_and_only_its_hash_is_kept(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    key = await create_key(http, queen, "alice", tenant="acme", rpm=5, models=["fake-model"])
    assert re.fullmatch(r"rbee_[A-Za-z0-9_-]{43}", key)
    with sqlite3.connect(queen.config.db) as conn:
        rows = conn.execute("SELECT * FROM keys").fetchall()
    assert len(rows) == 1
    assert key not in repr(rows)
    assert key_hash(key) in rows[0]
    listed = (await http.get(f"{queen.url}/v1/keys")).json()["keys"]
    assert [(k["name"], k["tenant"], k["rpm"], k["models"]) for k in listed] == [
        ("alice", "acme", 5, ["fake-model"])
    ]
    assert key not in str(listed)


async def test_key_names_are_checked_and_unique(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    await create_key(http, queen, "bob")
    again = await http.post(f"{queen.url}/v1/keys", json={"name": "bob"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "key_exists"
    bad = await http.post(f"{queen.url}/v1/keys", json={"name": "no spaces"})
    assert bad.status_code == 400
    assert "$.name" in bad.json()["error"]["message"]
    past = await http.post(f"{queen.url}/v1/keys", json={"name": "old", "expires_at": 1.0})
    assert past.status_code == 400
    assert "expires_at" in past.json()["error"]["message"]


async def test_platform_mode_needs_a_key_from_loopback_too(
    platform: QueenHandle, http: httpx.AsyncClient
) -> None:
    refused = await http.post(f"{platform.url}/v1/jobs", json=JOB, headers=SSE)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    wrong = await http.post(f"{platform.url}/v1/jobs", json=JOB, headers={**SSE, **bearer("x")})
    assert wrong.status_code == 401
    key = await create_key(http, platform, "carol")
    async with http.stream(
        "POST", f"{platform.url}/v1/jobs", json=JOB, headers={**SSE, **bearer(key)}
    ) as answer:
        assert answer.status_code == 200
        body = (await answer.aread()).decode()
    assert body.endswith("data: [DONE]\n\n")
    assert "tok2" in body
    job_id = answer.headers["rbee-job-id"]
    info = (await http.get(f"{platform.url}/v1/jobs/{job_id}", headers=bearer(key))).json()
    assert info["tenant"] == "carol"
    # The policy saw the job as the tenant's.
    decisions = await http.get(
        f"{platform.url}/v1/decisions", params={"job_id": job_id}, headers=bearer(secret(platform))
    )
    assert [d["job"]["tenant"] for d in decisions.json()["decisions"]] == ["carol"]


async def test_a_key_may_not_manage_keys_or_the_cluster(
    platform: QueenHandle, http: httpx.AsyncClient
) -> None:
    key = await create_key(http, platform, "dave")
    for method, path in (("GET", "/v1/keys"), ("GET", "/v1/hives"), ("GET", "/v1/status")):
        answer = await http.request(method, f"{platform.url}{path}", headers=bearer(key))
        assert answer.status_code == 403, path
        assert answer.json()["error"]["code"] == "admin_only"
    beat = await http.post(f"{platform.url}/v1/heartbeat", content=b"{}", headers=bearer(key))
    assert beat.status_code == 403


async def test_a_revoked_or_expired_key_is_refused(
    platform: QueenHandle, http: httpx.AsyncClient
) -> None:
    key = await create_key(http, platform, "erin")
    soon = await create_key(http, platform, "frank", expires_at=time.time() + 0.5)
    ok = await http.post(f"{platform.url}/v1/jobs", json=JOB, headers=bearer(key))
    assert ok.status_code == 202
    revoked = await http.delete(f"{platform.url}/v1/keys/erin", headers=bearer(secret(platform)))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    after = await http.post(f"{platform.url}/v1/jobs", json=JOB, headers=bearer(key))
    assert after.status_code == 401
    # The expiry is wall-clock time (it is stored as Unix seconds), so this waits for it.
    await trio.sleep(0.6)
    expired = await http.post(f"{platform.url}/v1/jobs", json=JOB, headers=bearer(soon))
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]
    missing = await http.delete(f"{platform.url}/v1/keys/nobody", headers=bearer(secret(platform)))
    assert missing.status_code == 404


async def test_a_tenant_sees_only_its_own_jobs(
    platform: QueenHandle, http: httpx.AsyncClient
) -> None:
    mine = await create_key(http, platform, "gina", tenant="one")
    theirs = await create_key(http, platform, "hank", tenant="two")
    job_id = (await http.post(f"{platform.url}/v1/jobs", json=JOB, headers=bearer(mine))).json()[
        "job_id"
    ]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/stream"):
        other = await http.get(f"{platform.url}{path}", headers=bearer(theirs))
        assert other.status_code == 404, path
    listed = (await http.get(f"{platform.url}/v1/jobs", headers=bearer(theirs))).json()["jobs"]
    assert listed == []
    own = (await http.get(f"{platform.url}/v1/jobs", headers=bearer(mine))).json()["jobs"]
    assert [j["id"] for j in own] == [job_id]
    async with httpx.AsyncClient(headers=bearer(mine)) as client:
        payloads = await read_stream(client, f"{platform.url}/v1/jobs/{job_id}/stream")
    assert payloads[-1] == "[DONE]"


async def test_openai_client_errors_for_bad_keys_and_models(
    platform: QueenHandle, http: httpx.AsyncClient
) -> None:
    key = await create_key(http, platform, "ivy", models=["other-model"])

    def call(api_key: str) -> None:
        with openai.OpenAI(base_url=f"{platform.url}/v1", api_key=api_key, max_retries=0) as client:
            client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}]
            )

    with pytest.raises(openai.AuthenticationError) as unknown:
        await trio.to_thread.run_sync(call, "rbee_" + "x" * 43)
    assert unknown.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await trio.to_thread.run_sync(call, key)
    assert denied.value.code == "model_not_allowed"
    assert "other-model" in denied.value.message


async def test_home_mode_loopback_needs_no_key_but_a_bad_rbee_key_is_refused(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=2).start(nursery)
    await register(queen.url, "hive-a", worker)
    keyless = await http.post(f"{queen.url}/v1/jobs", json=JOB)
    assert keyless.status_code == 202
    # OpenAI's clients send some key even where none is needed: it counts as none.
    unused = await http.post(f"{queen.url}/v1/jobs", json=JOB, headers=bearer("unused"))
    assert unused.status_code == 202
    unknown = await http.post(f"{queen.url}/v1/jobs", json=JOB, headers=bearer("rbee_nope"))
    assert unknown.status_code == 401


async def test_a_queen_with_a_token_lets_no_one_in_without_it(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, dataclasses.replace(queen_config, token="t" * 24))
    assert (await http.get(f"{queen.url}/v1/keys")).status_code == 401
    assert (await http.get(f"{queen.url}/v1/keys", headers=bearer("t" * 24))).status_code == 200
    # The cluster secret is the other admin credential.
    assert (
        await http.get(f"{queen.url}/v1/keys", headers=bearer(secret(queen)))
    ).status_code == 200
