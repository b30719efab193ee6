"""``rbee queen`` as a process: its address line, security by default, SIGTERM, and a job sent the
moment it listens (before its local hive has reported)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from rbee.models.importer import DEFAULT_MODEL
from tests.helpers import RBEE, run_rbee


def test_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = run_rbee(
        "queen", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "q.db"), timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "rbee: error: refusing to serve the queen on 0.0.0.0 without an API token"
    )
    assert "--token" in result.stderr
    assert "queen.token" in result.stderr
    assert result.stderr.count("\n") == 1


def test_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    result = run_rbee("queen", "--policy", "fastest", "--db", str(tmp_path / "q.db"), timeout=30)
    assert result.returncode == 2
    assert "unknown policy 'fastest'" in result.stderr


@pytest.mark.slow
def test_prints_its_address_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    command = [*RBEE, "queen", "--port", "0", "--db", str(db)]
    with subprocess.Popen(
        [*command, "--policy", "least-loaded"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("rbee queen listening on http://127.0.0.1:")
            url = line.split()[-1]
            assert httpx.get(f"{url}/health").json() == {"status": "ready"}
            assert httpx.get(f"{url}/v1/status").json()["policy"] == "least-loaded"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    assert db.exists()


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_rbee("queen", "--port", str(port), "--db", str(tmp_path / "q.db"), timeout=30)
    assert result.returncode == 1
    assert result.stderr == (
        f"rbee: error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is another queen running there? choose another --port)\n"
    )


@pytest.mark.slow
def test_a_job_sent_as_soon_as_the_queen_listens_is_answered(
    tmp_path: Path, model_store: Path
) -> None:
    store = tmp_path / "models"
    store.mkdir()
    (store / DEFAULT_MODEL).symlink_to(model_store / DEFAULT_MODEL, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    env.update({f"XDG_{d.upper()}_HOME": str(tmp_path / d) for d in ("config", "data", "cache")})
    argv = [*RBEE, "queen", "--port", "0", "--db", str(tmp_path / "q.db")]
    argv += ["--models-dir", str(store)]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("rbee queen listening on http://127.0.0.1:"), line
            # Right away, as a new user would: the local hive has not reported yet.
            infer = ["--queen", line.split()[-1], "infer", "-m", DEFAULT_MODEL, "-p", "Say hi."]
            done = run_rbee(*infer, "--max-tokens", "4", env=env, timeout=180)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
