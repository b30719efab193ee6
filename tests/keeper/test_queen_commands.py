"""``rbee infer``, ``rbee status`` and ``rbee jobs`` against a real queen with a fake worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from rbee import wire
from rbee.cli import main
from rbee.config import QueenConfig
from tests.queen.conftest import QueenHandle, start_queen
from tests.queen.fake_worker import FakeWorker, heartbeat


@pytest.fixture
async def queen(nursery: trio.Nursery, tmp_path: Path) -> QueenHandle:
    config = QueenConfig(port=0, db=str(tmp_path / "queen.db"), token="s3cret")
    return await start_queen(nursery, config)


@pytest.fixture
async def worker(nursery: trio.Nursery, queen: QueenHandle) -> FakeWorker:
    fake = await FakeWorker(tokens=3).start(nursery)
    async with httpx.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as client:
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
        "s3cret",
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
        "s3cret",
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
        "s3cret",
        "-m",
        "fake-model",
        "-p",
        "x",
    )
    assert code == 0
    [summary] = [line for line in err.splitlines() if line.startswith("job-")]
    assert ": 3 tokens, finish=stop" in summary
    job = summary.split(":")[0]
    async with httpx.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as http:
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
    assert err.startswith("rbee: error: asking the queen's status: missing or wrong API token")
    monkeypatch.setenv("RBEE_KEEPER_TOKEN", "s3cret")
    code, out, _ = await rbee(capsys, "--queen", queen.url, "status")
    assert code == 0
    assert worker.id in out


async def test_infer_for_an_unknown_model_is_one_line(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await rbee(
        capsys, "--queen", queen.url, "infer", "--token", "s3cret", "-m", "nope", "-p", "x"
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "no worker serves model 'nope'" in err


async def test_status_table_and_json(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await rbee(capsys, "--queen", queen.url, "status", "--token", "s3cret")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:6] == ["WORKER", "HIVE", "MODEL", "DEVICE", "STATE", "SLOTS"]
    assert row.split()[:6] == [worker.id, "hive-a", "fake-model", "cpu", "ready", "4/4"]
    assert "queue: 0 waiting, 0 running; policy first-available" in out
    code, out, _ = await rbee(capsys, "--queen", queen.url, "status", "--json", "--token", "s3cret")
    report = json.loads(out)
    assert report["workers"][0]["worker"]["id"] == worker.id
    assert report["queue_depth"] == 0


async def test_jobs_list_show_cancel(
    queen: QueenHandle, worker: FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--queen", queen.url)
    tok = ("--token", "s3cret")
    await rbee(capsys, *base, "infer", *tok, "-m", "fake-model", "-p", "hi")
    code, out, _ = await rbee(capsys, *base, "jobs", "list", "--json", *tok)
    assert code == 0
    jobs = json.loads(out)
    assert [j["state"] for j in jobs] == ["completed"]
    job_id = jobs[0]["id"]
    code, out, _ = await rbee(capsys, *base, "jobs", "list", *tok)
    assert out.splitlines()[1].split()[:3] == [job_id, "completed", "fake-model"]
    code, out, _ = await rbee(capsys, *base, "jobs", "show", job_id, *tok)
    assert f"id:        {job_id}" in out
    assert f"decision: route {worker.id} by policy first-available" in out
    assert f"attempt 1 on {worker.id}: ok" in out
    code, out, _ = await rbee(capsys, *base, "jobs", "show", job_id, "--json", *tok)
    assert json.loads(out)["tokens_out"] == 3
    code, out, _ = await rbee(capsys, *base, "jobs", "cancel", job_id, *tok)
    assert (code, out) == (0, f"{job_id}: completed\n")
    code, _, err = await rbee(capsys, *base, "jobs", "show", "job-missing", *tok)
    assert code == 1
    assert err == "rbee: error: job job-missing: no job job-missing\n"


def test_queen_down_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rbee", "--queen", "http://127.0.0.1:9", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "rbee: error: cannot reach the queen at http://127.0.0.1:9: is it running?\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rbee",
            "--queen",
            "http://127.0.0.1:9",
            "infer",
            "-m",
            "m",
            "-p",
            "p",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot reach the queen at http://127.0.0.1:9: is it running?" in result.stderr
    assert "Traceback" not in result.stderr
