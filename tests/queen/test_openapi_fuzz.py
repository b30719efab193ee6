"""Schemathesis against a live queen (with a fake worker): generated requests for every route of
its OpenAPI document get no 5xx, and every answer conforms to the document.

Hypothesis runs derandomized with a bounded number of examples per route, so the run is the same
every time and takes seconds. The routes that would reach out over SSH to a host a generated
request named are left out (they are covered in tests/queen/test_ssh_*.py), and so is the web
page's endless overview stream (tests/queen/test_ui_overview.py).
"""

from __future__ import annotations

from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import trio
from schemathesis import checks
from schemathesis.core.result import Ok

from tests.queen.conftest import QueenHandle
from tests.queen.fake_worker import FakeWorker, register

EXAMPLES = 12
SSH_ROUTES = {
    ("POST", "/v1/hives"),
    ("POST", "/v1/hives/{name}/start"),
    ("POST", "/v1/hives/{name}/upgrade"),
    ("POST", "/v1/hives/{name}/trust"),
}
# A stream that never ends by itself (the web page's overview, one event a second).
ENDLESS = {("GET", "/v1/ui/events")}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def fuzz(url: str, doc: dict[str, Any]) -> list[str]:
    """Run every operation of ``doc`` against ``url``; the operations that were run."""
    schema = schemathesis.openapi.from_dict(doc)
    ran = []
    for result in schema.get_all_operations():
        # A route the document describes in a way schemathesis cannot read fails the test here.
        assert isinstance(result, Ok), result
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SSH_ROUTES | ENDLESS:
            continue

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=url, checks=CHECKS, timeout=10)

        run()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


@pytest.mark.slow
async def test_generated_requests_get_no_5xx_and_answers_match_the_document(
    nursery: trio.Nursery, queen: QueenHandle, http: httpx.AsyncClient
) -> None:
    fake = await FakeWorker(tokens=3).start(nursery)
    await register(queen.url, "hive-a", fake, contexts={"fake-model": 64})
    doc = (await http.get(f"{queen.url}/openapi.json")).json()
    ran = await trio.to_thread.run_sync(fuzz, queen.url, doc)
    skipped = len(SSH_ROUTES) + len(ENDLESS)
    assert len(ran) == sum(len(ops) for ops in doc["paths"].values()) - skipped
    assert (await http.get(f"{queen.url}/health")).json() == {"status": "ready"}
    job = {"operation": "infer", "model": "fake-model", "prompt": "still served", "max_tokens": 2}
    assert (await http.post(f"{queen.url}/v1/jobs", json=job)).status_code == 202
