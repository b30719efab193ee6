"""``rbee worker daemon``: the daemon's flags and their errors, without loading anything heavy."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import listed_commands, run_rbee


def test_the_worker_group_lists_the_daemon_and_the_management_commands() -> None:
    result = run_rbee("worker", "--help")
    assert result.returncode == 0
    assert listed_commands(result.stdout) == ["daemon", "list", "retire", "spawn"]


def test_daemon_help_shows_the_daemon_flags() -> None:
    result = run_rbee("worker", "daemon", "--help")
    assert result.returncode == 0
    for flag in ("--model", "--device", "--port", "--slots", "--threads", "--precision"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "Missing option '--model'"),
        (("--model", "m", "--device", "gpu"), "'gpu' is not 'cpu', 'cuda' or 'cuda:N'"),
        (("--model", "m", "--precision", "fp8"), "'fp8' is not one of"),
        (("--model", "m", "--slots", "0"), "--slots"),
        (("--model", "../etc"), "invalid model name"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(args: tuple[str, ...], expected: str) -> None:
    result = run_rbee("worker", "daemon", *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert result.stderr.startswith("rbee: error: ")
    assert result.stderr.strip().count("\n") == 0


def test_a_missing_model_fails_after_binding_with_one_line(tmp_path: Path) -> None:
    result = run_rbee(
        "worker", "daemon", "--model", "not-there", "--models-dir", str(tmp_path), "--port", "0"
    )
    assert result.returncode == 1
    assert result.stdout.startswith("rbee worker listening on http://127.0.0.1:")
    assert result.stderr.startswith("rbee: error: ")
    assert "not-there" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_the_command_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, rbee.cli.worker; "
        "heavy = [m for m in ('numpy', 'onnxruntime', 'trio', 'quart') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_rbee("worker", "daemon", "--model", "m", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.startswith(f"rbee: error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in result.stderr
    assert result.stderr.strip().count("\n") == 0
