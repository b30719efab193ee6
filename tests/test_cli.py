"""The CLI's conventions: one-line errors, exit codes, help, version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rbee import __version__


def rbee(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbee", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_version() -> None:
    result = rbee("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rbee {__version__}"


def test_help_lists_every_command_without_importing_them() -> None:
    result = rbee("--help")
    assert result.returncode == 0
    assert "config" in result.stdout


def test_bad_flag_is_a_one_line_usage_error() -> None:
    result = rbee("--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("rbee: error: No such option '--no-such-flag'")
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = rbee("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_bad_config_exits_1_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[queen]\nport = "seven"\n')
    result = rbee("--config", str(bad), "config", "show")
    assert result.returncode == 1
    assert str(bad) in result.stderr
    assert "queen.port" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[queen]\nport = = 1\n")
    result = rbee("--config", str(bad), "config", "show")
    assert result.returncode == 1
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["config", "show", "--json"], ["config", "--help"]])
def test_subcommands_answer(args: list[str]) -> None:
    result = rbee(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout
