"""``rbee policy check|test|explain|replay`` as a user runs them; explain and replay against a
stub queen."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee import wire
from rbee.wire.queen import DecisionList, DecisionRecord, Snapshot
from tests.helpers import run_rbee
from tests.policy.cluster import job, worker

ROOT = Path(__file__).resolve().parents[2]
LEAST = ROOT / "policies" / "least_loaded.rhai"


SNAP = Snapshot(workers=(worker("a", free=1), worker("b", free=4)))
RECORDS = [
    DecisionRecord(
        job_id=f"job-{i}",
        at=1700000000.0 + i,
        policy="first-available",
        job=job(),
        snapshot=SNAP,
        kind="route",
        target="a" if i < 2 else "b",
        reasons=["matched 2/2 workers by model", f"first-available chose {'a' if i < 2 else 'b'}"],
    )
    for i in range(3)
]


@pytest.fixture(scope="module")
def queen() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    """A real HTTP server on port 0 answering GET /v1/decisions with canned records.

    It records each request's query, and its ``authorization`` header when one was sent.
    """
    seen: list[dict[str, list[str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if "Authorization" in self.headers:
                query["authorization"] = [self.headers["Authorization"]]
            seen.append(query)
            if url.path != "/v1/decisions":
                self.send_response(404)
                self.end_headers()
                return
            records = RECORDS
            if "job_id" in query:
                records = [r for r in RECORDS if r.job_id == query["job_id"][0]]
            records = records[-int(query.get("last", ["100"])[0]) :]
            body = wire.encode(DecisionList(records))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_check_ok_and_error(tmp_path: Path) -> None:
    ok = run_rbee("policy", "check", str(LEAST))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.rhai"
    bad.write_text("fn schedule_job(job, workers) {\n    return workers.least_loded();\n}\n")
    result = run_rbee("policy", "check", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"rbee: error: {bad}:2:20: name error: unknown method least_loded() (did you mean 'least_loaded'?)",
        "        return workers.least_loded();",
        "                       ^",
    ]


def test_test_passes_and_fails(tmp_path: Path) -> None:
    good = run_rbee(
        "policy", "test", str(LEAST), str(ROOT / "tests" / "policy" / "cases" / "least_loaded.toml")
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("PASS") == 4
    cases = tmp_path / "cases.json"
    cases.write_text(
        '{"workers": [{"id": "a", "hive": "h", "model": "m", "device": "cpu", "state": "ready",'
        ' "slots_total": 2, "slots_free": 2}],'
        ' "case": [{"name": "right", "job": {"model": "m"}, "expect": {"kind": "route", "target": "a"}},'
        ' {"name": "wrong", "job": {"model": "m"}, "expect": {"kind": "queue"}}]}'
    )
    result = run_rbee("policy", "test", str(LEAST), str(cases))
    assert result.returncode == 1
    assert "PASS  right: route a" in result.stdout
    assert "FAIL  wrong: route a (expected queue)" in result.stdout
    assert "1 of 2 cases failed" in result.stderr


def test_explain_prints_the_decision_and_its_reasons(
    queen: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, seen = queen
    result = run_rbee("--queen", url, "policy", "explain", "job-1")
    assert result.returncode == 0, result.stderr
    assert seen[-1] == {"job_id": ["job-1"], "last": ["1"]}
    assert "decision route a" in result.stdout
    assert "policy   first-available" in result.stdout
    assert "  2. first-available chose a" in result.stdout
    missing = run_rbee("--queen", url, "policy", "explain", "job-404")
    assert missing.returncode == 1
    assert "no scheduling decision is logged for job job-404" in missing.stderr


def test_replay_shows_where_a_new_policy_differs(
    queen: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, seen = queen
    result = run_rbee("--queen", url, "policy", "replay", str(LEAST), "--last", "3")
    assert result.returncode == 0, result.stderr
    assert seen[-1] == {"last": ["3"]}
    assert result.stdout.splitlines() == [
        "job-0  route a  ->  route b",
        "job-1  route a  ->  route b",
        "3 decisions replayed with least_loaded.rhai: 1 the same, 2 different, 0 policy errors",
    ]


def test_explain_without_a_queen_is_one_line() -> None:
    result = run_rbee("--queen", "http://127.0.0.1:9", "policy", "explain", "job-1")
    assert result.returncode == 1
    assert result.stderr.startswith("rbee: error: cannot reach the queen at http://127.0.0.1:9")
    assert result.stderr.strip().count("\n") == 0


def test_explain_and_replay_send_the_token_given_after_or_before(
    queen: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, seen = queen
    result = run_rbee("policy", "explain", "job-1", "--queen", url, "--token", "s3cret")
    assert result.returncode == 0, result.stderr
    assert seen[-1] == {"job_id": ["job-1"], "last": ["1"], "authorization": ["Bearer s3cret"]}
    result = run_rbee("--token", "s3cret", "--queen", url, "policy", "replay", str(LEAST))
    assert result.returncode == 0, result.stderr
    assert seen[-1] == {"last": ["100"], "authorization": ["Bearer s3cret"]}
