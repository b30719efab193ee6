"""The policy editor's routes: check a draft, preview it, replay the log with it, apply it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from rbee.config import QueenConfig
from rbee.queen import drafts
from rbee.queen.db import db_path
from tests.helpers import RULES
from tests.queen.conftest import QueenHandle, read_stream, start_queen
from tests.queen.fake_worker import FakeWorker, register

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "policies" / "least_loaded.rhai").read_text(encoding="utf-8")
# A draft that routes every job to one named worker.
PIN = """fn schedule_job(job, workers) {{
    let chosen = workers.filter(|w| w.id == "{worker}");
    if chosen.is_empty() {{
        return reject("no worker {worker}");
    }}
    return chosen.first();
}}
"""
CLOSED = 'fn schedule_job(job, workers) {\n    return reject("closed for maintenance");\n}\n'


async def run_job(http: httpx.AsyncClient, url: str, model: str = "fake-model") -> dict[str, Any]:
    """Run one job to its end; its record."""
    job = {"operation": "infer", "model": model, "prompt": "hi", "max_tokens": 4}
    accepted = (await http.post(f"{url}/v1/jobs", json=job)).json()
    assert (await read_stream(http, url + accepted["sse_url"]))[-1] == "[DONE]"
    record: dict[str, Any] = (await http.get(f"{url}/v1/jobs/{accepted['job_id']}")).json()
    return record


async def two_workers(nursery: trio.Nursery, url: str) -> tuple[FakeWorker, FakeWorker]:
    first = await FakeWorker(tokens=2).start(nursery)
    second = await FakeWorker(tokens=2).start(nursery)
    await register(url, "hive-a", first, second)
    return first, second


async def test_the_running_builtin_policy_has_no_source(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    running = (await http.get(f"{queen.url}/v1/policy")).json()
    assert running == {
        "policy": "first-available",
        "locked": False,
        "path": None,
        "source": None,
    }


async def test_check_answers_ok_or_the_line_and_column_of_the_problem(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    ok = await http.post(f"{queen.url}/v1/policy/check", json={"source": GOOD})
    assert ok.status_code == 200
    assert ok.json() == {
        "ok": True,
        "name": "<draft>",
        "lines": GOOD.count("\n") + 1,
        "error": None,
    }
    broken = GOOD.replace("workers.with_model(job.model)", "workers.with_model(job.model", 1)
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "with_model(" in text)
    answer = (await http.post(f"{queen.url}/v1/policy/check", json={"source": broken})).json()
    assert answer["ok"] is False
    assert answer["error"]["line"] in (line, line + 1)
    assert answer["error"]["column"] >= 1
    unknown = "fn schedule_job(job, workers) {\n    return workers.fastest();\n}\n"
    answer = (await http.post(f"{queen.url}/v1/policy/check", json={"source": unknown})).json()
    assert answer["error"]["line"] == 2
    assert "fastest" in answer["error"]["message"]


async def test_a_bad_draft_body_is_a_400_naming_the_field(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    answer = await http.post(f"{queen.url}/v1/policy/check", json={"text": GOOD})
    assert answer.status_code == 400
    assert "source" in answer.json()["error"]["message"]
    answer = await http.post(f"{queen.url}/v1/policy/preview", json={"source": GOOD, "jobs": []})
    assert answer.status_code == 400
    assert "jobs" in answer.json()["error"]["message"]


async def test_preview_runs_the_draft_and_the_running_policy_on_the_live_cluster(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    first, second = await two_workers(nursery, queen.url)
    jobs = [{"id": "s1", "model": "fake-model"}, {"id": "s2", "model": "other-model"}]
    body = {"source": PIN.format(worker=second.id), "jobs": jobs}
    answer = await http.post(f"{queen.url}/v1/policy/preview", json=body)
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert (preview["policy"], preview["workers"], preview["hives"]) == ("first-available", 2, 1)
    fake, other = preview["rows"]
    assert fake["running"]["kind"] == "route"
    assert fake["running"]["target"] in (first.id, second.id)
    assert fake["draft"] == {
        "kind": "route",
        "target": second.id,
        "text": f"route {second.id}",
        "reasons": fake["draft"]["reasons"],
    }
    assert fake["changed"] is (fake["running"]["target"] != second.id)
    # The built-in spawns for a model no worker serves; the draft routes there anyway.
    assert other["running"]["kind"] == "spawn"
    assert other["draft"]["kind"] == "route"
    assert other["changed"] is True
    closed = {"source": CLOSED, "jobs": jobs[:1]}
    row = (await http.post(f"{queen.url}/v1/policy/preview", json=closed)).json()["rows"][0]
    assert row["draft"]["kind"] == "reject"
    assert "closed for maintenance" in row["draft"]["reasons"]
    assert row["changed"] is True


async def test_a_draft_that_does_not_compile_is_no_preview(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    body = {"source": "fn schedule_job(job, workers) {", "jobs": [{"id": "s", "model": "m"}]}
    answer = await http.post(f"{queen.url}/v1/policy/preview", json=body)
    assert answer.status_code == 400
    assert "<draft>:1:" in answer.json()["error"]["message"]


async def test_replay_shows_which_logged_decisions_the_draft_changes(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    _first, second = await two_workers(nursery, queen.url)
    ran = [await run_job(http, queen.url) for _ in range(3)]
    body = {"source": PIN.format(worker=second.id), "last": 10}
    replay = (await http.post(f"{queen.url}/v1/policy/replay", json=body)).json()
    assert replay["replayed"] == 3
    differ = [job["id"] for job in ran if job["worker"] != second.id]
    assert replay["changed"] == len(differ)
    assert [r["job_id"] for r in replay["rows"] if r["changed"]] == differ
    assert all(r["now"]["text"] == f"route {second.id}" for r in replay["rows"])
    assert replay["errors"] == 0


async def test_apply_makes_the_draft_the_policy_for_the_next_job(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    first, second = await two_workers(nursery, queen.url)
    before = await run_job(http, queen.url)
    target = second if before["worker"] == first.id else first
    applied = await http.post(
        f"{queen.url}/v1/policy/apply", json={"source": PIN.format(worker=target.id)}
    )
    assert applied.status_code == 200, applied.text
    status = applied.json()
    path = db_path(queen.config).parent / drafts.APPLIED_FILE
    assert status["path"] == str(path)
    assert path.read_text(encoding="utf-8") == PIN.format(worker=target.id)
    after = await run_job(http, queen.url)
    assert after["worker"] == target.id
    assert after["decision"]["policy"] == path.name
    running = (await http.get(f"{queen.url}/v1/policy")).json()
    assert running["source"] == PIN.format(worker=target.id)
    assert (await http.get(f"{queen.url}/v1/status")).json()["policy"] == path.name


async def test_apply_rewrites_the_policy_file_the_queen_runs_and_refuses_a_broken_draft(
    nursery: trio.Nursery, queen_config: QueenConfig, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    policy = tmp_path / "mine.rhai"
    policy.write_text(GOOD, encoding="utf-8")
    queen = await start_queen(nursery, dataclasses.replace(queen_config, policy=str(policy)))
    broken = await http.post(f"{queen.url}/v1/policy/apply", json={"source": "fn nope("})
    assert broken.status_code == 400
    assert policy.read_text(encoding="utf-8") == GOOD
    applied = await http.post(f"{queen.url}/v1/policy/apply", json={"source": CLOSED})
    assert applied.status_code == 200, applied.text
    assert applied.json()["path"] == str(policy)
    assert applied.json()["reloads"] == 1
    assert policy.read_text(encoding="utf-8") == CLOSED
    await register(queen.url, "hive-a", await FakeWorker().start(nursery))
    job = {"operation": "infer", "model": "fake-model", "prompt": "hi"}
    refused = await http.post(f"{queen.url}/v1/jobs", json=job)
    assert "closed for maintenance" in refused.text


@pytest.mark.parametrize("mode", ["platform", "policy_locked"])
async def test_apply_is_refused_when_the_policy_is_locked(
    nursery: trio.Nursery,
    queen_config: QueenConfig,
    http: httpx.AsyncClient,
    tmp_path: Path,
    mode: str,
) -> None:
    if mode == "platform":
        config = dataclasses.replace(queen_config, platform=True, token="platform-admin-token-0123")
        http.headers["Authorization"] = "Bearer platform-admin-token-0123"
    else:
        config = dataclasses.replace(queen_config, policy_locked=True)
    queen = await start_queen(nursery, config)
    applied = await http.post(f"{queen.url}/v1/policy/apply", json={"source": CLOSED})
    assert applied.status_code == 403
    assert applied.json()["error"]["code"] == "policy_locked"
    assert (await http.get(f"{queen.url}/v1/policy")).json()["locked"] is True
    # Checking and previewing a draft stay allowed.
    checked = await http.post(f"{queen.url}/v1/policy/check", json={"source": CLOSED})
    assert checked.json()["ok"] is True


async def test_compile_answers_the_draft_in_the_policy_language(
    queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    answer = await http.post(f"{queen.url}/v1/policy/compile", json={"source": CLOSED})
    assert answer.json() == {"source": CLOSED}
    broken = await http.post(f"{queen.url}/v1/policy/compile", json={"source": "fn ("})
    assert broken.status_code == 400
    assert "<draft>:1:" in broken.json()["error"]["message"]


async def test_yaml_rules_are_checked_previewed_compiled_and_applied_as_yaml(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    pytest.importorskip("rbee.policy.rules", reason="this tree has no YAML rules compiler")
    url = queen.url
    ok = await http.post(f"{url}/v1/policy/check", json={"source": RULES, "format": "yaml"})
    assert ok.json()["ok"] is True, ok.text
    bad = RULES.replace("priority: batch", "priorty: batch")
    answer = await http.post(f"{url}/v1/policy/check", json={"source": bad, "format": "yaml"})
    problem = answer.json()["error"]
    assert problem["line"] == 4
    assert "priorty" in problem["message"]
    compiled = await http.post(f"{url}/v1/policy/compile", json={"source": RULES, "format": "yaml"})
    assert "fn schedule_job" in compiled.json()["source"]

    await two_workers(nursery, url)
    jobs = [{"id": "b", "model": "fake-model", "priority": "batch"}]
    body = {"source": RULES, "format": "yaml", "jobs": jobs}
    (row,) = (await http.post(f"{url}/v1/policy/preview", json=body)).json()["rows"]
    assert row["draft"]["kind"] == "queue"
    assert row["changed"] is True
    applied = await http.post(f"{url}/v1/policy/apply", json={"source": RULES, "format": "yaml"})
    assert applied.status_code == 200, applied.text
    path = (db_path(queen.config).parent / drafts.APPLIED_FILE).with_suffix(".yaml")
    assert applied.json()["path"] == str(path)
    assert path.read_text(encoding="utf-8") == RULES
