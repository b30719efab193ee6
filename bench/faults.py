"""The failover gap a client sees when its worker dies mid-stream, and whether its text survived.

Usage: ``python bench/faults.py [--models-dir DIR] [--rounds 3] [--max-tokens 48]``

A queen process (no local hive) and two worker processes on the default model (int4, CPU, one
thread each): the "victim" serves the stream, the "spare" is ready. After ``--cut`` tokens the
victim gets ``kill -9`` (``--signal stop``: SIGSTOP, which the queen detects by the worker's
silence; ``RBEE_QUEEN_STALL_FLOOR_S`` sets that bound's floor). Each round has a queen and a victim
of its own, greedy and seeded rounds alternating. Printed per round and as p50/max: the gap from
the last token before the kill to the next one, the usual gap between two tokens, and whether the
client's text equals the same request's uninterrupted text (from the spare, straight). Target:
gap < 1.5 s with a second worker ready, text identical.
"""

from __future__ import annotations

import argparse
import contextlib
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

MODEL = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea,"
RBEE = [sys.executable, "-m", "rbee"]


@contextlib.contextmanager
def daemon(command: list[str], prefix: str, ready: str | None = None) -> Iterator[tuple[str, int]]:
    """Start a daemon; yield its URL (from the line starting with ``prefix``) and pid; kill after."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
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


def register(queen: str, hive: str, worker_id: str, url: str, pid: int) -> None:
    status = {"id": worker_id, "pid": pid, "model": MODEL, "device": "cpu", "url": url}
    status |= {"state": "ready", "slots_total": 2, "slots_free": 2}
    host = {"cpu_count": 2, "load_1m": 0, "ram_total_mb": 1, "ram_free_mb": 1}
    body = {"hive": hive, "url": "http://127.0.0.1:1", "host": host, "interval_s": 3600}
    body |= {"workers": [status], "models": [MODEL]}
    httpx.post(f"{queen}/v1/heartbeat", json=body).raise_for_status()


def reference(worker: str, sampling: dict[str, Any], max_tokens: int) -> str:
    """The uninterrupted text, straight from a worker."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, **sampling}
    headers = {"Accept": "text/event-stream"}
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
    """Stream one job through the queen, calling ``kill`` after ``cut`` tokens: its text, the
    arrival time of each token, and the terminal marker."""
    body = {"operation": "infer", "model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens}
    headers = {"Accept": "text/event-stream"}
    text, marks, end = "", [], ""
    with httpx.stream(
        "POST", f"{queen}/v1/jobs", json={**body, **sampling}, headers=headers, timeout=120
    ) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line.startswith("data: ["):
                end = line[6:]
            elif (event := json.loads(line[6:]))["type"] == "token":
                marks.append(time.perf_counter())
                text += event["t"]
                if len(marks) == cut:
                    kill()
    return text, marks, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="A model store with the default model.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--cut", type=int, default=8, help="Tokens before the kill.")
    parser.add_argument("--signal", choices=["kill", "stop"], default="kill")
    args = parser.parse_args()
    sig = signal.SIGKILL if args.signal == "kill" else signal.SIGSTOP
    with tempfile.TemporaryDirectory() as tmp:
        store = args.models_dir or import_default(Path(tmp))
        worker_cmd = [*RBEE, "worker", "daemon", "--model", MODEL, "--models-dir", str(store)]
        worker_cmd += ["--port", "0", "--slots", "2", "--threads", "1"]
        gaps, usual, same = [], [], []
        with daemon(worker_cmd, "rbee worker listening on", "rbee worker ready") as (spare, sp):
            print(f"{args.signal} after {args.cut} of {args.max_tokens} tokens, spare ready")
            for n in range(args.rounds):
                sampling: dict[str, Any] = (
                    {"temperature": 0} if n % 2 == 0 else {"temperature": 0.9, "seed": n}
                )
                expected = reference(spare, sampling, args.max_tokens)
                queen_cmd = [*RBEE, "queen", "--port", "0", "--db", f"{tmp}/q{n}.db"]
                queen_cmd += ["--no-local-hive"]
                with (
                    daemon(queen_cmd, "rbee queen listening on") as (queen, _),
                    daemon(worker_cmd, "rbee worker listening on", "rbee worker ready") as (
                        victim,
                        vp,
                    ),
                ):
                    register(queen, "a", "victim", victim, vp)
                    register(queen, "b", "spare", spare, sp)
                    text, marks, end = cut_stream(
                        queen, sampling, args.max_tokens, args.cut, lambda: os.kill(vp, sig)
                    )
                steps = [b - a for a, b in itertools.pairwise(marks)]
                gap = max(steps[args.cut - 1 :]) if len(steps) >= args.cut else float("nan")
                gaps.append(gap)
                usual.extend(steps[: args.cut - 1])
                same.append(text == expected and end == "[DONE]")
                kind = "greedy" if n % 2 == 0 else "seeded"
                print(
                    f"round {n + 1} ({kind}): gap {gap * 1000:.0f} ms, "
                    f"{len(marks)} tokens, end {end}, text identical: {same[-1]}"
                )
    print(
        f"failover gap p50 {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms"
        f" (target < 1500 ms); usual gap between tokens p50 "
        f"{statistics.median(usual) * 1000:.0f} ms; text identical in {sum(same)} of {len(same)}"
    )


def import_default(tmp: Path) -> Path:
    from rbee.models.importer import DEFAULT_MODEL, default_model_path, import_gguf
    from rbee.models.store import ModelStore

    root = tmp / "models"
    import_gguf(ModelStore(root), default_model_path(), name=DEFAULT_MODEL, precisions=("int4",))
    return root


if __name__ == "__main__":
    main()
