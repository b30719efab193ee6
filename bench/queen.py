"""The queen's figures: added time to first token, relay throughput, scheduling rate.

Usage: ``python bench/queen.py [--models-dir DIR] [--requests 200] [--fakes 50] [--seconds 10]``

1. Against one real worker (the default model, int4, CPU), alternating request by request:
   time to first token straight to the worker vs through the queen (p50/p99 of each and of the
   paired difference), in both calling styles: one call (the POST answers the stream) and
   two (POST, then GET the stream); then decode tokens/s of long generations, direct vs relayed.
2. With ``--fakes`` fast fake workers (0 skips this part; a separate process answering the worker API at once, one
   token per job): the sustained rate of short jobs the queen admits, schedules and relays.

The queen, the real worker and the fake workers are separate processes; this one is the client,
speaking HTTP/1.1 with keep-alive through h11 so its own cost stays small and equal on both paths.
``--skip-real`` runs only part 2 (no model needed). The real worker computes on all cores but
one (``--worker-threads``): on a small machine a worker that takes every core makes its own time
to first token vary by more than 10 ms between consecutive requests (the queen, this client and
the worker's event loop wait for a core), and the p99 of a paired difference would measure that
noise rather than the queen. ``--worker-threads 0`` gives the worker every core. Targets: added TTFT < 2 ms p50 and < 10 ms
p99; relay costs < 5 % of tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import psutil
import trio

MODEL = "smollm2-135m-instruct"
# Hives report with a credential since the queen has keys and hive tokens: the bench is the admin.
TOKEN = "bench-admin-token-0123456789abcdef"
FAKE_MODEL = "fake-model"
LONG_RUNS = 8


# --- a small keep-alive HTTP/1.1 client ------------------------------------------------------


class Conn:
    """One keep-alive connection; requests run one after another."""

    def __init__(self, url: str, token: str = "") -> None:
        self.token = token
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.sock: trio.SocketStream | None = None
        self.h11 = h11.Connection(h11.CLIENT)

    async def _event(self) -> object:
        assert self.sock is not None
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.sock.receive_some(65536))

    def _next_cycle(self) -> None:
        # A server may close after some requests (hypercorn: 1,000); `_send` reconnects then.
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()

    async def _send(self, method: str, path: str, body: bytes, accept: str = "*/*") -> int:
        if self.sock is None or self.h11.our_state is not h11.IDLE:
            if self.sock is not None:
                await self.sock.aclose()
            self.sock = await trio.open_tcp_stream(self.host, self.port)
            self.h11 = h11.Connection(h11.CLIENT)
        headers = [("Host", self.host), ("Content-Length", str(len(body))), ("Accept", accept)]
        if body:
            headers.append(("Content-Type", "application/json"))
        if self.token:
            headers.append(("Authorization", f"Bearer {self.token}"))
        data = self.h11.send(h11.Request(method=method, target=path, headers=headers))
        data += self.h11.send(h11.Data(data=body)) if body else b""
        data += self.h11.send(h11.EndOfMessage())
        await self.sock.send_all(data)
        response = await self._event()
        assert isinstance(response, h11.Response), response
        return response.status_code

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        status = await self._send(method, path, body)
        out = b""
        while not isinstance(event := await self._event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                out += event.data
        self._next_cycle()
        return status, out

    async def stream(
        self, method: str, path: str, body: bytes, on_data: Callable[[bytes], None]
    ) -> None:
        """Read an SSE stream, calling ``on_data`` with each ``data:`` payload."""
        status = await self._send(method, path, body, accept="text/event-stream")
        assert status == 200, status
        pending = b""
        while not isinstance(event := await self._event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                *lines, pending = (pending + bytes(event.data)).split(b"\n")
                for line in lines:
                    if line.startswith(b"data: "):
                        on_data(line[6:])
        self._next_cycle()

    async def close(self) -> None:
        if self.sock is not None:
            await self.sock.aclose()


async def run_once(
    conn: Conn, start_path: str, body: dict[str, object], one_call: bool = False
) -> tuple[float, float, int]:
    """Start a generation and follow it: (time to first token, decode seconds, tokens).

    ``one_call``: the POST answers with the stream; otherwise POST, then GET the stream.
    """
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    marks: list[float] = []
    last = [b""]

    def on_data(payload: bytes) -> None:
        if payload.startswith(b'{"type":"token"'):
            marks.append(time.perf_counter())
        last[0] = payload

    if one_call:
        await conn.stream("POST", start_path, data, on_data)
    else:
        status, answer = await conn.request("POST", start_path, data)
        assert status in (200, 202), answer
        await conn.stream("GET", json.loads(answer)["sse_url"], b"", on_data)
    assert marks, f"no token; the stream ended with {last[0]!r}"
    return marks[0] - t0, marks[-1] - marks[0], len(marks)


# --- processes -------------------------------------------------------------------------------


@dataclasses.dataclass
class Daemon:
    url: str
    process: psutil.Process

    def cpu_s(self) -> float:
        """CPU seconds the daemon used so far (user and system)."""
        times = self.process.cpu_times()
        return float(times.user + times.system)


@contextlib.contextmanager
def daemon(command: list[str], prefix: str, wait_for: str | None = None) -> Iterator[Daemon]:
    """Start a daemon, read its address from the line starting with ``prefix``; stop it after."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(prefix):
                raise SystemExit(f"{command[:4]} did not start: {line!r}")
            if wait_for is not None:
                while not proc.stdout.readline().startswith(wait_for):
                    pass
            yield Daemon(line.split()[-1], psutil.Process(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def heartbeat(workers: list[tuple[str, str, str, int]]) -> bytes:
    return json.dumps(
        {
            "hive": "bench",
            "url": "http://127.0.0.1:1",
            "host": {"cpu_count": 2, "load_1m": 0, "ram_total_mb": 1, "ram_free_mb": 1},
            "interval_s": 3600,
            "workers": [
                {
                    "id": wid,
                    "pid": 0,
                    "model": model,
                    "device": "cpu",
                    "url": url,
                    "state": "ready",
                    "slots_total": slots,
                    "slots_free": slots,
                }
                for wid, model, url, slots in workers
            ],
        }
    ).encode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


# --- part 1: one real worker -----------------------------------------------------------------


async def paired_ttft(
    direct: Conn, via: Conn, requests: int, one_call: bool
) -> tuple[list[float], list[float]]:
    """Time to first token of a 1-token job, alternating direct and queen request by request."""
    short = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
    job = {"operation": "infer", "model": MODEL, **short}
    order = [(direct, "/v1/inference", short), (via, "/v1/jobs", job)]
    for _ in range(5):
        for conn, path, body in order:
            await run_once(conn, path, body, one_call)
    ttft: tuple[list[float], list[float]] = ([], [])
    for i in range(requests):
        for k in (0, 1) if i % 2 else (1, 0):
            conn, path, body = order[k]
            ttft[k].append((await run_once(conn, path, body, one_call))[0] * 1000)
    return ttft


async def real_worker_figures(queen: Daemon, worker: str, requests: int) -> None:
    direct, via = Conn(worker), Conn(queen.url, TOKEN)
    status, _ = await via.request("POST", "/v1/heartbeat", heartbeat([("w", MODEL, worker, 4)]))
    assert status == 204
    print(f"time to first token over {requests} requests (ms):   p50      p99")
    for one_call, how in [(True, "one call (POST answers the stream)"), (False, "two calls")]:
        cpu_s = queen.cpu_s()
        d_ttft, q_ttft = await paired_ttft(direct, via, requests, one_call)
        cpu_ms = (queen.cpu_s() - cpu_s) * 1000 / len(q_ttft)
        diff = [q - d for q, d in zip(q_ttft, d_ttft, strict=True)]
        print(f" {how}:")
        for label, values in [
            ("straight to the worker", d_ttft),
            ("through the queen", q_ttft),
            ("added by the queen (paired difference)", diff),
        ]:
            print(f"  {label:<42}  {pct(values, 0.5):7.2f}  {pct(values, 0.99):7.2f}", end="")
            print("   (target < 2 / < 10)" if values is diff else "")
        print(f"  queen CPU time per job (ms)                 {cpu_ms:7.2f}")

    story = [{"role": "user", "content": "Write a long story about a bee who learns to fly."}]
    long = {"messages": story, "max_tokens": 200, "temperature": 0}
    rates: dict[str, list[float]] = {"direct": [], "queen": []}
    for _ in range(LONG_RUNS):
        for name, conn, path, body in [
            ("direct", direct, "/v1/inference", long),
            ("queen", via, "/v1/jobs", {"operation": "infer", "model": MODEL, **long}),
        ]:
            _, seconds, tokens = await run_once(conn, path, body, one_call=True)
            rates[name].append((tokens - 1) / seconds)
    d, q = statistics.median(rates["direct"]), statistics.median(rates["queen"])
    print(
        f"decode tokens/s (median of {LONG_RUNS}, 200 tokens max): direct {d:.1f}, relayed {q:.1f}"
        f", relay cost {100 * (1 - q / d):+.1f} %   (target < 5 %)"
    )
    await direct.close()
    await via.close()


# --- part 2: many fast fake workers ----------------------------------------------------------


async def serve_fakes(count: int) -> None:
    """Serve ``count`` fake workers that answer a POST at once with a one-token stream."""
    started = b'{"type":"started"}'
    token = b'{"type":"token","t":"x","i":0}'
    usage = b'{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}'
    timings = b'{"queue_ms":0,"prefill_ms":0,"ttft_ms":0,"decode_ms":0,"tokens_per_s":0}'
    finished = b'{"type":"finished","finish_reason":"length","usage":' + usage
    finished += b',"timings":' + timings + b"}"
    sse = b"".join(b"data: " + p + b"\n\n" for p in (started, token, finished, b"[DONE]"))

    async def handle(sock: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        target = b""
        with contextlib.suppress(trio.BrokenResourceError, h11.RemoteProtocolError):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await sock.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    target = event.target
                elif isinstance(event, h11.EndOfMessage):
                    assert target == b"/v1/inference", target
                    headers = [
                        (b"Content-Type", b"text/event-stream"),
                        (b"Content-Length", b"%d" % len(sse)),
                        (b"Rbee-Job-Id", b"g"),
                    ]
                    out = conn.send(h11.Response(status_code=200, headers=headers)) or b""
                    out += (conn.send(h11.Data(data=sse)) or b"") + (
                        conn.send(h11.EndOfMessage()) or b""
                    )
                    await sock.send_all(out)
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    async with trio.open_nursery() as nursery:
        urls = []
        for _ in range(count):
            serve = functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            urls.append(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        print("fakes " + " ".join(urls), flush=True)


async def scheduling_rate(queen: Daemon, fake_urls: list[str], seconds: float, lanes: int) -> None:
    conn = Conn(queen.url, TOKEN)
    workers = [(f"fake-{i}", FAKE_MODEL, url, 8) for i, url in enumerate(fake_urls)]
    status, _ = await conn.request("POST", "/v1/heartbeat", heartbeat(workers))
    assert status == 204
    body = {"operation": "infer", "model": FAKE_MODEL, "prompt": "x", "max_tokens": 1}
    done = 0
    latencies: list[float] = []

    async def lane(deadline: float) -> None:
        nonlocal done
        c = Conn(queen.url, TOKEN)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await run_once(c, "/v1/jobs", body, one_call=True)
            latencies.append(time.perf_counter() - t0)
            done += 1
        await c.close()

    warm = time.perf_counter() + 1.0
    async with trio.open_nursery() as nursery:
        for _ in range(lanes):
            nursery.start_soon(lane, warm)
    done, latencies = 0, []
    cpu_s = queen.cpu_s()
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(lanes):
            nursery.start_soon(lane, start + seconds)
    elapsed = time.perf_counter() - start
    cpu_ms = (queen.cpu_s() - cpu_s) * 1000 / done
    print(
        f"short jobs through the queen with {len(fake_urls)} fake workers, {lanes} clients: "
        f"{done / elapsed:.0f} jobs/s sustained over {elapsed:.1f} s "
        f"(job latency p50 {pct(latencies, 0.5) * 1000:.1f} ms, p99 {pct(latencies, 0.99) * 1000:.1f} ms; "
        f"queen CPU time {cpu_ms:.2f} ms a job)"
    )
    await conn.close()


def model_store(given: Path | None, tmp: Path) -> Path:
    if given is not None:
        return given
    from rbee.models.importer import DEFAULT_MODEL, default_model_path, import_gguf
    from rbee.models.store import ModelStore

    root = tmp / "models"
    import_gguf(ModelStore(root), default_model_path(), name=DEFAULT_MODEL, precisions=("int4",))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="A model store with the default model.")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--fakes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lanes", type=int, default=16, help="Concurrent clients in part 2.")
    parser.add_argument("--skip-real", action="store_true", help="Only the fake-worker part.")
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="The real worker's CPU threads (0: all; default: all cores but one).",
    )
    parser.add_argument("--serve-fakes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fakes:
        trio.run(serve_fakes, args.serve_fakes)
        return
    rbee = [sys.executable, "-m", "rbee"]
    with tempfile.TemporaryDirectory() as tmp:
        queen_cmd = [*rbee, "queen", "--port", "0", "--db", f"{tmp}/queen.db", "--token", TOKEN]
        with daemon(queen_cmd, "rbee queen listening on") as queen:
            if not args.skip_real:
                store = model_store(args.models_dir, Path(tmp))
                worker_cmd = [*rbee, "worker", "daemon", "--model", MODEL]
                worker_cmd += ["--models-dir", str(store)]
                worker_cmd += ["--port", "0", "--slots", "4", "--threads", str(args.worker_threads)]
                print(f"real worker: {MODEL} int4, {args.worker_threads or 'all'} CPU threads")
                with daemon(worker_cmd, "rbee worker listening on", "rbee worker ready") as w:
                    trio.run(real_worker_figures, queen, w.url, args.requests)
            if args.fakes <= 0:
                return
            fakes_cmd = [sys.executable, __file__, "--serve-fakes", str(args.fakes)]
            with subprocess.Popen(fakes_cmd, stdout=subprocess.PIPE, text=True) as fakes:
                try:
                    assert fakes.stdout is not None
                    urls = fakes.stdout.readline().split()[1:]
                    assert len(urls) == args.fakes, "the fake workers did not start"
                    trio.run(scheduling_rate, queen, urls, args.seconds, args.lanes)
                finally:
                    fakes.terminate()
                    fakes.wait(timeout=30)


if __name__ == "__main__":
    main()
