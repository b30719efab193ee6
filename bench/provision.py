"""Provisioning figures: the hive's idle CPU, and a job's time to first token, cold and warm.

Usage: ``python bench/provision.py [--part idle|cold-warm|all] [--workers 4] [--seconds 10]
[--rounds 3] [--models-dir DIR]``. The default model is imported into a temporary store first
unless ``--models-dir`` already holds it.

idle
    Starts ``rbee hive`` as its own process with a stand-in queen, spawns the workers for the
    default model, lets them settle, then measures the hive process's CPU time (user + system,
    psutil) over the window. Target: < 2% of one core.
cold-warm
    Starts a real ``rbee queen`` with its local hive and no worker, and times jobs for the default
    model from the moment the queen accepted the job (its 202 answer) to the first token on the
    job's stream: cold, when the worker must be spawned first (each round retires it again), and
    warm, with the worker ready. The queen's own ``ttft_ms`` (admission to first token) is shown
    next to it.
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from rbee.models.importer import DEFAULT_MODEL, ensure_model
from rbee.models.store import ModelStore


class Queen(http.server.ThreadingHTTPServer):
    """Answers every POST with 200 and counts heartbeats."""

    heartbeats = 0


class QueenHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/heartbeat":
            assert isinstance(self.server, Queen)
            self.server.heartbeats += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def idle_cpu(args: argparse.Namespace, scratch: Path, models_dir: Path) -> None:
    queen = Queen(("127.0.0.1", 0), QueenHandler)
    threading.Thread(target=queen.serve_forever, daemon=True).start()
    queen_url = f"http://127.0.0.1:{queen.server_address[1]}"

    command = [sys.executable, "-m", "rbee", "hive", "daemon", "--queen", queen_url]
    command += ["--name", "bench"]
    command += ["--port", "0", "--models-dir", str(models_dir), "--state-dir", str(scratch)]
    hive = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert hive.stdout is not None
        url = hive.stdout.readline().removeprefix("rbee hive listening on ").strip()
        started = time.perf_counter()
        pids = []
        for _ in range(args.workers):
            response = httpx.post(
                f"{url}/v1/workers",
                json={"model": DEFAULT_MODEL, "threads": 1, "wait": True},
                timeout=300,
            )
            response.raise_for_status()
            pids.append(response.json()["pid"])
        spawn_s = time.perf_counter() - started
        time.sleep(2.0)

        proc = psutil.Process(hive.pid)
        workers = [psutil.Process(pid) for pid in pids]
        beats_before, cpu_before = queen.heartbeats, cpu_seconds(proc)
        worker_cpu_before = sum(cpu_seconds(w) for w in workers)
        wall_before = time.perf_counter()
        time.sleep(args.seconds)
        wall = time.perf_counter() - wall_before
        hive_pct = 100 * (cpu_seconds(proc) - cpu_before) / wall
        worker_pct = 100 * (sum(cpu_seconds(w) for w in workers) - worker_cpu_before) / wall
        beats = queen.heartbeats - beats_before
        alive = sum(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        rss = sum(w.memory_info().rss for w in workers) / len(workers) / 2**20

        print(f"hive idle CPU, {args.workers} real workers of {DEFAULT_MODEL}, {wall:.1f} s window")
        print(f"  hive process CPU        {hive_pct:6.2f} % of one core   (target < 2 %)")
        print(f"  hive RSS                {proc.memory_info().rss / 2**20:6.1f} MB")
        print(f"  heartbeats sent         {beats:6d}       ({beats / wall:.2f}/s)")
        print(f"  workers idle CPU (sum)  {worker_pct:6.2f} % of one core")
        print(f"  worker RSS (mean)       {rss:6.1f} MB")
        print(f"  workers alive at end    {alive:6d} / {args.workers}")
        print(f"  spawn of all, serially  {spawn_s:6.2f} s (wait=true, model already imported)")
    finally:
        hive.send_signal(signal.SIGTERM)
        hive.wait(timeout=60)
        queen.shutdown()
        if hive.stdout is not None:
            hive.stdout.close()


def first_token(client: httpx.Client, url: str) -> tuple[float, float]:
    """Submit one short chat job; (seconds from the 202 to the first token, the queen's ttft)."""
    body = {
        "operation": "infer",
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "temperature": 0.0,
    }
    response = client.post(f"{url}/v1/jobs", json=body)
    response.raise_for_status()
    accepted_at = time.perf_counter()
    job = response.json()
    seconds = float("nan")
    with client.stream("GET", f"{url}{job['sse_url']}", timeout=None) as stream:
        for line in stream.iter_lines():
            if seconds != seconds and line.startswith("data: {") and '"token"' in line:
                seconds = time.perf_counter() - accepted_at
    info = client.get(f"{url}/v1/jobs/{job['job_id']}").json()
    if info["state"] != "completed":
        raise SystemExit(f"job failed: {info.get('error')}")
    return seconds, float(info["ttft_ms"]) / 1000


def workers(client: httpx.Client, url: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = client.get(f"{url}/v1/workers").json()["workers"]
    return found


def cold_warm(args: argparse.Namespace, scratch: Path, models_dir: Path) -> None:
    command = [sys.executable, "-m", "rbee", "queen", "--port", "0"]
    command += ["--db", str(scratch / "queen.db"), "--models-dir", str(models_dir)]
    queen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    try:
        assert queen.stdout is not None
        url = queen.stdout.readline().removeprefix("rbee queen listening on ").strip()
        if queen.stdout.readline().strip() != "rbee queen ready":
            raise SystemExit("the queen did not get ready")
        with httpx.Client(timeout=300) as client:
            for _ in range(args.rounds):
                for w in workers(client, url):
                    worker_id = w["worker"]["id"]  # type: ignore[index]
                    client.delete(f"{url}/v1/workers/{worker_id}").raise_for_status()
                cold.append(first_token(client, url))
                for _ in range(3):
                    warm.append(first_token(client, url))
    finally:
        queen.send_signal(signal.SIGTERM)
        queen.wait(timeout=60)
        if queen.stdout is not None:
            queen.stdout.close()

    def show(label: str, runs: list[tuple[float, float]]) -> None:
        client_ms = [1000 * c for c, _ in runs]
        queen_ms = [1000 * q for _, q in runs]
        print(
            f"  {label:<5} n={len(runs):<2} accepted->first token  median {statistics.median(client_ms):7.0f} ms"
            f"  (min {min(client_ms):.0f}, max {max(client_ms):.0f});"
            f"  queen ttft median {statistics.median(queen_ms):7.0f} ms"
        )

    print(f"job to first token through queen + local hive, {DEFAULT_MODEL}, max_tokens 8, CPU")
    show("cold", cold)
    show("warm", warm)
    ratio = statistics.median(c for c, _ in cold) / statistics.median(c for c, _ in warm)
    print(
        f"  cold/warm ratio {ratio:.1f}x (cold includes spawning the worker and loading the model)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["idle", "cold-warm", "all"], default="all")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    models_dir = args.models_dir or scratch / "models"
    ensure_model(ModelStore(models_dir), DEFAULT_MODEL)
    try:
        if args.part in ("idle", "all"):
            idle_cpu(args, scratch, models_dir)
        if args.part in ("cold-warm", "all"):
            cold_warm(args, scratch, models_dir)
    finally:
        if not args.models_dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
