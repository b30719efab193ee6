"""The jobs API end to end through a real queen and fake workers over real HTTP."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator

import httpx
import trio

from tests.queen.conftest import QueenHandle, read_stream
from tests.queen.fake_worker import FakeWorker, hive_auth, register


async def submit(
    http: httpx.AsyncClient,
    queen: QueenHandle,
    headers: dict[str, str] | None = None,
    /,
    **body: object,
) -> httpx.Response:
    payload = {"operation": "infer", "model": "fake-model", "prompt": "hello there", **body}
    return await http.post(f"{queen.url}/v1/jobs", json=payload, headers=headers)


async def test_job_is_relayed_and_recorded(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=5).start(nursery)
    await register(queen.url, "hive-a", worker)
    response = await submit(http, queen, max_tokens=50, seed=7, stop=["x"])
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["job_id"].startswith("job-")
    assert accepted["sse_url"] == f"/v1/jobs/{accepted['job_id']}/stream"

    payloads = await read_stream(http, queen.url + accepted["sse_url"])
    events = [json.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == "[DONE]"
    assert [e["type"] for e in events] == ["started"] + ["token"] * 5 + ["finished"]
    assert "".join(e["t"] for e in events if e["type"] == "token") == "tok0 tok1 tok2 tok3 tok4 "
    assert events[-1]["usage"]["completion_tokens"] == 5
    sent = worker.posts[0]
    assert (sent.prompt, sent.max_tokens, sent.seed, sent.stop) == ("hello there", 50, 7, ["x"])

    record = (await http.get(f"{queen.url}/v1/jobs/{accepted['job_id']}")).json()
    assert record["state"] == "completed"
    assert record["worker"] == worker.id
    assert record["attempts"] == 1
    assert (record["tokens_in"], record["tokens_out"]) == (2, 5)
    assert record["finish_reason"] == "stop"
    assert record["ttft_ms"] is not None
    assert record["queue_wait_ms"] is not None
    assert record["decision"]["kind"] == "route"
    assert record["decision"]["target"] == worker.id
    assert any("first-available chose" in r for r in record["decision"]["reasons"])
    assert record["attempt_log"][0]["worker"] == worker.id


async def test_a_job_without_a_seed_gets_one_from_the_queen_and_keeps_it(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=1).start(nursery)
    await register(queen.url, "hive-a", worker)
    for _ in range(2):
        accepted = (await submit(http, queen)).json()
        assert (await read_stream(http, queen.url + accepted["sse_url"]))[-1] == "[DONE]"
    seeds = [sent.seed for sent in worker.posts]
    assert None not in seeds
    assert len(set(seeds)) == 2
    db = sqlite3.connect(queen.config.db)
    stored = [
        json.loads(row[0])["seed"] for row in db.execute("SELECT request FROM jobs ORDER BY seq")
    ]
    assert stored == seeds


async def test_one_call_answers_the_post_with_the_jobs_stream(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(tokens=3).start(nursery)
    await register(queen.url, "hive-a", worker)
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 10}
    headers = {"Accept": "text/event-stream"}
    async with http.stream("POST", f"{queen.url}/v1/jobs", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        job_id = r.headers["rbee-job-id"]
        payloads = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    tokens = [json.loads(p)["t"] for p in payloads[:-1] if '"token"' in p]
    assert "".join(tokens) == "tok0 tok1 tok2 "
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert (record["state"], record["tokens_out"]) == ("completed", 3)


async def test_a_chunked_body_is_answered_by_the_app_route(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    # No Content-Length: the fast route passes the request to quart's own route, which streams too.
    worker = await FakeWorker(tokens=2).start(nursery)
    await register(queen.url, "hive-a", worker)
    body = json.dumps({"model": "fake-model", "prompt": "hi", "max_tokens": 10}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:10]
        yield body[10:]

    headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
    request = http.build_request("POST", f"{queen.url}/v1/jobs", content=chunks(), headers=headers)
    assert "content-length" not in request.headers
    response = await http.send(request, stream=True)
    try:
        assert response.status_code == 200
        assert response.headers["rbee-job-id"].startswith("job-")
        text = (await response.aread()).decode()
    finally:
        await response.aclose()
    assert '"t":"tok1 "' in text
    assert text.rstrip().endswith("data: [DONE]")
    # The same without Accept: quart's route answers with the job's id, as the fast route does.
    request = http.build_request("POST", f"{queen.url}/v1/jobs", content=chunks())
    accepted = await http.send(request)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["sse_url"] == f"/v1/jobs/{accepted.json()['job_id']}/stream"


async def test_one_call_errors_are_json_before_any_stream(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 0}
    headers = {"Accept": "text/event-stream"}
    r = await http.post(f"{queen.url}/v1/jobs", json=body, headers=headers)
    assert r.status_code == 400
    assert "max_tokens" in r.json()["error"]["message"]


async def test_bad_bodies_are_400_naming_the_field(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    cases: dict[str, dict[str, object]] = {
        "temperature": {"temperature": 5},
        "max_tokens": {"max_tokens": 0},
        "priority": {"priority": "urgent"},
        "operation": {"operation": "dance"},
        "prompt": {"messages": [{"role": "user", "content": "hi"}]},
    }
    for field, body in cases.items():
        response = await submit(http, queen, **body)
        assert response.status_code == 400, (field, response.text)
        error = response.json()["error"]
        assert field in error["message"], (field, error)
        assert error["type"] == "invalid_request_error"
    missing = await http.post(f"{queen.url}/v1/jobs", json={"operation": "infer"})
    assert missing.status_code == 400
    assert "model" in missing.json()["error"]["message"]
    not_json = await http.post(f"{queen.url}/v1/jobs", content=b"{nope")
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]["message"]
    bad_beat = await http.post(
        f"{queen.url}/v1/heartbeat", json={"hive": "h", "url": "x"}, headers=hive_auth(queen.url)
    )
    assert bad_beat.status_code == 400
    assert "host" in bad_beat.json()["error"]["message"]
    bad_state = await http.get(f"{queen.url}/v1/jobs", params={"state": "lost"})
    assert bad_state.status_code == 400
    assert "state" in bad_state.json()["error"]["message"]


async def test_unknown_job_is_404(queen: QueenHandle, http: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/jobs/job-nope"),
        ("GET", "/v1/jobs/job-nope/stream"),
        ("DELETE", "/v1/jobs/job-nope"),
    ]:
        response = await http.request(method, queen.url + path)
        assert response.status_code == 404, (method, path)
        assert "job-nope" in response.json()["error"]["message"]


async def test_a_model_nobody_serves_is_a_clear_error_at_once(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    await register(queen.url, "hive-a", await FakeWorker(model="other").start(nursery))
    for headers in ({}, {"Accept": "text/event-stream"}):
        response = await submit(http, queen, headers, model="llama-70b")
        assert response.status_code == 404
        assert "no worker serves model 'llama-70b'" in response.json()["error"]["message"]
    failed = (await http.get(f"{queen.url}/v1/jobs", params={"state": "failed"})).json()["jobs"]
    assert [j["model"] for j in failed] == ["llama-70b", "llama-70b"]


async def test_waiting_jobs_are_served_interactive_first_then_in_order(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(slots=1, tokens=3, hold=trio.Event()).start(nursery)
    await register(queen.url, "hive-a", worker)
    order = [
        ("first", "interactive"),
        ("b1", "batch"),
        ("i1", "interactive"),
        ("b2", "batch"),
        ("i2", "interactive"),
    ]
    ids = []
    for prompt, priority in order:
        response = await submit(http, queen, prompt=prompt, priority=priority)
        assert response.status_code == 202
        ids.append(response.json()["job_id"])
    queued = (await http.get(f"{queen.url}/v1/jobs", params={"state": "queued"})).json()["jobs"]
    assert len(queued) == 4
    status = (await http.get(f"{queen.url}/v1/status")).json()
    assert (status["queue_depth"], status["running"]) == (4, 1)
    assert worker.hold is not None
    # The last job was accepted before its answer arrived, and waits at least until the release.
    accepted_by = trio.current_time()
    await trio.sleep(0.03)
    waited_at_least_ms = (trio.current_time() - accepted_by) * 1000
    worker.hold.set()
    for job_id in ids:
        payloads = await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream")
        assert payloads[-1] == "[DONE]"
    assert [p.prompt for p in worker.posts] == ["first", "i1", "i2", "b1", "b2"]
    waited = (await http.get(f"{queen.url}/v1/jobs/{ids[-1]}")).json()
    assert waited["queue_wait_ms"] >= waited_at_least_ms - 1  # the record rounds to 1 ms
    assert waited["decision"]["kind"] == "route"


async def test_a_full_queue_answers_429_with_retry_after(
    nursery: trio.Nursery, queen_config: object, http: httpx.AsyncClient
) -> None:
    import dataclasses

    from rbee.config import QueenConfig
    from tests.queen.conftest import start_queen

    assert isinstance(queen_config, QueenConfig)
    queen = await start_queen(nursery, dataclasses.replace(queen_config, queue_size=2))
    worker = await FakeWorker(slots=1, tokens=50, delay=0.02).start(nursery)
    await register(queen.url, "hive-a", worker)
    accepted = [await submit(http, queen) for _ in range(3)]
    assert [r.status_code for r in accepted] == [202, 202, 202]
    refused = await submit(http, queen)
    streamed = await submit(http, queen, {"Accept": "text/event-stream"})
    for r in (refused, streamed):
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert "queue is full" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "queue_full"
    jobs = (await http.get(f"{queen.url}/v1/jobs")).json()["jobs"]
    assert len(jobs) == 3
    for r in accepted:
        await http.delete(f"{queen.url}/v1/jobs/{r.json()['job_id']}")


async def test_deadline_fails_a_job_that_waited_too_long(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker(slots=1, tokens=100, delay=0.01).start(nursery)
    await register(queen.url, "hive-a", worker)
    busy = (await submit(http, queen)).json()["job_id"]
    late = (await submit(http, queen, deadline_s=0.2)).json()["job_id"]
    payloads = await read_stream(http, f"{queen.url}/v1/jobs/{late}/stream")
    assert payloads[-1].startswith("[ERROR] deadline of 0.2 s passed")
    record = (await http.get(f"{queen.url}/v1/jobs/{late}")).json()
    assert record["state"] == "failed"
    assert len(worker.posts) == 1
    await http.delete(f"{queen.url}/v1/jobs/{busy}")


async def test_a_job_is_on_disk_before_its_client_hears_of_it(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    # The queen writes a started job's records after sending it to the worker, but always
    # before answering: a queen that dies after answering still has the job.
    worker = await FakeWorker(tokens=2).start(nursery)
    await register(queen.url, "hive-a", worker)

    def on_disk(job_id: str) -> tuple[str, str] | None:
        with sqlite3.connect(queen.config.db) as other:
            row = other.execute("SELECT state, worker FROM jobs WHERE id = ?", (job_id,))
            return row.fetchone()  # type: ignore[no-any-return]

    accepted = await submit(http, queen, max_tokens=2)
    assert accepted.status_code == 202, accepted.text
    assert on_disk(accepted.json()["job_id"]) == ("running", worker.id)
    headers = {"Accept": "text/event-stream"}
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 2}
    async with http.stream("POST", f"{queen.url}/v1/jobs", json=body, headers=headers) as r:
        assert on_disk(r.headers["rbee-job-id"]) is not None
        await r.aread()
