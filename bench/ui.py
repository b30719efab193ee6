"""The web page's figures: its total size, and the Overview's time to first paint with 50 workers.

Usage: ``python bench/ui.py [--workers 50] [--hives 5] [--runs 5]``

A queen (no local hive) is told of ``--workers`` fake workers spread over ``--hives`` hives with a
GPU each, by heartbeat; nothing answers at the workers' addresses, which the overview never
calls. Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through selenium) then
opens ``/ui#/overview`` ``--runs`` times (plus one to warm up), with its cache off, and reports
from the navigation's start: the first contentful paint (the page's shell) and the first frame
painted after the workers table holds every worker (the overview itself, from its first server-
sent event). Size: every file the page loads, as stored and gzipped.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from queen import daemon

TOKEN = "bench-admin-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Runs in the page before its own scripts: the time of the first frame painted after the
# workers table has all its rows.
_PROBE = """
window.__overviewPainted = new Promise((resolve) => {
  const want = %d;
  new MutationObserver((records, observer) => {
    if (document.querySelectorAll('#overview tbody tr[data-worker]').length >= want) {
      observer.disconnect();
      requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now())));
    }
  }).observe(document, {childList: true, subtree: true});
});
"""


def page_size() -> tuple[int, int, int]:
    """The page's files: how many, their bytes, and their bytes gzipped one by one."""
    files = [f for f in (importlib.resources.files("rbee.queen") / "web").iterdir() if f.is_file()]
    raw = [f.read_bytes() for f in files]
    return len(raw), sum(map(len, raw)), sum(len(gzip.compress(b, 9)) for b in raw)


def heartbeat(hive: str, workers: list[tuple[str, int]], gpu: int) -> bytes:
    """One hive's report with a GPU and ``workers`` (id, slots) of the fake model."""
    return json.dumps(
        {
            "hive": hive,
            "url": "http://127.0.0.1:1",
            "host": {
                "cpu_count": 16,
                "load_1m": 3.5,
                "ram_total_mb": 65536,
                "ram_free_mb": 30000,
                "gpus": [
                    {
                        "index": 0,
                        "name": "RTX 4090",
                        "util_pct": 10.0 * gpu,
                        "vram_total_mb": 24564,
                        "vram_used_mb": 2000 * (gpu + 1),
                        "power_w": 150.0 + 20 * gpu,
                        "temperature_c": 50.0 + gpu,
                    }
                ],
            },
            "interval_s": 3600,
            "models": ["fake-model"],
            "workers": [
                {
                    "id": wid,
                    "pid": 1000 + i,
                    "model": "fake-model",
                    "device": "cuda:0",
                    "url": f"http://127.0.0.1:{20000 + i}",
                    "state": "ready",
                    "slots_total": slots,
                    "slots_free": slots - i % 3,
                }
                for i, (wid, slots) in enumerate(workers)
            ],
        }
    ).encode()


def register(url: str, workers: int, hives: int) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for h in range(hives):
        mine = [(f"w{n:03d}", 4) for n in range(workers) if n % hives == h]
        answer = httpx.post(
            f"{url}/v1/heartbeat", content=heartbeat(f"hive-{h}", mine, h), headers=headers
        )
        answer.raise_for_status()
    listed = httpx.get(f"{url}/v1/workers", headers=headers).json()["workers"]
    assert len(listed) == workers, f"the queen lists {len(listed)} workers, not {workers}"


def first_paint(url: str, workers: int, runs: int) -> tuple[list[float], list[float]]:
    """First contentful paint and the overview's painted frame, in ms, for each run."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    fcp, overview = [], []
    try:
        driver.get(f"{url}/ui/session")
        driver.add_cookie(
            {"name": "rbee_session", "value": TOKEN, "httpOnly": True, "sameSite": "Strict"}
        )
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": _PROBE % workers}
        )
        for _ in range(runs + 1):
            # From another document each time: the same URL again would only scroll to its hash.
            driver.get("about:blank")
            driver.get(f"{url}/ui#/overview")
            painted = driver.execute_async_script(
                "const done = arguments[arguments.length - 1];window.__overviewPainted.then(done);"
            )
            contentful = driver.execute_script(
                "const e = performance.getEntriesByName('first-contentful-paint')[0];"
                "return e ? e.startTime : null;"
            )
            fcp.append(float(contentful))
            overview.append(float(painted))
    finally:
        driver.quit()
    # The first run warms the queen's and the browser's processes up.
    return fcp[1:], overview[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--hives", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    count, size, zipped = page_size()
    print(f"page: {count} files, {size / 1024:.1f} KiB ({zipped / 1024:.1f} KiB gzipped)")
    rbee = [sys.executable, "-m", "rbee"]
    with tempfile.TemporaryDirectory() as tmp:
        queen_cmd = [*rbee, "queen", "--port", "0", "--db", f"{tmp}/queen.db", "--token", TOKEN]
        queen_cmd += ["--no-local-hive"]
        with daemon(queen_cmd, "rbee queen listening on") as queen:
            register(queen.url, args.workers, args.hives)
            fcp, overview = first_paint(queen.url, args.workers, args.runs)
    print(
        f"overview with {args.workers} workers on {args.hives} hives, {args.runs} runs: "
        f"first contentful paint {statistics.median(fcp):.0f} ms median "
        f"(max {max(fcp):.0f}); workers table painted {statistics.median(overview):.0f} ms "
        f"median (max {max(overview):.0f}), from the navigation's start"
    )


if __name__ == "__main__":
    main()
