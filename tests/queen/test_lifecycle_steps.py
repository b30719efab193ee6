"""The hive lifecycle's steps through the local connector: the same scripts a remote host runs."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rbee.errors import ApiError, SshError
from rbee.queen.lifecycle import steps
from rbee.queen.lifecycle.connector import LocalConnector
from tests.helpers import eventually, eventually_sync


@pytest.fixture
def host(tmp_path: Path) -> LocalConnector:
    home = tmp_path / "home"
    home.mkdir()
    return LocalConnector(home)


def _file(tmp_path: Path, name: str, content: bytes) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(content)
    return path, steps.sha256_of(path)


async def test_preflight_reads_the_hosts_facts_in_one_command(host: LocalConnector) -> None:
    facts = await steps.preflight(host, hive="h", file="rbee-x.pyz", port=0, python="")
    assert facts.os == "Linux"
    assert facts.writable
    assert facts.free_bytes > 0
    assert not facts.have_file
    assert facts.running_pid == 0
    assert facts.port_free is True
    assert facts.pythons
    interpreter = steps.check(
        facts, where="here", python="", size=1, port=0, accepts={facts.pythons[0][1]}
    )
    assert interpreter == facts.pythons[0][0]


async def test_every_failed_check_is_named(host: LocalConnector) -> None:
    facts = steps.HostFacts(os="Darwin", arch="arm64", writable=False, port_free=False)
    with pytest.raises(ApiError) as err:
        steps.check(facts, where="mac", python="", size=1, port=7835, accepts={(3, 11)})
    message = str(err.value)
    for part in ("runs Darwin", "is arm64", "no Python 3.11 there", "not writable", "port 7835"):
        assert part in message


async def test_push_is_content_addressed_checked_and_keeps_the_previous_file(
    host: LocalConnector, tmp_path: Path
) -> None:
    await steps.preflight(host, hive="h", file="x", port=0)
    seen: list[tuple[int, int]] = []
    names = []
    for n in range(3):
        path, sha = _file(tmp_path, f"v{n}.pyz", f"version {n}".encode() * 1000)
        remote = await steps.push(host, path, sha, lambda c, t: seen.append((c, t)))
        assert remote == f"{steps.RBEE_DIR}/bin/rbee-{sha}.pyz"
        names.append(Path(remote).name)
        # Distinct modification times for the pruning order, without sleeping.
        os.utime(host.home / remote, (n, n))
    left = sorted(p.name for p in (host.home / steps.RBEE_DIR / "bin").iterdir())
    assert left == sorted(names[1:])
    assert seen[-1] == (9000, 9000)


async def test_a_copy_whose_sha256_differs_is_refused_and_removed(
    host: LocalConnector, tmp_path: Path
) -> None:
    path, _ = _file(tmp_path, "v.pyz", b"content")
    (host.home / steps.RBEE_DIR / "bin").mkdir(parents=True)
    with pytest.raises(SshError, match="sha256 is"):
        await steps.push(host, path, "0" * 64)
    assert list((host.home / steps.RBEE_DIR / "bin").iterdir()) == []


async def test_start_detaches_hands_the_token_on_stdin_and_stop_ends_it(
    host: LocalConnector, tmp_path: Path
) -> None:
    script = tmp_path / "fake-hive.sh"
    script.write_text('#!/bin/sh\necho "token=$RBEE_HIVE_TOKEN args=$*"\nexec sleep 600\n')
    script.chmod(0o755)
    pid = await steps.start(host, "h", ["/bin/sh", str(script), "--x", "a b"], "s3cret")
    hive_dir = host.home / steps.RBEE_DIR / "hives" / "h"
    assert (hive_dir / "token").stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in " ".join(psutil.Process(pid).cmdline())

    async def logged() -> bool:
        return bool(await steps.log_tail(host, "h"))

    await eventually(logged, 10, "the fake hive's first line")
    assert await steps.log_tail(host, "h") == ["token=s3cret args=--x a b"]
    assert os.getsid(pid) == pid
    facts = await steps.preflight(host, hive="h", file="x", port=0)
    assert (facts.running_pid, facts.running_file) == (pid, str(script))
    assert await steps.stop(host, "h", grace_s=5) == "stopped"
    assert not await steps.running_pid(host, pid)
    assert await steps.stop(host, "h") == "none"


@pytest.fixture
def zombie() -> Iterator[int]:
    """The pid of a child that exited and that this test reaps only when it ends."""
    exited = subprocess.Popen(["/bin/sh", "-c", "exit 0"])
    status = psutil.Process(exited.pid).status
    eventually_sync(lambda: status() == psutil.STATUS_ZOMBIE, 10, "the child to be a zombie")
    yield exited.pid
    exited.wait()


async def test_a_hive_that_exited_and_was_not_reaped_yet_counts_as_gone(
    host: LocalConnector, zombie: int
) -> None:
    """A slow init (some containers') leaves an exited hive a zombie, which ``kill -0`` finds."""
    hive_dir = host.home / steps.RBEE_DIR / "hives" / "h"
    hive_dir.mkdir(parents=True)
    (hive_dir / "pid").write_text(f"{zombie}\n")
    facts = await steps.preflight(host, hive="h", file="x", port=0)
    assert facts.running_pid == 0
    assert not await steps.running_pid(host, zombie)
    # Not waited on for the grace and then killed: it is gone.
    assert await steps.stop(host, "h", grace_s=60) == "stopped"


async def test_the_port_probe_counts_a_listener_not_connections_in_time_wait(
    host: LocalConnector,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        facts = await steps.preflight(host, hive="h", file="x", port=port)
        assert facts.port_free is False
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the listening side closes first: its end waits in TIME_WAIT
            client.recv(1)
    facts = await steps.preflight(host, hive="h", file="x", port=port)
    assert facts.port_free is True


def test_a_file_runs_on_the_pythons_its_listings_name(tmp_path: Path) -> None:
    import sys
    import zipfile

    from rbee.queen.lifecycle.manager import file_pythons

    universal = tmp_path / "rbee.pyz"
    with zipfile.ZipFile(universal, "w") as zf:
        for name in ("build", "cp313", "cp310", "cp312"):
            zf.writestr(f"rbee-pyz/{name}.json", "{}")
    assert file_pythons(universal) == ((3, 10), (3, 12), (3, 13))
    bare = tmp_path / "old.pyz"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("__main__.py", "")
    assert file_pythons(bare) == (sys.version_info[:2],)
    assert file_pythons(None) == (sys.version_info[:2],)
