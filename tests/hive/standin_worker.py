"""A stand-in for ``rbee worker daemon`` in fast supervisor tests: same arguments, same two stdout lines.

It serves ``GET /health`` and ``GET /v1/info`` (a real `WorkerInfo`) and loads nothing. Behaviour
for a test comes from the environment the hive passes on: ``STANDIN_IGNORE_SIGTERM=1`` ignores
SIGTERM, ``STANDIN_EXIT_BEFORE_READY=N`` exits with N instead of becoming ready,
``STANDIN_SLOTS_FREE=N`` reports N free slots.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import sys
import threading
import time

import msgspec

from rbee.wire.worker import Health, WorkerInfo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("group", choices=["worker"])
    parser.add_argument("verb", choices=["daemon"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slots", type=int, default=4)
    args, _ = parser.parse_known_args()
    if os.environ.get("STANDIN_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    free = int(os.environ.get("STANDIN_SLOTS_FREE", args.slots))
    info = msgspec.json.encode(
        WorkerInfo(
            model=args.model,
            precision="int4",
            provider="StandIn",
            device=args.device,
            context_length=2048,
            slots_total=args.slots,
            slots_free=free,
            queue_depth=0,
            pid=os.getpid(),
            version="0",
        )
    )
    ready = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                body = msgspec.json.encode(Health("ready" if ready.is_set() else "loading"))
            elif self.path == "/v1/info":
                body = info
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    print(f"rbee worker listening on http://{args.host}:{port}", flush=True)
    print(f"standin loading model={args.model}", file=sys.stderr, flush=True)
    time.sleep(0.1)
    code = os.environ.get("STANDIN_EXIT_BEFORE_READY")
    if code:
        print("standin: cannot load the model", file=sys.stderr, flush=True)
        sys.exit(int(code))
    ready.set()
    print(f"rbee worker ready model={args.model} provider=StandIn", flush=True)
    print(f"standin serving model={args.model}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
