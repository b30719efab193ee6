"""The worker's HTTP API over a real socket (hypercorn on port 0), on the fake engine."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rbee.config import WorkerConfig
from rbee.worker import daemon
from rbee.worker.interfaces import EngineLike, TokenizerLike
from tests.helpers import eventually
from tests.worker.fakes import FakeEngine, FakeTokenizer
from tests.worker.served import Worker, start_worker


@pytest.fixture
async def slow_worker(nursery: trio.Nursery) -> AsyncIterator[Worker]:
    """One slot, no queue, no EOS, 20 ms per step: a generation holds its slot for seconds."""
    engine = FakeEngine(slots=1, context_length=4096, step_delay_s=0.02)
    w = await start_worker(nursery, engine, FakeTokenizer(stop_token_ids=()), queue_size=0)
    yield w
    await w.client.aclose()
    nursery.cancel_scope.cancel()


LONG = {"prompt": "a", "max_tokens": 2000, "temperature": 0}


async def test_dual_call_streams_started_tokens_finished_done(worker: Worker) -> None:
    sse_url = await worker.start({"prompt": "a", "max_tokens": 5, "temperature": 0})
    events = await worker.events(sse_url)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["type"] == "started"
    assert parsed[0]["step_ms"] >= 0
    tokens = [e for e in parsed if e["type"] == "token"]
    assert "".join(t["t"] for t in tokens) == "bcdef"
    assert [t["i"] for t in tokens] == list(range(5))
    assert [t["ids"] for t in tokens] == [[1], [2], [3], [4], [5]]
    finished = parsed[-1]
    assert finished["type"] == "finished"
    assert finished["finish_reason"] == "length"
    assert finished["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    assert finished["timings"]["ttft_ms"] >= finished["timings"]["prefill_ms"] >= 0
    # A stream is read once; afterwards the job is gone.
    r = await worker.client.get(sse_url)
    assert r.status_code == 404


async def test_one_call_answers_the_post_with_the_stream(worker: Worker) -> None:
    body = {"prompt": "a", "max_tokens": 3, "temperature": 0}
    headers = {"Accept": "text/event-stream"}
    async with worker.client.stream("POST", "/v1/inference", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        job_id = r.headers["rbee-job-id"]
        assert job_id.startswith("job-")
        events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    tokens = [json.loads(e)["t"] for e in events[:-1] if '"token"' in e]
    assert "".join(tokens) == "bcd"


async def test_a_one_call_stream_is_claimed_by_its_post(slow_worker: Worker) -> None:
    # A 2000-token job at 20 ms a step is still running when the second reader asks.
    w = slow_worker
    headers = {"Accept": "text/event-stream"}
    async with w.client.stream("POST", "/v1/inference", json=LONG, headers=headers) as r:
        job_id = r.headers["rbee-job-id"]
        assert (await w.client.get(f"/v1/inference/{job_id}/stream")).status_code == 409
        assert (await w.client.delete(f"/v1/inference/{job_id}")).status_code == 204


async def test_the_job_id_of_a_one_call_stream_cancels_it(slow_worker: Worker) -> None:
    w = slow_worker
    headers = {"Accept": "text/event-stream"}
    async with w.client.stream("POST", "/v1/inference", json=LONG, headers=headers) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith('data: {"type":"started"')
        d = await w.client.delete(f"/v1/inference/{r.headers['rbee-job-id']}")
        assert d.status_code == 204
        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [CANCELLED]"
    assert (await w.info())["slots_free"] == 1


async def test_chat_messages_and_stop_strings(worker: Worker) -> None:
    body = {"messages": [{"role": "user", "content": "a"}], "stop": ["ef"], "temperature": 0}
    events = await worker.events(await worker.start(body))
    text = "".join(json.loads(e)["t"] for e in events if '"token"' in e)
    assert text == "bcd"
    assert json.loads(events[-2])["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "a", "temperature": 5}, "temperature"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "exactly one"),
        ({}, "exactly one"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "role"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "a", "model": "other"}, "serves model 'fake'"),
        ({"prompt": ""}, "empty"),
        ({"prompt": "a" * 64}, "longer than the model's context of 64"),
    ],
)
async def test_bad_bodies_are_400_naming_the_problem(
    worker: Worker, body: dict[str, Any], expected: str
) -> None:
    r = await worker.client.post("/v1/inference", json=body)
    assert r.status_code == 400, r.text
    assert expected in r.json()["error"]["message"]
    assert (await worker.info())["slots_free"] == 2


async def test_not_json_is_400(worker: Worker) -> None:
    r = await worker.client.post("/v1/inference", content=b"{nope")
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


async def test_a_prompt_that_just_fits_the_context_runs(worker: Worker) -> None:
    events = await worker.events(await worker.start({"prompt": "a" * 63, "max_tokens": 9}))
    assert json.loads(events[-2])["finish_reason"] == "length"
    # The prefill fills 63 positions; one more token fits, then the context is full.
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 2


async def test_unknown_job_is_404(worker: Worker) -> None:
    r = await worker.client.get("/v1/inference/job-nope/stream")
    assert r.status_code == 404
    assert "job-nope" in r.json()["error"]["message"]
    r = await worker.client.delete("/v1/inference/job-nope")
    assert r.status_code == 404


async def test_delete_cancels_a_running_job_and_frees_its_slot(slow_worker: Worker) -> None:
    w = slow_worker
    sse_url = await w.start(LONG)
    job_id = sse_url.split("/")[3]
    await w.wait_slots_free(0)
    async with w.client.stream("GET", sse_url) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith('data: {"type":"started"')
        d = await w.client.delete(f"/v1/inference/{job_id}")
        assert d.status_code == 204
        assert (await w.info())["slots_free"] == 1
        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [CANCELLED]"
    assert not any("finished" in line for line in rest)
    assert w.engine.released == [0]


async def test_closing_the_stream_cancels_the_job(slow_worker: Worker) -> None:
    w = slow_worker
    sse_url = await w.start(LONG)
    # A plain socket, so that "the client went away" is exactly a closed connection.
    host, port = w.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {sse_url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while b'"token"' not in received:
            received += await stream.receive_some()
    assert received.startswith(b"HTTP/1.1 200")
    await w.wait_slots_free(1)
    assert w.engine.released == [0]


async def test_slots_and_queue_full_is_429_with_retry_after(slow_worker: Worker) -> None:
    w = slow_worker
    first = await w.start(LONG)
    r = await w.client.post("/v1/inference", json=LONG)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert "busy" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "queue_full"
    await w.client.delete(f"/v1/inference/{first.split('/')[3]}")
    await w.start({"prompt": "a", "max_tokens": 1})


async def test_waiting_jobs_run_when_a_slot_frees(nursery: trio.Nursery) -> None:
    engine = FakeEngine(slots=1, context_length=64)
    engine.gate.clear()
    w = await start_worker(nursery, engine, queue_size=2)
    urls = [await w.start({"prompt": p, "max_tokens": 3, "temperature": 0}) for p in "abc"]
    info = await w.info()
    assert (info["slots_free"], info["queue_depth"]) == (0, 2)
    r = await w.client.post("/v1/inference", json=LONG)
    assert r.status_code == 429
    engine.gate.set()
    texts = []
    for url in urls:
        events = await w.events(url)
        texts.append("".join(json.loads(e)["t"] for e in events if '"token"' in e))
    assert texts == ["bcd", "cde", "def"]
    await w.client.aclose()
    nursery.cancel_scope.cancel()


async def test_a_stream_never_opened_is_dropped_and_frees_its_slot(nursery: trio.Nursery) -> None:
    engine = FakeEngine(slots=1, context_length=4096, step_delay_s=0.02)
    w = await start_worker(
        nursery, engine, FakeTokenizer(stop_token_ids=()), unopened_timeout_s=0.3
    )
    sse_url = await w.start(LONG)
    await w.wait_slots_free(0)
    await w.wait_slots_free(1)
    r = await w.client.get(sse_url)
    assert r.status_code == 404
    await w.client.aclose()
    nursery.cancel_scope.cancel()


async def test_a_stream_has_one_reader(slow_worker: Worker) -> None:
    sse_url = await slow_worker.start(LONG)
    async with slow_worker.client.stream("GET", sse_url) as r:
        assert r.status_code == 200
        second = await slow_worker.client.get(sse_url)
        assert second.status_code == 409


async def test_loading_worker_says_so(nursery: trio.Nursery) -> None:
    w = await start_worker(nursery, FakeEngine(), ready=False)
    r = await w.client.get("/health")
    assert r.json() == {"status": "loading"}
    r = await w.client.post("/v1/inference", json={"prompt": "a"})
    assert r.status_code == 503
    assert "loading" in r.json()["error"]["message"]
    info = await w.info()
    assert (info["model"], info["provider"], info["slots_free"]) == ("fake", "", 0)
    await w.client.aclose()
    nursery.cancel_scope.cancel()


async def test_decode_failure_ends_the_stream_with_error(worker: Worker) -> None:
    worker.engine.fail_decode = True
    events = await worker.events(await worker.start({"prompt": "a", "max_tokens": 5}))
    assert events[-1] == "[ERROR] decode failed: fake decode failure"
    assert (await worker.info())["slots_free"] == 2


async def test_daemon_announces_address_then_readiness(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = trio.Event()
    proceed = threading.Event()

    def fake_load(
        model: str, config: WorkerConfig, models_dir: Path
    ) -> tuple[EngineLike, TokenizerLike, str]:
        assert (model, models_dir) == ("fake", tmp_path)
        proceed.wait(5)
        return FakeEngine(slots=config.slots), FakeTokenizer(), "FakeProvider"

    monkeypatch.setattr(daemon, "load_model", fake_load)
    out = io.StringIO()
    stop = trio.Event()

    async def run() -> None:
        await daemon.run_worker(
            "fake", WorkerConfig(port=0, slots=3), tmp_path, shutdown=stop.wait, out=out
        )
        loaded.set()

    nursery.start_soon(run)
    await eventually(lambda: bool(out.getvalue()), what="the worker's first line")
    first = out.getvalue().splitlines()[0]
    assert first.startswith("rbee worker listening on http://127.0.0.1:")
    url = first.rsplit(" ", 1)[1]
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).json() == {"status": "loading"}
        proceed.set()

        async def ready() -> bool:
            return bool((await client.get("/health")).json()["status"] == "ready")

        await eventually(ready, what="the worker ready")
        assert (
            out.getvalue().splitlines()[1] == "rbee worker ready model=fake provider=FakeProvider"
        )
        info = (await client.get("/v1/info")).json()
        assert (info["slots_total"], info["slots_free"], info["provider"]) == (3, 3, "FakeProvider")
    stop.set()
    with trio.fail_after(10):
        await loaded.wait()


async def test_a_failing_step_ends_its_jobs_and_the_worker_keeps_serving(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: FakeTokenizer, token_ids: Sequence[int]) -> str:
        raise KeyError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(FakeTokenizer, "decode", broken)
        events = await worker.events(await worker.start({"prompt": "a", "max_tokens": 5}))
    assert events[-1] == "[ERROR] internal error: KeyError: 'boom'"
    assert (await worker.info())["slots_free"] == 2
    events = await worker.events(await worker.start({"prompt": "a", "max_tokens": 2}))
    assert events[-1] == "[DONE]"
