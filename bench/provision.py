"""The hive's CPU use while idle with 4 real workers, heartbeating every second to a stand-in queen.

Usage: ``python bench/provision.py [--workers 4] [--seconds 10] [--models-dir DIR]``. Starts
``rbee hive`` as its own process, spawns the workers for the default model (imported into a
temporary store first unless ``--models-dir`` already holds it), lets them settle, then measures
the hive process's CPU time (user + system, psutil) over the window. Target: < 2% of one core.
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import signal
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    models_dir = args.models_dir or scratch / "models"
    ensure_model(ModelStore(models_dir), DEFAULT_MODEL)

    queen = Queen(("127.0.0.1", 0), QueenHandler)
    threading.Thread(target=queen.serve_forever, daemon=True).start()
    queen_url = f"http://127.0.0.1:{queen.server_address[1]}"

    command = [sys.executable, "-m", "rbee", "hive", "--queen", queen_url, "--name", "bench"]
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
        if not args.models_dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
