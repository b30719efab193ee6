"""``rbee hive add|trust|start|status|logs|stop|remove`` against a queen and a real SSH host.

The keeper only calls the queen's API; the queen does the SSH. Each command runs as its own
process, as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trio

from tests.helpers import RBEE
from tests.queen.ssh_queen import TOKEN, Queen, queen
from tests.ssh_hosts import ClientKey, SshHosts

pytestmark = pytest.mark.slow


async def _followed(q: Queen, hive: str, until: bytes) -> bool:
    """Whether ``rbee hive logs --follow`` prints ``until``; then the command is stopped."""
    command = [*RBEE, "--queen", q.url, "--token", TOKEN, "hive", "logs", hive, "--follow"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    received = b""
    try:
        with trio.fail_after(30):
            while until not in received:
                received += await process.stdout.receive_some(4096)
    finally:
        process.terminate()
        await process.wait()
    return True


async def test_a_host_added_trusted_started_and_stopped_from_the_command_line(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    async with queen(tmp_path, pyz) as q:
        added = await q.rbee(
            "hive", "add", "gpu1", "--ssh", host.target,
            "--identity", str(client_key.path), "--label", "zone=attic",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "next: 'rbee hive trust gpu1'" in added.stdout

        unknown = await q.rbee("hive", "start", "gpu1")
        assert unknown.returncode == 1
        assert unknown.stderr.count("\n") == 1
        assert host.fingerprint() in unknown.stderr
        assert "'rbee hive trust gpu1'" in unknown.stderr

        blind = await q.rbee("hive", "trust", "gpu1", "--yes")
        assert blind.returncode == 2
        assert "--yes needs --fingerprint" in blind.stderr
        refused = await q.rbee("hive", "trust", "gpu1", stdin="n\n")
        assert refused.returncode != 0
        assert host.fingerprint() in refused.stdout
        trusted = await q.rbee("hive", "trust", "gpu1", stdin="y\n")
        assert trusted.returncode == 0, trusted.stderr
        assert f"trusted {host.fingerprint()} for hive gpu1" in trusted.stdout

        started = await q.rbee("hive", "start", "gpu1")
        assert started.returncode == 0, started.stderr
        assert "hive gpu1 started on" in started.stdout
        assert "copying rbee.pyz to gpu1: 100%" in started.stderr
        again = await q.rbee("hive", "start", "gpu1")
        assert "nothing changed" in again.stdout
        assert "copying" not in again.stderr

        shown = await q.rbee("hive", "status", "gpu1", "--json")
        status = json.loads(shown.stdout)
        assert (status["status"], status["labels"]) == ("online", {"zone": "attic"})
        logs = await q.rbee("hive", "logs", "gpu1", "-n", "20")
        assert "rbee hive listening on" in logs.stdout
        assert await _followed(q, "gpu1", b"rbee hive listening on")

        stopped = await q.rbee("hive", "stop", "gpu1")
        assert stopped.stdout.strip() == "hive gpu1 stopped"
        removed = await q.rbee("hive", "remove", "gpu1")
        assert removed.returncode == 0, removed.stderr
        gone = await q.rbee("hive", "status", "gpu1")
        assert gone.returncode == 1
        assert "no registered hive 'gpu1'" in gone.stderr
