"""The queen closes its end of a connection as soon as its client has closed it, whatever the
last answer on it was: a refusal by the job routes (a full queue, a body that does not decode, a
model nobody serves, a key it does not know), a job accepted, a whole stream.

The keep-alive timeout (`rbee.server.HEADER_TIMEOUT_S`, 20 s) is longer than each wait here:
only the client's close can end these connections in time.
"""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest
import trio
import trio.testing

from rbee.config import QueenConfig
from rbee.queen.keys import KEY_PREFIX
from rbee.server import HEADER_TIMEOUT_S
from tests.helpers import answered_connection
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import FakeWorker, register

JOB = {"operation": "infer", "model": "fake-model", "prompt": "hello there", "max_tokens": 2}
STREAM = {"Accept": "text/event-stream"}
# Each answer: the request's headers and body, and the status it gets.
ANSWERS: dict[str, tuple[dict[str, str], bytes, int]] = {
    "queue full": (STREAM, json.dumps(JOB).encode(), 429),
    "stream": (STREAM, json.dumps(JOB).encode(), 200),
    "accepted": ({}, json.dumps(JOB).encode(), 202),
    "not json": ({}, b"not json", 400),
    "no worker": ({}, json.dumps({**JOB, "model": "nobody-serves-it"}).encode(), 404),
    "unknown key": (
        {"Authorization": f"Bearer {KEY_PREFIX}{'k' * 32}"},
        json.dumps(JOB).encode(),
        401,
    ),
}


def post_job(url: str, headers: dict[str, str], body: bytes) -> bytes:
    """A whole ``POST /v1/jobs`` request, as bytes on the wire."""
    lines = [
        "POST /v1/jobs HTTP/1.1",
        f"Host: {httpx.URL(url).netloc.decode()}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("answer", ANSWERS)
async def test_a_connection_the_client_closed_after_an_answer_is_closed_at_once(
    nursery: trio.Nursery, queen_config: QueenConfig, answer: str
) -> None:
    queen: QueenHandle = await start_queen(nursery, dataclasses.replace(queen_config, queue_size=1))
    hold = trio.Event()
    worker = await FakeWorker(slots=1, tokens=2, hold=hold).start(nursery)
    await register(queen.url, "hive-a", worker)
    headers, body, status = ANSWERS[answer]
    if status == 429:
        # One job holds the worker's one slot, one waits in the queue: the next is refused.
        async with httpx.AsyncClient() as http:
            for _ in range(2):
                accepted = await http.post(f"{queen.url}/v1/jobs", json=JOB)
                assert accepted.status_code == 202, accepted.text
    else:
        hold.set()
    connection, status_line = await answered_connection(
        queen.url, post_job(queen.url, headers, body)
    )
    assert status_line == f"HTTP/1.1 {status} ".encode()
    async with connection:
        # Close once the queen is done with its answer and idle, as a client that does not
        # share its loop mostly does.
        await trio.testing.wait_all_tasks_blocked()
        await connection.send_eof()
        with trio.fail_after(HEADER_TIMEOUT_S / 2):
            assert await connection.receive_some(100) == b""
