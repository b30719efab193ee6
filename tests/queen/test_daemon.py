"""``rbee queen`` as a process: its address line, security by default, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def test_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rbee",
            "queen",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--db",
            str(tmp_path / "q.db"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "rbee: error: refusing to serve the queen on 0.0.0.0 without an API token"
    )
    assert "--token" in result.stderr
    assert "queen.token" in result.stderr
    assert result.stderr.count("\n") == 1


def test_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rbee",
            "queen",
            "--policy",
            "fastest",
            "--db",
            str(tmp_path / "q.db"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown policy 'fastest'" in result.stderr


@pytest.mark.slow
def test_prints_its_address_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    command = [sys.executable, "-m", "rbee", "queen", "--port", "0", "--db", str(db)]
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
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "rbee",
                "queen",
                "--port",
                str(port),
                "--db",
                str(tmp_path / "q.db"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"rbee: error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is another queen running there? choose another --port)\n"
    )
