"""The worker's OpenAPI document, and schemathesis against a live worker, as `tests.openapi_fuzz`
runs it.

The worker runs on the fake engine behind a real hypercorn socket: the run is about the HTTP
surface (decoding, validation, errors, streams), and a generated request with a large
``max_tokens`` costs milliseconds there instead of minutes of the real model.
"""

from __future__ import annotations

import pytest
import trio

from rbee.worker.openapi import ROUTES
from tests.openapi_fuzz import check_document, fuzz, operations
from tests.worker.served import Worker


async def test_the_openapi_document_describes_every_route(worker: Worker) -> None:
    response = await worker.client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["info"]["title"] == "rbee worker"
    check_document(doc, ROUTES, {"ErrorBody", "InferenceRequest", "WorkerInfo", "Health"})


@pytest.mark.slow
async def test_generated_requests_get_no_5xx_and_answers_match_the_document(
    worker: Worker,
) -> None:
    doc = (await worker.client.get("/openapi.json")).json()
    ran = await trio.to_thread.run_sync(fuzz, worker.url, doc, set())
    assert len(ran) == len(operations(doc))
    assert (await worker.client.get("/health")).json() == {"status": "ready"}
    events = await worker.events(await worker.start({"prompt": "still served", "max_tokens": 2}))
    assert events[-1] == "[DONE]"
