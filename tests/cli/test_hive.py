"""``rbee hive daemon``: the verb that runs a hive, with ``--queen`` before or after it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from rbee.cli import cli
from rbee.queen.local_hive import LocalHive
from tests.helpers import RBEE, eventually, listed_commands, run_rbee
from tests.hive.fakes import StandInQueen

LISTENING = "rbee hive listening on http://127.0.0.1:"


def test_the_hive_group_lists_the_daemon_and_the_lifecycle_commands() -> None:
    result = run_rbee("hive", "--help")
    assert result.returncode == 0
    assert listed_commands(result.stdout) == [
        "add",
        "daemon",
        "list",
        "logs",
        "remove",
        "start",
        "status",
        "stop",
        "trust",
        "upgrade",
    ]


def test_daemon_help_shows_the_daemon_flags() -> None:
    result = run_rbee("hive", "daemon", "--help")
    assert result.returncode == 0
    for flag in ("--queen", "--name", "--port", "--models-dir", "--state-dir", "--token"):
        assert flag in result.stdout


def test_the_queen_starts_its_local_hive_with_the_daemon_verb() -> None:
    hive = LocalHive(["rbee"], "http://127.0.0.1:9", models_dir="/m", heartbeat_interval_s=0.5)
    argv = hive.argv()
    assert argv[:3] == ["rbee", "hive", "daemon"]
    # Every option it passes exists (click rejects an unknown one before it answers --help).
    result = CliRunner().invoke(cli, [*argv[1:], "--help"], prog_name="rbee")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: rbee hive daemon [OPTIONS]")


@pytest.mark.parametrize("where", ["before", "after"])
async def test_the_daemon_heartbeats_to_the_queen_it_is_given(
    nursery: trio.Nursery, tmp_path: Path, where: str
) -> None:
    queen = StandInQueen()
    queen.url = await nursery.start(queen.serve)
    given = ["--queen", queen.url]
    command = [*RBEE, *(given if where == "before" else []), "hive", "daemon"]
    command += [*(given if where == "after" else []), "--name", "cli-hive", "--port", "0"]
    command += ["--models-dir", str(tmp_path / "models"), "--state-dir", str(tmp_path / "state")]
    command += ["--heartbeat-interval", "0.05"]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            line = (await proc.stdout.receive_some(4096)).decode()
        assert line.startswith(LISTENING), line
        await eventually(
            lambda: any(beat.hive == "cli-hive" for beat in queen.heartbeats),
            within=20,
            what="a heartbeat from the hive",
        )
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        queen.stop.set()
