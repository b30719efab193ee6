"""Per-key quotas: the counters on trio's clock, then a real queen with the official openai client.

The queen's tests run on trio's `MockClock` at rate 0 (``mock_clock``): its minute passes only when
a test jumps it. An autojumping clock would also jump while the queen waits for real sockets, so a
window could end in the middle of a test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import openai
import pytest
import trio
import trio.testing

from rbee.config import QueenConfig
from rbee.errors import QuotaError, UsageError
from rbee.queen.db import open_db
from rbee.queen.keys import KeyRecord, KeyStore
from rbee.queen.quotas import WINDOW_S, Quotas
from rbee.wire.queen import KeyCreate
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import FakeWorker, register
from tests.queen.test_keys import bearer, create_key, secret

TENANT_QUOTA = Path(__file__).resolve().parents[2] / "policies" / "tenant_quota.rhai"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def key(rpm: int = 0, tpm: int = 0) -> KeyRecord:
    return KeyRecord(name="k", hash="h", tenant="t", rpm=rpm, tpm=tpm)


# --- the counters --------------------------------------------------------------------------------


async def test_requests_per_minute_reset_when_the_minute_ends(
    autojump_clock: trio.abc.Clock,
) -> None:
    quotas, k = Quotas(), key(rpm=2)
    quotas.admit(k, 10).end(10)
    await trio.sleep(30)
    quotas.admit(k, 10).end(10)
    with pytest.raises(QuotaError) as over:
        quotas.admit(k, 10)
    assert over.value.status == 429
    assert over.value.retry_after == 30
    assert over.value.headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "30s",
    }
    await trio.sleep(30)
    quotas.admit(k, 10)


async def test_tokens_are_reserved_then_corrected_at_the_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    quotas, k = Quotas(), key(tpm=100)
    first = quotas.admit(k, 80)
    with pytest.raises(QuotaError) as over:
        quotas.admit(k, 30)
    assert over.value.headers is not None
    assert over.value.headers["x-ratelimit-remaining-tokens"] == "20"
    first.end(12)
    quotas.admit(k, 30)
    assert quotas.headers(k)["x-ratelimit-remaining-tokens"] == "58"
    with pytest.raises(UsageError) as alone:
        quotas.admit(k, 101)
    assert alone.value.param == "max_tokens"


async def test_a_correction_after_the_minute_ended_leaves_the_new_one_alone(
    autojump_clock: trio.abc.Clock,
) -> None:
    quotas, k = Quotas(), key(tpm=100)
    late = quotas.admit(k, 90)
    await trio.sleep(WINDOW_S)
    quotas.admit(k, 40)
    late.end(3)
    assert quotas.headers(k)["x-ratelimit-remaining-tokens"] == "60"


async def test_concurrent_jobs_and_tenant_sums(autojump_clock: trio.abc.Clock) -> None:
    quotas = Quotas()
    one = KeyRecord(name="a", hash="a", tenant="acme", concurrent=1, rpm=10)
    two = KeyRecord(name="b", hash="b", tenant="acme", concurrent=2)
    ticket = quotas.admit(one, 5)
    with pytest.raises(QuotaError) as busy:
        quotas.admit(one, 5)
    assert busy.value.retry_after == 1
    quotas.admit(two, 7)
    (acme, idle) = quotas.tenants({"acme": (0, 0, 3), "idle": (5, 0, 0)})
    assert (acme.requests, acme.tokens, acme.concurrent) == (2, 12, 2)
    assert (acme.rpm, acme.tpm, acme.max_concurrent) == (0, 0, 3)
    assert (idle.name, idle.requests, idle.rpm) == ("idle", 0, 5)
    ticket.end(None)
    quotas.admit(one, 5)
    await trio.sleep(WINDOW_S)
    # A new minute: the requests are gone, the jobs still running are not.
    (acme,) = quotas.tenants({})
    assert (acme.requests, acme.tokens, acme.concurrent) == (0, 0, 2)


def test_a_tenants_limits_are_its_keys_summed() -> None:
    store = KeyStore(open_db(":memory:"))
    store.create(KeyCreate(name="a", tenant="acme", rpm=10, tpm=100, concurrent=1))
    store.create(KeyCreate(name="b", tenant="acme", rpm=5, concurrent=2))
    store.create(KeyCreate(name="c", tenant="free"))
    # b has no token limit, so neither has the tenant; a tenant without limits is left out.
    assert store.tenant_limits == {"acme": (15, 0, 3)}
    store.revoke("b")
    assert store.tenant_limits == {"acme": (10, 100, 1)}


# --- a real queen ----------------------------------------------------------------------------------


@pytest.fixture
async def queen(
    nursery: trio.Nursery, queen_config: QueenConfig, mock_clock: trio.testing.MockClock
) -> QueenHandle:
    return await start_queen(nursery, dataclasses.replace(queen_config, platform=True))


@pytest.fixture
async def worker(nursery: trio.Nursery, queen: QueenHandle) -> FakeWorker:
    fake = await FakeWorker(tokens=3).start(nursery)
    await register(queen.url, "hive-a", fake, token=secret(queen))
    return fake


async def test_openai_client_gets_a_rate_limit_error_with_the_headers(
    queen: QueenHandle,
    worker: FakeWorker,
    http: httpx.AsyncClient,
    mock_clock: trio.testing.MockClock,
) -> None:
    api_key = await create_key(http, queen, "alice", rpm=2)

    def chat() -> str:
        with openai.OpenAI(base_url=f"{queen.url}/v1", api_key=api_key, max_retries=0) as c:
            reply = c.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=3)
            return reply.choices[0].message.content or ""

    assert await trio.to_thread.run_sync(chat) == "tok0 tok1 tok2 "
    mock_clock.jump(20)
    assert await trio.to_thread.run_sync(chat) == "tok0 tok1 tok2 "
    with pytest.raises(openai.RateLimitError) as limited:
        await trio.to_thread.run_sync(chat)
    headers = limited.value.response.headers
    assert limited.value.code == "rate_limit_exceeded"
    assert headers["retry-after"] == "40"
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "40s"
    mock_clock.jump(40)
    assert await trio.to_thread.run_sync(chat) == "tok0 tok1 tok2 "


async def test_tokens_per_minute_on_the_jobs_api(
    queen: QueenHandle, worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    api_key = await create_key(http, queen, "bob", tpm=100)
    # "hello there" counts 2 prompt tokens at admission (and the fake worker reports 2).
    job = {"operation": "infer", "model": "fake-model", "prompt": "hello there"}
    sse = {**bearer(api_key), "Accept": "text/event-stream"}
    first = await http.post(f"{queen.url}/v1/jobs", json={**job, "max_tokens": 40}, headers=sse)
    assert first.status_code == 200
    assert first.text.endswith("data: [DONE]\n\n")
    # Its 42 reserved tokens became the 5 it used: 95 are left.
    hold = worker.hold = trio.Event()
    second = await http.post(
        f"{queen.url}/v1/jobs", json={**job, "max_tokens": 90}, headers=bearer(api_key)
    )
    assert second.status_code == 202
    over = await http.post(f"{queen.url}/v1/jobs", json={**job, "max_tokens": 10}, headers=sse)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert over.headers["x-ratelimit-limit-tokens"] == "100"
    assert over.headers["x-ratelimit-remaining-tokens"] == "3"
    assert over.headers["x-ratelimit-reset-tokens"] == "60s"
    assert "x-ratelimit-limit-requests" not in over.headers
    too_big = await http.post(f"{queen.url}/v1/jobs", json={**job, "max_tokens": 200}, headers=sse)
    assert too_big.status_code == 400
    assert too_big.json()["error"]["param"] == "max_tokens"
    hold.set()


async def test_concurrent_jobs_of_a_key(
    queen: QueenHandle, worker: FakeWorker, http: httpx.AsyncClient
) -> None:
    api_key = await create_key(http, queen, "carol", concurrent=1)
    job = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 3}
    hold = worker.hold = trio.Event()
    running = await http.post(f"{queen.url}/v1/jobs", json=job, headers=bearer(api_key))
    assert running.status_code == 202
    busy = await http.post(
        f"{queen.url}/v1/completions",
        json={"model": "fake-model", "prompt": "hi"},
        headers=bearer(api_key),
    )
    assert busy.status_code == 429
    assert busy.headers["retry-after"] == "1"
    hold.set()
    worker.hold = None
    stream = f"{queen.url}/v1/jobs/{running.json()['job_id']}/stream"
    assert (await http.get(stream, headers=bearer(api_key))).text.endswith("[DONE]\n\n")
    again = await http.post(f"{queen.url}/v1/jobs", json=job, headers=bearer(api_key))
    assert again.status_code == 202


async def test_a_policy_file_sees_the_tenants_quota_use(
    nursery: trio.Nursery,
    queen_config: QueenConfig,
    http: httpx.AsyncClient,
    mock_clock: trio.testing.MockClock,
) -> None:
    config = dataclasses.replace(queen_config, platform=True, policy=str(TENANT_QUOTA))
    queen = await start_queen(nursery, config)
    fake = await FakeWorker(tokens=2).start(nursery)
    await register(queen.url, "hive-a", fake, token=secret(queen))
    api_key = await create_key(http, queen, "dora", rpm=1)
    job = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 2}
    answer = await http.post(f"{queen.url}/v1/jobs", json=job, headers=bearer(api_key))
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]
    # Its request used the tenant's minute up: the policy holds the job until the next one.
    decisions = await http.get(
        f"{queen.url}/v1/decisions", params={"job_id": job_id}, headers=bearer(secret(queen))
    )
    (first,) = decisions.json()["decisions"]
    assert first["kind"] == "queue"
    assert "tenant dora is over its quota" in " ".join(first["reasons"])
    assert first["snapshot"]["tenants"] == [
        {
            "name": "dora",
            "requests": 1,
            "tokens": 2,
            "concurrent": 1,
            "rpm": 1,
            "tpm": 0,
            "max_concurrent": 0,
        }
    ]
    assert fake.posts == []
    mock_clock.jump(WINDOW_S)
    stream = await http.get(f"{queen.url}/v1/jobs/{job_id}/stream", headers=bearer(api_key))
    assert stream.text.endswith("data: [DONE]\n\n")
    assert len(fake.posts) == 1
