"""A fake worker for the queen's fast tests: a real HTTP server that speaks the worker API.

It generates ``tokens`` tokens ``tok0 tok1 ...``, one every ``delay`` seconds, and can misbehave on
demand (``mode``), or ``hold`` every generation until an event is set; with a ``context``, a
prompt of that many words or more is refused with the real worker's 400: ``refuse`` answers 500 to every POST, ``busy`` 429, ``drop`` closes the stream
after ``started`` without a token, ``error`` sends ``[ERROR]`` before the first token, ``die``
fails after the first token (once ``die_when`` is set, if given), ``stall`` goes silent after it (``/health`` silent too), ``garbage``
sends a malformed event after it. Token ``i`` has id ``i`` (``named_ids`` off: no ids, as a worker
that cannot be resumed from); a request that resumes from n ids continues at ``tok<n>``. It records
what it was asked (`posts`, `deletes`) and which generations were stopped early (`stopped`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import trio
from quart import Response, request

from rbee import sse, wire
from rbee.errors import UsageError
from rbee.server import create_app, json_response, serve
from rbee.wire import worker as ww
from rbee.wire.queen import HiveHeartbeat, HostTelemetry, WorkerStatus

Mode = Literal["ok", "refuse", "busy", "drop", "error", "die", "stall", "garbage"]

_ids = itertools.count()


@dataclasses.dataclass
class FakeWorker:
    model: str = "fake-model"
    tokens: int = 5
    delay: float = 0.0
    slots: int = 4
    mode: Mode = "ok"
    hold: trio.Event | None = None
    token: str = ""
    named_ids: bool = True
    die_when: trio.Event | None = None
    step_ms: float = 0.0
    context: int = 0
    id: str = dataclasses.field(default_factory=lambda: f"fake-{next(_ids)}")
    url: str = ""
    posts: list[ww.InferenceRequest] = dataclasses.field(default_factory=list)
    deletes: list[str] = dataclasses.field(default_factory=list)
    stopped: list[str] = dataclasses.field(default_factory=list)
    finished: list[str] = dataclasses.field(default_factory=list)
    _cancel: dict[str, trio.Event] = dataclasses.field(default_factory=dict)
    _requests: dict[str, ww.InferenceRequest] = dataclasses.field(default_factory=dict)

    def status(self, slots_free: int | None = None) -> WorkerStatus:
        return WorkerStatus(
            id=self.id,
            pid=1,
            model=self.model,
            device="cpu",
            url=self.url,
            state="ready",
            slots_total=self.slots,
            slots_free=self.slots if slots_free is None else slots_free,
        )

    async def _generate(self, gen_id: str) -> AsyncIterator[bytes]:
        req = self._requests[gen_id]
        cancel = self._cancel[gen_id]
        done = False
        try:
            yield sse.event(wire.encode(ww.Started(step_ms=self.step_ms)))
            if self.hold is not None:
                await self.hold.wait()
            if self.mode == "drop":
                done = True
                return
            if self.mode == "error":
                done = True
                yield sse.event(sse.error_marker("the fake engine failed"))
                return
            first = len(req.resume.emitted_ids) if req.resume is not None else 0
            n = min(self.tokens, first + req.max_tokens)
            for i in range(first, n):
                if self.delay:
                    with trio.move_on_after(self.delay):
                        await cancel.wait()
                if cancel.is_set():
                    done = True
                    self.stopped.append(gen_id)
                    yield sse.event(sse.CANCELLED)
                    return
                ids = [i] if self.named_ids else []
                yield sse.event(wire.encode(ww.Token(f"tok{i} ", i, ids)))
                if self.mode == "die":
                    if self.die_when is not None:
                        await self.die_when.wait()
                    done = True
                    return
                if self.mode == "stall":
                    await trio.sleep_forever()
                if self.mode == "garbage":
                    done = True
                    yield b"data: {not json\n\n"
                    return
            usage = ww.Usage(
                len((req.prompt or "").split()), n, len((req.prompt or "").split()) + n
            )
            timings = ww.Timings(0.0, 1.0, 1.0, 1.0, 100.0)
            reason: ww.FinishReason = "length" if n == first + req.max_tokens else "stop"
            yield sse.event(wire.encode(ww.Finished(reason, usage, timings)))
            yield sse.event(sse.DONE)
            done = True
            self.finished.append(gen_id)
        finally:
            if not done:
                self.stopped.append(gen_id)

    def app(self) -> object:
        app = create_app(f"fake-worker-{self.id}", self.token)

        @app.post("/v1/inference")
        async def start() -> Response:
            req = wire.decode(await request.get_data(), ww.InferenceRequest)
            self.posts.append(req)
            if self.mode == "refuse":
                return json_response({"error": {"message": "engine exploded"}}, status=500)
            if self.mode == "busy":
                return json_response({"error": {"message": "all slots busy"}}, status=429)
            words = len((req.prompt or "").split())
            if self.context and words >= self.context:
                raise UsageError(
                    f"invalid request body: the prompt is {words} tokens, longer than the "
                    f"model's context of {self.context} tokens allows",
                    param="prompt",
                    code="context_length_exceeded",
                )
            gen_id = f"gen-{self.id}-{len(self.posts)}"
            self._requests[gen_id] = req
            self._cancel[gen_id] = trio.Event()
            # The queen starts every attempt in one call; a second call would fail the test.
            if not sse.wants_stream(request.headers.get("Accept")):
                return json_response({"error": {"message": "one call only"}}, status=400)
            headers = {**sse.SSE_HEADERS, sse.JOB_ID_HEADER: gen_id}
            return Response(self._generate(gen_id), headers=headers)

        @app.delete("/v1/inference/<gen_id>")
        async def cancel(gen_id: str) -> Response:
            self.deletes.append(gen_id)
            if gen_id in self._cancel:
                self._cancel[gen_id].set()
            return Response(b"", status=204)

        @app.get("/health")
        async def health() -> Response:
            if self.mode == "stall":
                await trio.sleep_forever()
            return json_response(ww.Health("ready"))

        return app

    async def start(self, nursery: trio.Nursery) -> FakeWorker:
        """Serve on a free loopback port until ``nursery`` is cancelled."""
        self.url = await nursery.start(
            functools.partial(serve, self.app(), "127.0.0.1", 0, shutdown=trio.sleep_forever)  # type: ignore[arg-type]
        )
        return self


def heartbeat(
    hive: str,
    workers: list[WorkerStatus],
    *,
    interval_s: float = 3600.0,
    contexts: dict[str, int] | None = None,
) -> HiveHeartbeat:
    """One hive's report; a long interval keeps it fresh for a whole test.

    ``contexts``: the context length of each model the hive reports (none by default).
    """
    return HiveHeartbeat(
        hive=hive,
        url="http://127.0.0.1:1",
        host=HostTelemetry(cpu_count=2, load_1m=0.0, ram_total_mb=4096, ram_free_mb=2048),
        workers=workers,
        models=sorted({w.model for w in workers}),
        contexts=contexts or {},
        interval_s=interval_s,
    )


# The cluster secret of each queen a test started (`tests.queen.conftest.start_queen`), by URL:
# a hive's report needs a credential, loopback or not.
QUEEN_SECRETS: dict[str, str] = {}


def hive_auth(queen_url: str) -> dict[str, str]:
    """The header a hive's report to the queen at ``queen_url`` needs (its cluster secret)."""
    return {"Authorization": f"Bearer {QUEEN_SECRETS[queen_url]}"}


