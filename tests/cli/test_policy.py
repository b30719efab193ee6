"""``rbee policy check|compile|test|explain|replay`` as a user runs them, on policy files and on
YAML rules; explain and replay against a stub queen."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee import wire
from rbee.decisions import kind_target
from rbee.policy import load_file
from rbee.policy.rules import compile_rules
from rbee.wire.queen import DecisionList, DecisionRecord, Snapshot
from tests.helpers import run_rbee
from tests.policy.cluster import job, worker

ROOT = Path(__file__).resolve().parents[2]
LEAST = ROOT / "policies" / "least_loaded.rhai"
RULES = ROOT / "policies" / "rules.yaml"
RULES_CASES = ROOT / "tests" / "policy" / "cases" / "rules.toml"


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
EU = Snapshot(workers=(worker("eu", labels={"region": "eu"}), worker("us", free=4)))
_EU_DECISION = load_file(RULES).schedule(job(tenant="acme"), EU)
# First, so that ``--last 3`` replays the three above.
RECORDS.insert(
    0,
    DecisionRecord(
        job_id="job-acme",
        at=1699999999.0,
        policy="rules.yaml",
        job=job(tenant="acme"),
        snapshot=EU,
        kind=kind_target(_EU_DECISION)[0],
        target=kind_target(_EU_DECISION)[1],
        reasons=list(_EU_DECISION.reasons),
    ),
)


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


def test_compile_prints_the_policy_of_a_rules_file(tmp_path: Path) -> None:
    result = run_rbee("policy", "compile", str(RULES))
    assert result.returncode == 0, result.stderr
    assert result.stdout == compile_rules(RULES.read_text(), str(RULES))
    assert result.stdout.startswith("// Compiled from rules.yaml by rbee")
    # What it prints is a policy of its own that decides the same.
    printed = tmp_path / "rules.rhai"
    printed.write_text(result.stdout)
    same = run_rbee("policy", "test", str(printed), str(RULES_CASES))
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.splitlines()[-1] == "10 passed, 0 failed"


def test_compile_refuses_a_policy_file_and_points_at_a_bad_rule(tmp_path: Path) -> None:
    result = run_rbee("policy", "compile", str(LEAST))
    assert result.returncode == 2
    assert result.stderr == (
        f"rbee: error: {LEAST} is not a YAML rules file (.yaml or .yml): nothing to compile\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - condition:\n      priority: urgent\n    action: queue\n")
    result = run_rbee("policy", "compile", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"rbee: error: {bad}:3:17: value error: 'priority' in rule 1 must be one of interactive,"
        " batch, not 'urgent'",
        "          priority: urgent",
        "                    ^",
    ]


def test_check_takes_a_rules_file(tmp_path: Path) -> None:
    ok = run_rbee("policy", "check", str(RULES))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{RULES}: ok ({RULES.read_text().count(chr(10)) + 1} lines)\n"
    bad = tmp_path / "bad.yml"
    bad.write_text("rules: []\ndefault:\n  select: workers.least_loded()\n")
    result = run_rbee("policy", "check", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"rbee: error: {bad}:3:19: name error: unknown method least_loded() (did you mean"
        " 'least_loaded'?)",
        "      select: workers.least_loded()",
        "                      ^",
    ]


def test_test_takes_a_rules_file(tmp_path: Path) -> None:
    good = run_rbee("policy", "test", str(RULES), str(RULES_CASES))
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("PASS") == 10
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("rules: []\ndefault: {reject: closed}\n")
    result = run_rbee("policy", "test", str(wrong), str(RULES_CASES), "-v")
    assert result.returncode == 1
    assert "FAIL  a 70b model goes to the big GPU: reject: closed (expected route)" in result.stdout
    assert "        wrong.yaml rejected: closed (line 2)" in result.stdout
    assert "10 of 10 cases failed" in result.stderr


def test_explain_shows_the_yaml_lines_behind_a_decision(
    queen: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, _ = queen
    result = run_rbee("--queen", url, "policy", "explain", "job-acme")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "policy   rules.yaml" in lines
    assert "decision route eu" in lines
    assert lines[lines.index("reasons") + 1 :] == [
        "  1. line 30: with_model() kept 2 of 2 workers",
        "  2. line 30: with_label() kept 1 of 2 workers",
        "  3. line 30: available() kept 1 of 1 workers",
        "  4. line 30: least_loaded() chose worker eu",
        "  5. rules.yaml chose worker eu (line 30)",
    ]


def test_replay_takes_a_rules_file(
    queen: tuple[str, list[dict[str, list[str]]]], tmp_path: Path
) -> None:
    url, _ = queen
    rules = tmp_path / "least.yaml"
    rules.write_text("# the least loaded worker\nrules: []\n")
    result = run_rbee("--queen", url, "policy", "replay", str(rules), "--last", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "job-0  route a  ->  route b",
        "job-1  route a  ->  route b",
        "3 decisions replayed with least.yaml: 1 the same, 2 different, 0 policy errors",
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text('rules: []\ndefault:\n  select: workers.with_model("x").first()\n')
    result = run_rbee("--queen", url, "policy", "replay", str(broken), "--last", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert '"errors": 1' in result.stdout
    assert f"{broken}:3:3: result error: schedule_job returned nothing" in result.stdout
