"""The failover gap a client sees when its worker dies mid-stream, and whether its text survived.

Usage: ``python bench/faults.py [--models-dir DIR] [--rounds 3] [--max-tokens 48]
[--signal kill|stop|hive|queen] [--load N]``

A queen process (no local hive) and two worker processes on the default model (int4, CPU, one
thread each): the "victim" serves the stream, the "spare" is ready. After ``--cut`` tokens the
victim gets ``kill -9`` (``--signal stop``: SIGSTOP, which the queen detects by the worker's
silence; ``RBEE_QUEEN_STALL_FLOOR_S`` sets that bound's floor). Each round has a queen and a victim
of its own, greedy and seeded rounds alternating. Printed per round and as p50/max: the gap from
the last token before the kill to the next one, the usual gap between two tokens, and whether the
client's text equals the same request's uninterrupted text (from the spare, straight). Target:
gap < 1.5 s with a second worker ready, text identical.

``--signal hive``: the same with two ``rbee hive daemon`` processes, each with a worker, and
``kill -9`` of the hive whose worker serves the stream (its worker dies with it).
``--signal queen``: ``kill -9`` of a queen process while a job streams and one waits behind it
(the worker has one slot), then a restart on the same port: how long the streaming client took to
see the error, and from the restart to the waiting job's first token (its client reconnects as
``rbee infer`` does) and to its end; how the running job ended.
``--load N``: N streaming requests at once through a queen process to 4 fake workers (16 slots
each, a process of their own), twice: answered / 429 / errors, and the queen's RSS idle, after the
first round, at its peak and after the second.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.queen.load import fake_workers, peak_rss, queen_process, stream_all  # noqa: E402

from rbee.queen.keys import SECRET_FILE, hive_token  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"
RBEE = [sys.executable, "-m", "rbee"]


@contextlib.contextmanager
def daemon(
    command: list[str], prefix: str, ready: str | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Start a daemon; yield its URL (from the line starting with ``prefix``) and pid; kill after."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(prefix):
                raise SystemExit(f"{command[2:5]} did not start: {line!r}")
            while ready is not None and not proc.stdout.readline().startswith(ready):
                pass
            yield line.split()[-1], proc.pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=30)


def register(queen: str, secret: str, hive: str, worker_id: str, url: str, pid: int) -> None:
    """Report a worker as hive ``hive``'s, with the queen's cluster secret (``secret``)."""
    status = {"id": worker_id, "pid": pid, "model": MODEL, "device": "cpu", "url": url}
    status |= {"state": "ready", "slots_total": 2, "slots_free": 2}
    host = {"cpu_count": 2, "load_1m": 0, "ram_total_mb": 1, "ram_free_mb": 1}
    body = {"hive": hive, "url": "http://127.0.0.1:1", "host": host, "interval_s": 3600}
    body |= {"workers": [status], "models": [MODEL]}
    headers = {"Authorization": f"Bearer {secret}"}
    httpx.post(f"{queen}/v1/heartbeat", json=body, headers=headers).raise_for_status()


def secret_of(db: str) -> str:
    """The cluster secret a queen made beside its database ``db``."""
    return (Path(db).parent / SECRET_FILE).read_text(encoding="ascii").strip()


def reference(worker: str, sampling: dict[str, Any], max_tokens: int, token: str = "") -> str:
    """The uninterrupted text, straight from a worker (``token``: its hive's)."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, **sampling}
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    text = ""
    with httpx.stream(
        "POST", f"{worker}/v1/inference", json=body, headers=headers, timeout=120
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                text += event["t"] if event["type"] == "token" else ""
    return text


def cut_stream(
    queen: str, sampling: dict[str, Any], max_tokens: int, cut: int, kill: Any
) -> tuple[str, list[float], str]:
    """Stream one job through the queen, calling ``kill(job_id)`` after ``cut`` tokens: its text,
    the arrival time of each token, and the terminal marker."""
    body = {"operation": "infer", "model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens}
    headers = {"Accept": "text/event-stream"}
    text, marks, end = "", [], ""
    with httpx.stream(
        "POST", f"{queen}/v1/jobs", json={**body, **sampling}, headers=headers, timeout=120
    ) as r:
        job_id = r.headers["rbee-job-id"]
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line.startswith("data: ["):
                end = line[6:]
            elif (event := json.loads(line[6:]))["type"] == "token":
                marks.append(time.perf_counter())
                text += event["t"]
                if len(marks) == cut:
                    kill(job_id)
                    # The gap runs from the kill: finding what to kill is no part of it.
                    marks[-1] = time.perf_counter()
    return text, marks, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="A model store with the default model.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--cut", type=int, default=8, help="Tokens before the kill.")
    parser.add_argument("--signal", choices=["kill", "stop", "hive", "queen"], default="kill")
    parser.add_argument("--load", type=int, default=0, help="Only the load part, N requests.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.load:
            trio.run(load, Path(tmp), args.load)
            return
        store = args.models_dir or import_default(Path(tmp))
        if args.signal == "queen":
            queen_kill(Path(tmp), store)
            return
        gaps, usual, same = [], [], []
        for n, sampling, marks, text, expected, end in (
            hive_rounds if args.signal == "hive" else worker_rounds
        )(args, Path(tmp), store):
            steps = [b - a for a, b in itertools.pairwise(marks)]
            gap = max(steps[args.cut - 1 :]) if len(steps) >= args.cut else float("nan")
            gaps.append(gap)
            usual.extend(steps[: args.cut - 1])
            same.append(text == expected and end == "[DONE]")
            kind = "greedy" if "seed" not in sampling else "seeded"
            print(
                f"round {n + 1} ({kind}): gap {gap * 1000:.0f} ms, "
                f"{len(marks)} tokens, end {end}, text identical: {same[-1]}"
            )
    print(
        f"failover gap p50 {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms"
        f" (target < 1500 ms); usual gap between tokens p50 "
        f"{statistics.median(usual) * 1000:.0f} ms; text identical in {sum(same)} of {len(same)}"
    )


Round = tuple[int, dict[str, Any], list[float], str, str, str]


def sampling_of(n: int) -> dict[str, Any]:
    return {"temperature": 0} if n % 2 == 0 else {"temperature": 0.9, "seed": n}


def worker_command(store: Path) -> list[str]:
    command = [*RBEE, "worker", "daemon", "--model", MODEL, "--models-dir", str(store)]
    return [*command, "--port", "0", "--slots", "2", "--threads", "1"]


def queen_command(db: str, port: int = 0) -> list[str]:
    return [*RBEE, "queen", "--port", str(port), "--db", db, "--no-local-hive"]


def worker_rounds(args: argparse.Namespace, tmp: Path, store: Path) -> Iterator[Round]:
    """kill -9 (or SIGSTOP) of the victim worker; the spare, registered as another hive's, takes
    the stream up."""
    sig = signal.SIGKILL if args.signal == "kill" else signal.SIGSTOP
    command = worker_command(store)
    with daemon(command, "rbee worker listening on", "rbee worker ready") as (spare, sp):
        print(f"{args.signal} after {args.cut} of {args.max_tokens} tokens, spare ready")
        for n in range(args.rounds):
            sampling = sampling_of(n)
            expected = reference(spare, sampling, args.max_tokens)
            db = f"{tmp}/q{n}.db"
            with (
                daemon(queen_command(db), "rbee queen listening on") as (queen, _),
                daemon(command, "rbee worker listening on", "rbee worker ready") as (victim, vp),
            ):
                register(queen, secret_of(db), "a", "victim", victim, vp)
                register(queen, secret_of(db), "b", "spare", spare, sp)
                text, marks, end = cut_stream(
                    queen, sampling, args.max_tokens, args.cut, lambda _: os.kill(vp, sig)
                )
            yield n, sampling, marks, text, expected, end


def hive_env(tmp: Path, db: str, slots: int) -> dict[str, str]:
    """A hive's environment: its token from the secret beside ``db``, its workers' settings."""
    env = dict(os.environ)
    env.update(RBEE_QUEEN_DB=db, RBEE_WORKER_SLOTS=str(slots), RBEE_WORKER_THREADS="1")
    env.update(XDG_CONFIG_HOME=str(tmp / "config"), XDG_DATA_HOME=str(tmp / "data"))
    return env


def hive_command(queen: str, name: str, store: Path, tmp: Path) -> list[str]:
    command = [*RBEE, "hive", "daemon", "--queen", queen, "--name", name, "--port", "0"]
    command += ["--models-dir", str(store), "--state-dir", str(tmp / f"{name}-state")]
    return [*command, "--heartbeat-interval", "0.3"]


def spawn(queen: str, hive: str) -> dict[str, Any]:
    """Start a worker of the default model on ``hive`` through the queen, once it is online."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hives = httpx.get(f"{queen}/v1/hives").json()["hives"]
        if any(h["name"] == hive and h["status"] == "online" for h in hives):
            break
        time.sleep(0.05)
    body = {"hive": hive, "model": MODEL, "wait": True}
    response = httpx.post(f"{queen}/v1/workers", json=body, timeout=300)
    response.raise_for_status()
    status: dict[str, Any] = response.json()
    return status


def kill_hive_of(queen: str, hive_pids: dict[str, int], job_id: str) -> None:
    """kill -9 the hive whose worker runs ``job_id``."""
    worker = httpx.get(f"{queen}/v1/jobs/{job_id}").json()["worker"]
    entries = httpx.get(f"{queen}/v1/workers").json()["workers"]
    [hive] = [e["hive"] for e in entries if e["worker"]["id"] == worker]
    os.kill(hive_pids[hive], signal.SIGKILL)


def hive_rounds(args: argparse.Namespace, tmp: Path, store: Path) -> Iterator[Round]:
    """kill -9 of the hive whose worker serves the stream; the other hive's worker takes it up."""
    print(f"hive kill after {args.cut} of {args.max_tokens} tokens, a second hive's worker ready")
    for n in range(args.rounds):
        sampling = sampling_of(n)
        db = f"{tmp}/q{n}.db"
        with daemon(queen_command(db), "rbee queen listening on") as (queen, _):
            env = hive_env(tmp, db, 2)
            with (
                daemon(hive_command(queen, "a", store, tmp), "rbee hive listening on", env=env) as (
                    _,
                    pid_a,
                ),
                daemon(hive_command(queen, "b", store, tmp), "rbee hive listening on", env=env) as (
                    _,
                    pid_b,
                ),
            ):
                # The reference through the queen (a worker takes only its hive's and the
                # queen's tokens), before the second worker exists.
                spawn(queen, "a")
                expected, _, _ = cut_stream(queen, sampling, args.max_tokens, -1, None)
                spare = spawn(queen, "b")
                # Its first answer warms it up, as the spare of the worker rounds is warm.
                reference(spare["url"], sampling, 4, hive_token(secret_of(db), "b"))
                kill = functools.partial(kill_hive_of, queen, {"a": pid_a, "b": pid_b})
                text, marks, end = cut_stream(queen, sampling, args.max_tokens, args.cut, kill)
        yield n, sampling, marks, text, expected, end


def queen_kill(tmp: Path, store: Path) -> None:
    """kill -9 of the queen with one job streaming and one waiting; then a restart."""
    import socket
    import threading

    from rbee.queen.client import QueenClient
    from rbee.wire.queen import InferOperation
    from rbee.wire.worker import Token

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = f"{tmp}/q.db"
    url = f"http://127.0.0.1:{port}"
    marks: dict[str, float] = {}
    running_id: list[str] = []

    def stream_long() -> None:
        body = {"operation": "infer", "model": MODEL, "prompt": PROMPT, "max_tokens": 400}
        headers = {"Accept": "text/event-stream"}
        try:
            with httpx.stream("POST", f"{url}/v1/jobs", json=body, headers=headers) as r:
                running_id.append(r.headers["rbee-job-id"])
                for line in r.iter_lines():
                    if '"type":"token"' in line:
                        marks.setdefault("running_token", time.perf_counter())
        except httpx.TransportError:
            marks["running_error"] = time.perf_counter()

    def follow_waiting() -> None:
        with QueenClient(url) as client:
            for event in client.run(InferOperation(model=MODEL, prompt=PROMPT, max_tokens=8)):
                if isinstance(event, Token):
                    marks.setdefault("waiting_token", time.perf_counter())
        marks["waiting_end"] = time.perf_counter()

    env = hive_env(tmp, db, 1)
    with contextlib.ExitStack() as stack:
        _, queen_pid = stack.enter_context(daemon(queen_command(db, port), "rbee queen listening"))
        stack.enter_context(daemon(hive_command(url, "a", store, tmp), "rbee hive", env=env))
        spawn(url, "a")
        running = threading.Thread(target=stream_long, daemon=True)
        running.start()
        while "running_token" not in marks:
            time.sleep(0.01)
        waiting = threading.Thread(target=follow_waiting, daemon=True)
        waiting.start()
        time.sleep(0.5)
        os.kill(queen_pid, signal.SIGKILL)
        killed = time.perf_counter()
        running.join(timeout=30)
        stack.enter_context(daemon(queen_command(db, port), "rbee queen listening"))
        restarted = time.perf_counter()
        waiting.join(timeout=120)
        record = httpx.get(f"{url}/v1/jobs/{running_id[0]}").json()
    print(
        f"queen kill: the streaming client saw the error "
        f"{(marks['running_error'] - killed) * 1000:.0f} ms after the kill; after the restart "
        f"(queen down {(restarted - killed) * 1000:.0f} ms) the waiting job's first token came "
        f"{(marks['waiting_token'] - restarted) * 1000:.0f} ms later, its end "
        f"{(marks['waiting_end'] - restarted) * 1000:.0f} ms; the running job: "
        f"{record['state']} ({record['error']})"
    )


async def load(tmp: Path, count: int) -> None:
    """``count`` streams at once, twice, through a queen process to 4 fake workers."""
    slots = 16
    body = {"operation": "infer", "model": "fake-model", "prompt": "hi", "max_tokens": 8}
    with fake_workers(4, 8, slots) as urls, queen_process(tmp) as queen:
        await queen.register("hive-a", urls, slots)
        idle = queen.rss()
        peak = [idle]
        for n in (1, 2):
            started = time.perf_counter()
            async with trio.open_nursery() as watch:
                watch.start_soon(peak_rss, queen, peak)
                outcomes = await stream_all(queen.url, count, body)
                watch.cancel_scope.cancel()
            took = time.perf_counter() - started
            done = sum(1 for o in outcomes if o.status == 200 and o.end == "[DONE]")
            refused = sum(1 for o in outcomes if o.status == 429 and o.retry_after)
            print(
                f"load round {n}: {count} streams at once: {done} answered, {refused} refused "
                f"(429 + Retry-After), {count - done - refused} errors, {took:.1f} s; queen RSS "
                f"idle {idle / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f}, "
                f"now {queen.rss() / 2**20:.1f}"
            )


def import_default(tmp: Path) -> Path:
    from rbee.models.importer import DEFAULT_MODEL, default_model_path, import_gguf
    from rbee.models.store import ModelStore

    root = tmp / "models"
    import_gguf(ModelStore(root), default_model_path(), name=DEFAULT_MODEL, precisions=("int4",))
    return root


if __name__ == "__main__":
    main()
