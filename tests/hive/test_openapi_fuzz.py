"""The hive's OpenAPI document, and schemathesis against a live hive (stand-in workers), as
`tests.openapi_fuzz` runs it.

Left out of the run: ``POST /v1/models/pull``, which fetches from whatever source the request
names (a peer's URL, a file on the host; its bad bodies are in tests/hive/test_bad_input.py), and
``POST /v1/shutdown``, which stops the hive (tests/hive/test_workers.py).
"""

from __future__ import annotations

import pytest
import trio

from rbee.hive.openapi import ROUTES
from tests.hive.conftest import MODEL, Hive
from tests.openapi_fuzz import check_document, fuzz, operations

LEFT_OUT = {("POST", "/v1/models/pull"), ("POST", "/v1/shutdown")}


async def test_the_openapi_document_describes_every_route(hive: Hive) -> None:
    response = await hive.client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["info"]["title"] == "rbee hive"
    check_document(doc, ROUTES, {"ErrorBody", "SpawnRequest", "PullRequest", "HiveHeartbeat"})


@pytest.mark.slow
async def test_generated_requests_get_no_5xx_and_answers_match_the_document(hive: Hive) -> None:
    doc = (await hive.client.get("/openapi.json")).json()
    ran = await trio.to_thread.run_sync(fuzz, hive.state.url, doc, LEFT_OUT)
    assert len(ran) == len(operations(doc)) - len(LEFT_OUT)
    assert (await hive.client.get("/health")).json() == {"status": "ready"}
    models = (await hive.client.get("/v1/models")).json()["models"]
    assert [m["name"] for m in models] == [MODEL]
    r = await hive.client.post("/v1/workers", json={"model": MODEL, "wait": True})
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "ready"
