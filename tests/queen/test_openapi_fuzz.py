"""Schemathesis against a live queen (with a fake worker), as `tests.openapi_fuzz` runs it.

The routes that would reach out over SSH to a host a generated request named are left out (they are covered in tests/queen/test_ssh_*.py), and so is the web
page's endless overview stream (tests/queen/test_ui_overview.py).
"""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.openapi_fuzz import fuzz
from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import FakeWorker, register

SSH_ROUTES = {
    ("POST", "/v1/hives"),
    ("POST", "/v1/hives/{name}/start"),
    ("POST", "/v1/hives/{name}/upgrade"),
    ("POST", "/v1/hives/{name}/trust"),
}
# A stream that never ends by itself (the web page's overview, one event a second).
ENDLESS = {("GET", "/v1/ui/events")}


@pytest.mark.slow
async def test_generated_requests_get_no_5xx_and_answers_match_the_document(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    fake = await FakeWorker(tokens=3).start(nursery)
    await register(queen.url, "hive-a", fake, contexts={"fake-model": 64})
    doc = (await http.get(f"{queen.url}/openapi.json")).json()
    ran = await trio.to_thread.run_sync(fuzz, queen.url, doc, SSH_ROUTES | ENDLESS)
    skipped = len(SSH_ROUTES) + len(ENDLESS)
    assert len(ran) == sum(len(ops) for ops in doc["paths"].values()) - skipped
    assert (await http.get(f"{queen.url}/health")).json() == {"status": "ready"}
    job = {"operation": "infer", "model": "fake-model", "prompt": "still served", "max_tokens": 2}
    assert (await http.post(f"{queen.url}/v1/jobs", json=job)).status_code == 202
