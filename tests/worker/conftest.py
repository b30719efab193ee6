"""The worker tests' shared fixture: a worker app on the fake engine (`tests.worker.served`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.worker.fakes import FakeEngine
from tests.worker.served import Worker, start_worker


@pytest.fixture
async def worker(nursery: trio.Nursery) -> AsyncIterator[Worker]:
    """Two slots, a context of 64 tokens, served until the test ends."""
    w = await start_worker(nursery, FakeEngine(slots=2, context_length=64))
    yield w
    await w.client.aclose()
    nursery.cancel_scope.cancel()
