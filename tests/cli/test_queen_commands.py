"""``rbee infer``, ``rbee status`` and ``rbee job`` against a real queen with a fake worker."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from rbee import wire
from rbee.cli import main
from rbee.config import QueenConfig
from tests.helpers import eventually, run_rbee
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import FakeWorker, heartbeat

TOKEN = "s3cret-token-0123456789"

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def queen(nursery: trio.Nursery, tmp_path: Path) -> QueenHandle:
    config = QueenConfig(port=0, db=str(tmp_path / "queen.db"), token=TOKEN)
    return await start_queen(nursery, config)


@pytest.fixture
async def worker(nursery: trio.Nursery, queen: QueenHandle) -> FakeWorker:
    fake = await FakeWorker(tokens=3).start(nursery)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        body = wire.encode(heartbeat("hive-a", [fake.status()]))
        assert (await client.post(f"{queen.url}/v1/heartbeat", content=body)).status_code == 204
    return fake


async def rbee(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI's entry point in a thread (the queen runs in this trio loop)."""

    def call() -> int:
        try:
            main(list(args))
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    capsys.readouterr()
    code = await trio.to_thread.run_sync(call)
    out, err = capsys.readouterr()
    # The queen runs in this process and logs to the same stderr; keep the CLI's own lines.
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("ts="))
    return code, out, err


