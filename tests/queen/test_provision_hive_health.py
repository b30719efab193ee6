"""A hive that stops heartbeating: offline after 3 intervals, its workers gone, its jobs retried."""

from __future__ import annotations

import json

import httpx
import trio

from rbee import wire
from tests.queen.conftest import QueenHandle, read_stream
from tests.queen.fake_worker import FakeWorker, heartbeat, hive_auth, register

INTERVAL_S = 0.2


async def test_a_job_on_a_silent_hive_is_retried_on_another_before_its_first_token(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    stuck = await FakeWorker(hold=trio.Event()).start(nursery)
    good = await FakeWorker().start(nursery)
    beat = heartbeat("fading", [stuck.status()], interval_s=INTERVAL_S)
    response = await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(beat), headers=hive_auth(queen.url)
    )
    assert response.status_code == 204
    await register(queen.url, "steady", good)

    body = {"operation": "infer", "model": "fake-model", "prompt": "hi"}
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=body)).json()["job_id"]
    started = trio.current_time()
    payloads = await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream")
    took = trio.current_time() - started
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()

    assert payloads[-1] == "[DONE]"
    assert [json.loads(p)["type"] for p in payloads[:-1]].count("token") == 5
    assert (record["state"], record["worker"]) == ("completed", good.id)
    assert [a["worker"] for a in record["attempt_log"]] == [stuck.id, good.id]
    assert record["attempt_log"][0]["error"] == "hive fading went offline"
    # Offline after 3 missed intervals (plus a housekeeping tick and the retry backoff).
    assert took < 3 * INTERVAL_S + 0.5
    status = (await http.get(f"{queen.url}/v1/hives")).json()["hives"]
    assert {h["name"]: h["status"] for h in status} == {"fading": "offline", "steady": "online"}
    workers = (await http.get(f"{queen.url}/v1/workers")).json()["workers"]
    assert [w["worker"]["id"] for w in workers] == [good.id]
    assert stuck.hold is not None
    stuck.hold.set()
