"""Load: 500 streaming requests at once through a queen process to fast fake workers, and 64 to
one real worker (the default model).

Every request ends, answered in full or refused with a 429 and ``Retry-After`` (the queue holds
``queen.queue_size`` jobs); none is lost, none runs twice, none hangs; the queen holds nothing
afterwards, and its memory comes back to what it was after a first round.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.queen.fake_worker import register
from tests.queen.load import Outcome, fake_workers, peak_rss, queen_process, stream_all
from tests.queen.real_parts import MODEL, RealWorker

pytestmark = pytest.mark.slow

REQUESTS = 500
TOKENS = 4
SLOTS = 16
WHOLE = "".join(f"tok{i} " for i in range(TOKENS))
BODY = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": TOKENS}


def check(
    outcomes: list[Outcome], count: int = REQUESTS, whole: str = WHOLE
) -> tuple[set[str], int]:
    """Every outcome a whole answer (``whole``; "" for any text) or a clean 429: the answered
    job ids, and how many 429s."""
    assert len(outcomes) == count
    answered = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    others = [o for o in outcomes if o.status not in (200, 429)]
    assert others == []
    assert all(o.end == "[DONE]" and o.text == (whole or o.text) != "" for o in answered)
    assert all(o.retry_after is not None and int(o.retry_after) >= 1 for o in refused)
    assert all("queue_full" in o.error for o in refused)
    ids = {o.job_id for o in answered}
    assert len(ids) == len(answered)
    return ids, len(refused)


async def test_500_streams_at_once_all_end_none_lost_none_twice(tmp_path: Path) -> None:
    with fake_workers(4, TOKENS, SLOTS) as urls, queen_process(tmp_path) as queen:
        await queen.register("hive-a", urls, SLOTS)
        idle = queen.rss()
        with trio.fail_after(300):
            warm_ids, _ = check(await stream_all(queen.url, REQUESTS, BODY))
            baseline = queen.rss()
            peak = [baseline]
            async with trio.open_nursery() as watch:
                watch.start_soon(peak_rss, queen, peak)
                ids, refused = check(await stream_all(queen.url, REQUESTS, BODY))
                watch.cancel_scope.cancel()
        # Every answered job is on record, completed; no refused one is; none waits or runs.
        assert await queen_state(queen.url) == (warm_ids | ids, {"completed"}, (0, 0))
        after = queen.rss()
        print(
            f"{len(ids)} answered, {refused} refused (429); queen RSS idle {idle / 2**20:.1f} MiB, "
            f"after a first round {baseline / 2**20:.1f}, peak {peak[0] / 2**20:.1f}, "
            f"after the second {after / 2**20:.1f}"
        )
        # Memory comes back: the second round keeps nothing more than the first did.
        assert after <= baseline * 1.10


async def queen_state(url: str) -> tuple[set[str], set[str], tuple[int, int]]:
    """The ids and states of the jobs on record, and how many wait and run."""
    async with httpx.AsyncClient(timeout=10) as client:
        listed = (await client.get(f"{url}/v1/jobs", params={"limit": 2000})).json()["jobs"]
        status = (await client.get(f"{url}/v1/status")).json()
    ids = {j["id"] for j in listed}
    return ids, {j["state"] for j in listed}, (status["queue_depth"], status["running"])


async def test_64_streams_at_once_to_the_real_worker_all_end(
    tmp_path: Path, shared_worker: RealWorker
) -> None:
    body = {"operation": "infer", "model": MODEL, "prompt": "Hi", "max_tokens": 2}
    with queen_process(tmp_path) as queen:
        await register(queen.url, "hive-a", shared_worker.status(), token=queen.secret)
        with trio.fail_after(300):
            ids, _ = check(await stream_all(queen.url, 64, body), 64, "")
        assert await queen_state(queen.url) == (ids, {"completed"}, (0, 0))
