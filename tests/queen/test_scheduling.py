"""The queen and its scheduler: policy errors fall back, decisions are logged, spawning plugs in."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from rbee import wire
from rbee.config import QueenConfig
from rbee.decisions import Decision
from rbee.errors import PolicyError
from rbee.policy import Limits, PolicyHost
from rbee.queen.scheduler import builtin, make_scheduler
from rbee.wire.queen import JobView, Snapshot, WorkerExited
from tests.helpers import eventually
from tests.queen.conftest import QueenHandle, read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, heartbeat, hive_auth, register

BODY: dict[str, object] = {"operation": "infer", "model": "fake-model", "prompt": "hi"}


class BrokenPolicy:
    name = "broken.policy"

    def schedule(self, job: JobView, snapshot: Snapshot) -> Decision:
        raise PolicyError("fuel exhausted", filename="broken.policy", line=3, column=7)


async def run(http: httpx.AsyncClient, url: str) -> dict[str, object]:
    job_id = (await http.post(f"{url}/v1/jobs", json=BODY)).json()["job_id"]
    assert (await read_stream(http, f"{url}/v1/jobs/{job_id}/stream"))[-1] == "[DONE]"
    record: dict[str, object] = (await http.get(f"{url}/v1/jobs/{job_id}")).json()
    return record


async def test_a_failing_policy_falls_back_and_is_reported(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, queen_config, scheduler=BrokenPolicy())
    await register(queen.url, "hive-a", await FakeWorker().start(nursery))
    record = await run(http, queen.url)
    decision = record["decision"]
    assert isinstance(decision, dict)
    assert decision["policy"] == "first-available"
    assert decision["error"] == "broken.policy:3:7: fuel exhausted"
    status = (await http.get(f"{queen.url}/v1/status")).json()
    assert status["last_policy_error"] == "broken.policy:3:7: fuel exhausted"
    metrics = (await http.get(f"{queen.url}/metrics")).text
    assert 'rbee_policy_errors_total{policy="broken.policy"} 1' in metrics


async def test_fallback_reject_rejects(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    config = dataclasses.replace(queen_config, policy_fallback="reject")
    queen = await start_queen(nursery, config, scheduler=BrokenPolicy())
    await register(queen.url, "hive-a", await FakeWorker().start(nursery))
    response = await http.post(f"{queen.url}/v1/jobs", json=BODY)
    assert response.status_code == 404
    assert "the scheduling policy failed: broken.policy:3:7" in response.json()["error"]["message"]


async def test_decisions_are_served_for_explain_and_replay(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    a, b = await FakeWorker().start(nursery), await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", a, b)
    ids = [(await run(http, queen.url))["id"] for _ in range(3)]
    decisions = (await http.get(f"{queen.url}/v1/decisions", params={"last": 2})).json()
    records = decisions["decisions"]
    assert [d["job_id"] for d in records] == ids[1:]
    assert all(d["kind"] == "route" and d["policy"] == "first-available" for d in records)
    assert {w["id"] for w in records[0]["snapshot"]["workers"]} == {a.id, b.id}
    assert records[0]["job"]["model"] == "fake-model"
    assert records[0]["reasons"][0] == "matched 2/2 workers by model"


async def test_round_robin_spreads_jobs(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    queen = await start_queen(nursery, queen_config, scheduler=builtin("round-robin"))
    a, b = await FakeWorker().start(nursery), await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", a, b)
    for _ in range(4):
        await run(http, queen.url)
    assert (len(a.posts), len(b.posts)) == (2, 2)


async def test_an_exited_worker_leaves_the_registry_at_once(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    worker = await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", worker)
    exited = WorkerExited(
        hive="hive-a", worker_id=worker.id, model="fake-model", exit_code=-9, log_tail=["OOM"]
    )
    wrong = await http.post(
        f"{queen.url}/v1/workers/other/exited",
        content=wire.encode(exited),
        headers=hive_auth(queen.url),
    )
    assert wrong.status_code == 400
    response = await http.post(
        f"{queen.url}/v1/workers/{worker.id}/exited",
        content=wire.encode(exited),
        headers=hive_auth(queen.url),
    )
    assert response.status_code == 204
    status = (await http.get(f"{queen.url}/v1/status")).json()
    assert status["workers"] == []
    assert any("exited with code -9" in e["message"] for e in status["recent_errors"])
    assert (await http.post(f"{queen.url}/v1/jobs", json=BODY)).status_code == 404


async def test_metrics_count_jobs_tokens_and_workers(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    await register(queen.url, "hive-a", await FakeWorker(tokens=4).start(nursery))
    await run(http, queen.url)
    await run(http, queen.url)
    response = await http.get(f"{queen.url}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in [
        'rbee_jobs_total{state="completed"} 2',
        "rbee_tokens_generated_total 8",
        'rbee_scheduling_decisions_total{kind="route",policy="first-available"} 2',
        "rbee_time_to_first_token_seconds_count 2",
        'rbee_time_to_first_token_seconds_bucket{le="+Inf"} 2',
        "rbee_queue_wait_seconds_count 2",
        'rbee_queue_depth{priority="interactive"} 0',
        "rbee_jobs_running 0",
        'rbee_workers{state="ready"} 1',
        'rbee_hives{status="online"} 1',
    ]:
        assert line in text.splitlines(), line
    assert (await http.get(f"{queen.url}/health")).json() == {"status": "ready"}


@dataclasses.dataclass
class FakeProvisioner:
    """Starts a fake worker and announces it, as a hive would."""

    nursery: trio.Nursery
    queen_url: str = ""
    calls: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    async def spawn(self, hive: str, model: str, device: str) -> None:
        self.calls.append((hive, model, device))
        worker = await FakeWorker(model=model).start(self.nursery)
        await register(self.queen_url, hive, worker)

    def provides(self, model: str) -> bool:
        return False


async def queen_with_empty_hive(
    nursery: trio.Nursery,
    config: QueenConfig,
    http: httpx.AsyncClient,
    provisioner: FakeProvisioner | DyingProvisioner,
) -> QueenHandle:
    """A queen that starts workers through ``provisioner``, and hive-a: no workers, but it has
    the fake model."""
    queen = await start_queen(nursery, config, provisioner=provisioner)
    provisioner.queen_url = queen.url
    empty = msgspec.structs.replace(heartbeat("hive-a", []), models=["fake-model"])
    answer = await http.post(
        f"{queen.url}/v1/heartbeat", content=wire.encode(empty), headers=hive_auth(queen.url)
    )
    assert answer.status_code == 204
    return queen


async def test_spawn_decisions_go_to_the_provisioner(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    provisioner = FakeProvisioner(nursery)
    queen = await queen_with_empty_hive(nursery, queen_config, http, provisioner)
    record = await run(http, queen.url)
    assert provisioner.calls == [("hive-a", "fake-model", "cpu")]
    assert record["state"] == "completed"
    spawn = (await http.get(f"{queen.url}/v1/decisions", params={"last": 10})).json()
    assert [d["kind"] for d in spawn["decisions"]] == ["spawn", "route"]


@dataclasses.dataclass
class DyingProvisioner:
    """A hive whose new worker dies while loading: it reports the exit, and its spawn hangs."""

    http: httpx.AsyncClient
    queen_url: str = ""

    async def spawn(self, hive: str, model: str, device: str) -> None:
        exited = WorkerExited(
            hive=hive, worker_id="w-1", model=model, exit_code=1, log_tail=["bad graph"]
        )
        path = f"{self.queen_url}/v1/workers/w-1/exited"
        answer = await self.http.post(
            path, content=wire.encode(exited), headers=hive_auth(self.queen_url)
        )
        assert answer.status_code == 204
        await trio.sleep_forever()

    def provides(self, model: str) -> bool:
        return False


async def test_a_worker_that_dies_while_loading_fails_the_waiting_jobs_at_once(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient
) -> None:
    provisioner = DyingProvisioner(http)
    queen = await queen_with_empty_hive(nursery, queen_config, http, provisioner)
    job_id = (await http.post(f"{queen.url}/v1/jobs", json=BODY)).json()["job_id"]
    with trio.fail_after(5):  # not the spawn timeout
        events = await read_stream(http, f"{queen.url}/v1/jobs/{job_id}/stream")
    # The same words as when the hive refuses the spawn, with the worker's last line.
    assert events[-1].startswith("[ERROR] could not start a worker for 'fake-model' on hive-a")
    assert "worker w-1 exited with code 1 on hive hive-a: bad graph" in events[-1]
    record = (await http.get(f"{queen.url}/v1/jobs/{job_id}")).json()
    assert record["state"] == "failed"


HOSTILE = """fn schedule_job(job, workers) {
    if job.labels["evil"] == "yes" { range(0, 9999).map(|i| range(0, 9999).count(|j| j > i)); }
    return workers.with_model(job.model).available().last();
}
"""


async def test_a_hostile_policy_file_under_load_falls_back_and_keeps_serving(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.rhai"
    path.write_text(HOSTILE)
    host = PolicyHost(path, limits=Limits(deadline_ms=5))
    queen = await start_queen(nursery, queen_config, scheduler=host)
    a, b = await FakeWorker().start(nursery), await FakeWorker().start(nursery)
    await register(queen.url, "hive-a", a, b)
    labels = [{"evil": "yes"} if i % 3 == 0 else {} for i in range(12)]
    async with trio.open_nursery() as jobs:
        for job_labels in labels:
            jobs.start_soon(_run_labelled, http, queen.url, job_labels)
    decisions = (await http.get(f"{queen.url}/v1/decisions", params={"last": 100})).json()
    routes = [r for r in decisions["decisions"] if r["kind"] == "route"]
    assert len(routes) == 12
    evil = [r for r in routes if r["job"]["labels"].get("evil")]
    assert len(evil) == 4
    assert all("hostile.rhai:2:" in r["error"] and "deadline" in r["error"] for r in evil)
    assert all(r["policy"] == "first-available" for r in evil)
    assert all(r["policy"] == "hostile.rhai" and not r["error"] for r in routes if r not in evil)
    metrics = (await http.get(f"{queen.url}/metrics")).text
    assert 'rbee_policy_errors_total{policy="hostile.rhai"}' in metrics


async def _run_labelled(http: httpx.AsyncClient, url: str, labels: dict[str, str]) -> None:
    body = {**BODY, "labels": labels}
    job_id = (await http.post(f"{url}/v1/jobs", json=body)).json()["job_id"]
    assert (await read_stream(http, f"{url}/v1/jobs/{job_id}/stream"))[-1] == "[DONE]"


# A policy file and a YAML rules file: the same hot reload, the second form compiled to the first.
RELOADED = [
    (
        "pick.rhai",
        "fn schedule_job(job, workers) { workers.with_model(job.model).first() }\n",
        "fn schedule_job(job, workers) { workers.with_model(job.model).last() }\n",
        None,
    ),
    (
        "pick.yaml",
        "rules: []\ndefault:\n  route: {pick: first}\n",
        "rules: []\ndefault:\n  select: workers.with_model(job.model).last()\n",
        "pick.yaml chose worker {worker} (line 3)",
    ),
]


@pytest.mark.parametrize(("name", "before", "after", "reason"), RELOADED, ids=["policy", "rules"])
async def test_a_policy_file_is_reloaded_while_the_queen_runs(
    nursery: trio.Nursery,
    queen_config: QueenConfig,
    http: httpx.AsyncClient,
    tmp_path: Path,
    name: str,
    before: str,
    after: str,
    reason: str | None,
) -> None:
    path = tmp_path / name
    path.write_text(before)
    host = make_scheduler(str(path))
    assert isinstance(host, PolicyHost)
    queen = await start_queen(nursery, queen_config, scheduler=host)
    workers = sorted([await FakeWorker().start(nursery) for _ in range(2)], key=lambda w: w.id)
    await register(queen.url, "hive-a", *workers)
    first = await run(http, queen.url)
    path.write_text(after)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    await eventually(lambda: host.reloads == 1, what=f"the queen's reload of {name}")
    second = await run(http, queen.url)
    assert first["worker"] != second["worker"]
    params: dict[str, str | int] = {"job_id": str(second["id"]), "last": 5}
    explained = (await http.get(f"{queen.url}/v1/decisions", params=params)).json()["decisions"]
    assert [d["job_id"] for d in explained] == [second["id"]]
    assert explained[0]["policy"] == name
    if reason is not None:
        assert explained[0]["reasons"][-1] == reason.format(worker=second["worker"])


async def test_the_queen_sends_its_token_to_workers(
    nursery: trio.Nursery, queen_config: QueenConfig
) -> None:
    config = dataclasses.replace(queen_config, token="s3cret-token-0123456789")
    queen = await start_queen(nursery, config)
    worker = await FakeWorker(token="s3cret-token-0123456789").start(nursery)
    headers = {"Authorization": "Bearer s3cret-token-0123456789"}
    async with httpx.AsyncClient(headers=headers) as http:
        beat = heartbeat("hive-a", [worker.status()])
        # The hive reports with the queen's token: the queen calls its workers with it.
        response = await http.post(f"{queen.url}/v1/heartbeat", content=wire.encode(beat))
        assert response.status_code == 204
        record = await run(http, queen.url)
        streamed = {"Accept": "text/event-stream"}
        body = {"model": "fake-model", "prompt": "hi"}
        async with http.stream("POST", f"{queen.url}/v1/jobs", json=body, headers=streamed) as r:
            assert r.status_code == 200
            assert "[DONE]" in (await r.aread()).decode()
    assert record["state"] == "completed"
    assert len(worker.posts) == 2
    async with httpx.AsyncClient() as stranger:
        for headers in ({}, {"Authorization": "Bearer guess"}):
            headers["Accept"] = "text/event-stream"
            r = await stranger.post(f"{queen.url}/v1/jobs", json=body, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
            r = await stranger.get(f"{queen.url}/v1/jobs/{record['id']}/stream", headers=headers)
            assert r.status_code == 401
    assert len(worker.posts) == 2
