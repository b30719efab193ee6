"""The CLI's conventions: one-line errors, exit codes, help, version, the shared options."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rbee import __version__
from rbee.cli import COMMANDS, cli
from tests.helpers import listed_commands, run_rbee
from tests.test_imports import closure, import_graph, module_files

EVERY_COMMAND = [
    "queen",
    "hive",
    "worker",
    "infer",
    "status",
    "job",
    "model",
    "policy",
    "key",
    "config",
]
GROUPS = ["hive", "worker", "job", "model", "policy", "key", "config"]
LEAST = Path(__file__).resolve().parents[2] / "policies" / "least_loaded.rhai"


def test_version() -> None:
    result = run_rbee("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rbee {__version__}"


def test_help_lists_every_command_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from rbee.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "finally:\n"
        "    print(sorted(m for m in sys.modules if m.startswith('rbee.')), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == EVERY_COMMAND
    assert list(COMMANDS) == EVERY_COMMAND
    imported = ast.literal_eval(result.stderr)
    assert [m for m in imported if m.startswith("rbee.cli.")] == ["rbee.cli.common"]


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command under ``group``, as the words that name it, groups included."""
    paths: list[tuple[str, ...]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def test_every_command_answers_help() -> None:
    paths = command_paths(cli)
    assert {p[0] for p in paths} == set(EVERY_COMMAND)
    assert ("hive", "daemon") in paths
    assert ("worker", "daemon") in paths
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"], prog_name="rbee")
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith(f"Usage: rbee {' '.join(path)} "), path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("group", GROUPS)
def test_a_bare_group_prints_its_help_and_starts_nothing(group: str) -> None:
    port = free_port()
    # Were a daemon to start, it would bind this port and never return (the timeout fails).
    env = {**os.environ, "RBEE_HIVE_PORT": str(port), "RBEE_WORKER_PORT": str(port)}
    result = run_rbee(group, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: rbee {group} [OPTIONS] COMMAND [ARGS]...")
    assert listed_commands(result.stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_the_bare_root_prints_its_help() -> None:
    result = run_rbee()
    assert result.returncode == 0
    assert listed_commands(result.stdout) == EVERY_COMMAND


def test_jobs_is_another_name_for_job() -> None:
    result = run_rbee("jobs", "--help")
    assert result.returncode == 0
    assert listed_commands(result.stdout) == ["cancel", "list", "show"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--token", "t", "config", "show"], "--token does not apply to 'rbee config show'"),
        (["--queen", "http://q:1", "queen"], "--queen does not apply to 'rbee queen'"),
        (
            ["--queen", "http://q:1", "policy", "check", str(LEAST)],
            "--queen does not apply to 'rbee policy check'",
        ),
        (
            ["--token", "t", "model", "import", "x.gguf"],
            "--token does not apply to 'rbee model import'",
        ),
        (
            ["--queen", "http://q:1", "worker", "daemon", "--model", "m"],
            "--queen does not apply to 'rbee worker daemon'",
        ),
        (["hive", "--token", "t", "list"], "No such option '--token'"),
        (
            ["--queen", "http://a:1", "status", "--queen", "http://b:1"],
            "--queen is given twice, before and after 'status', with different values",
        ),
    ],
)
def test_an_option_that_does_not_apply_is_a_usage_error(args: list[str], expected: str) -> None:
    result = run_rbee(*args, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"rbee: error: {expected}")
    assert result.stderr.strip().count("\n") == 0
    assert result.stdout == ""


def test_bad_flag_is_a_one_line_usage_error() -> None:
    result = run_rbee("--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("rbee: error: No such option '--no-such-flag'")
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run_rbee("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_bad_config_exits_1_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[queen]\nport = "seven"\n')
    result = run_rbee("--config", str(bad), "config", "show")
    assert result.returncode == 1
    assert str(bad) in result.stderr
    assert "queen.port" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[queen]\nport = = 1\n")
    result = run_rbee("--config", str(bad), "config", "show")
    assert result.returncode == 1
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_and_set(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    result = run_rbee("--config", str(path), "config", "set", "keeper.queen_url", "http://q:9")
    assert result.returncode == 0, result.stderr
    shown = run_rbee("--config", str(path), "config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"queen_url": "http://q:9"' in shown.stdout


@pytest.mark.parametrize("package", ["rbee.queen", "rbee.hive", "rbee.worker"])
def test_the_daemons_import_nothing_of_the_cli(package: str) -> None:
    graph = import_graph()
    modules = [m for m in graph if m == package or m.startswith(f"{package}.")]
    assert f"{package}.daemon" in modules
    loaded = closure(graph, modules)
    assert sorted(m for m in loaded if m == "rbee.cli" or m.startswith("rbee.cli.")) == []


@pytest.mark.parametrize("module", ["rbee.client", "rbee.queen.client", "rbee.hive.client"])
def test_the_http_clients_import_no_click(module: str) -> None:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(module_files()[module].read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert "httpx" in roots
    assert "click" not in roots