async def test_infer_prints_the_tokens(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await rbee(
        capsys,
        "--queen",
        queen.url,
        "infer",
        "--token",
        TOKEN,
        "-m",
        "fake-model",
        "-p",
        "hello",
        "--raw",
        "--max-tokens",
        "7",
        "--temperature",
        "0",
        "--seed",
        "3",
        "--priority",
        "batch",
    )
    assert (code, err) == (0, "")
    assert out == "tok0 tok1 tok2 \n"
    sent = worker.posts[0]
    assert (sent.prompt, sent.max_tokens, sent.temperature, sent.seed) == ("hello", 7, 0.0, 3)
    code, out, _ = await rbee(
        capsys,
        "--queen",
        queen.url,
        "infer",
        "--token",
        TOKEN,
        "-m",
        "fake-model",
        "-p",
        "hello",
        "--no-stream",
    )
    assert (code, out) == (0, "tok0 tok1 tok2 \n")
    code, _, err = await rbee(
        capsys,
        "-v",
        "--queen",
        queen.url,
        "infer",
        "--token",
        TOKEN,
        "-m",
        "fake-model",
        "-p",
        "x",
    )
    assert code == 0
    [summary] = [line for line in err.splitlines() if line.startswith("job-")]
    assert ": 3 tokens, finish=stop" in summary
    job = summary.split(":")[0]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        record = (await http.get(f"{queen.url}/v1/jobs/{job}")).json()
    assert (record["state"], record["tokens_out"]) == ("completed", 3)


async def test_token_comes_from_the_config(
    queen: QueenHandle,
    worker: FakeWorker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = await rbee(capsys, "--queen", queen.url, "status")
    assert code == 1
    assert err.startswith("rbee: error: asking the queen's status: missing API key or token")
    monkeypatch.setenv("RBEE_KEEPER_TOKEN", TOKEN)
    code, out, _ = await rbee(capsys, "--queen", queen.url, "status")
    assert code == 0
    assert worker.id in out


async def test_infer_for_an_unknown_model_is_one_line(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await rbee(
        capsys, "--queen", queen.url, "infer", "--token", TOKEN, "-m", "nope", "-p", "x"
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "no worker serves model 'nope'" in err


async def test_status_table_and_json(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await rbee(capsys, "status", "--queen", queen.url, "--token", TOKEN)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:6] == ["WORKER", "HIVE", "MODEL", "DEVICE", "STATE", "SLOTS"]
    assert row.split()[:6] == [worker.id, "hive-a", "fake-model", "cpu", "ready", "4/4"]
    assert "queue: 0 waiting, 0 running; policy first-available" in out
    assert "policy file" not in out
    code, out, _ = await rbee(capsys, "--queen", queen.url, "status", "--json", "--token", TOKEN)
    report = json.loads(out)
    assert report["workers"][0]["worker"]["id"] == worker.id
    assert report["queue_depth"] == 0
    assert report["policy_file"] is None


async def test_jobs_list_show_cancel(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--queen", queen.url)
    tok = ("--token", TOKEN)
    await rbee(capsys, *base, "infer", *tok, "-m", "fake-model", "-p", "hi")
    code, out, _ = await rbee(capsys, *base, "job", "list", "--json", *tok)
    assert code == 0
    jobs = json.loads(out)
    assert [j["state"] for j in jobs] == ["completed"]
    job_id = jobs[0]["id"]
    code, out, _ = await rbee(capsys, *base, "jobs", "list", *tok)
    assert out.splitlines()[1].split()[:3] == [job_id, "completed", "fake-model"]
    code, out, _ = await rbee(capsys, *base, "job", "show", job_id, *tok)
    assert f"id:        {job_id}" in out
    assert f"decision: route {worker.id} by policy first-available" in out
    assert f"attempt 1 on {worker.id}: ok" in out
    code, out, _ = await rbee(capsys, *base, "job", "show", job_id, "--json", *tok)
    assert json.loads(out)["tokens_out"] == 3
    code, out, _ = await rbee(capsys, *base, "job", "cancel", job_id, *tok)
    assert (code, out) == (0, f"{job_id}: completed\n")
    code, _, err = await rbee(capsys, *base, "job", "show", "job-missing", *tok)
    assert code == 1
    assert err == "rbee: error: job job-missing: no job job-missing\n"


async def test_queen_and_token_after_the_subcommand_reach_that_queen(
    queen: QueenHandle,
    worker: FakeWorker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The configured queen is wrong: only the --queen given after the subcommand can reach it.
    monkeypatch.setenv("RBEE_KEEPER_QUEEN_URL", "http://127.0.0.1:9")
    after = ("--queen", queen.url, "--token", TOKEN)
    code, out, err = await rbee(capsys, "infer", *after, "-m", "fake-model", "-p", "hi")
    assert (code, out, err) == (0, "tok0 tok1 tok2 \n", "")
    code, out, _ = await rbee(capsys, "job", "list", "--json", *after)
    assert code == 0
    assert [j["state"] for j in json.loads(out)] == ["completed"]
    code, out, _ = await rbee(capsys, "worker", "list", *after)
    assert code == 0
    assert out.splitlines()[1].split()[0] == worker.id
    code, _, err = await rbee(capsys, "status", "--token", TOKEN)
    assert code == 1
    assert "cannot reach the queen at http://127.0.0.1:9" in err


async def test_status_shows_the_policy_file(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "least.rhai"
    policy.write_text((ROOT / "policies" / "least_loaded.rhai").read_text())
    config = QueenConfig(port=0, db=str(tmp_path / "q.db"), policy=str(policy))
    queen = await start_queen(nursery, config)
    code, out, _ = await rbee(capsys, "status", "--queen", queen.url)
    assert code == 0
    [line] = [line for line in out.splitlines() if line.startswith("policy file:")]
    assert line.startswith(f"policy file: {policy} (loaded ")
    assert line.endswith(", reloads: 0)")
    code, out, _ = await rbee(capsys, "status", "--queen", queen.url, "--json")
    shown = json.loads(out)["policy_file"]
    assert (shown["path"], shown["locked"], shown["reloads"]) == (str(policy), False, 0)
    assert shown["reload_error"] is None
    policy.write_text("fn schedule_job(job, workers) {\n    return workers.nope();\n}\n")

    async def reload_failed() -> bool:
        nonlocal shown
        async with httpx.AsyncClient() as http:
            shown = (await http.get(f"{queen.url}/v1/status")).json()["policy_file"]
        return shown["reload_error"] is not None

    await eventually(reload_failed, within=10, what="the queen's reload of the broken policy")
    code, out, _ = await rbee(capsys, "status", "--queen", queen.url)
    assert f"policy file: {policy} (loaded " in out
    assert f", reloads: 0); reload failed: {shown['reload_error']}" in out
    await queen.shutdown()


def test_queen_down_is_one_line() -> None:
    result = run_rbee("--queen", "http://127.0.0.1:9", "status")
    assert result.returncode == 1
    assert result.stderr == (
        "rbee: error: cannot reach the queen at http://127.0.0.1:9: is it running?\n"
    )
    result = run_rbee("--queen", "http://127.0.0.1:9", "infer", "-m", "m", "-p", "p")
    assert result.returncode == 1
    assert "cannot reach the queen at http://127.0.0.1:9: is it running?" in result.stderr
    assert "Traceback" not in result.stderr