async def register(
    queen_url: str,
    hive: str,
    *workers: FakeWorker | WorkerStatus,
    token: str = "",
    contexts: dict[str, int] | None = None,
) -> None:
    """Announce ``workers`` (all on ``hive``) to the queen, with ``token`` or its cluster secret
    (``contexts`` as for `heartbeat`)."""
    statuses = [w.status() if isinstance(w, FakeWorker) else w for w in workers]
    token = token or QUEEN_SECRETS.get(queen_url, "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers) as client:
        response = await client.post(
            f"{queen_url}/v1/heartbeat",
            content=wire.encode(heartbeat(hive, statuses, contexts=contexts)),
        )
        assert response.status_code == 204, response.text


async def serve_fakes(count: int, tokens: int, slots: int) -> None:
    """Serve ``count`` fake workers (``tokens`` tokens a job) and print their URLs on one line."""
    async with trio.open_nursery() as nursery:
        workers = [
            await FakeWorker(tokens=tokens, slots=slots).start(nursery) for _ in range(count)
        ]
        print("fakes " + " ".join(w.url for w in workers), flush=True)


if __name__ == "__main__":
    # A process of fake workers, for load that must not starve them: COUNT TOKENS SLOTS.
    import sys

    count, tokens, slots = (int(a) for a in sys.argv[1:4])
    trio.run(serve_fakes, count, tokens, slots)
