"""Child daemons, with real processes: own group, death with the parent, wait, stop, kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rbee import process
from tests.helpers import eventually_sync, gone

# A child that reports its pid once ready; IGNORE makes it ignore SIGTERM first.
CHILD = "import os, signal, sys, time\n{setup}\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n"
IGNORE = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"


def child(setup: str = "") -> list[str]:
    return [sys.executable, "-c", CHILD.format(setup=setup)]


def read_pid(popen: subprocess.Popen[bytes]) -> int:
    assert popen.stdout is not None
    return int(popen.stdout.readline())


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every child a test starts; whichever still runs at its end is killed."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for popen in children:
        process.kill(popen)
        popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()


def start(started: list[subprocess.Popen[bytes]], argv: list[str]) -> subprocess.Popen[bytes]:
    popen = process.start(argv, stdout=subprocess.PIPE)
    started.append(popen)
    return popen


def test_rbee_command_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "rbee"), "hive"])
    assert process.rbee_command() == [sys.executable, "-m", "rbee"]


def test_rbee_command_inside_the_zipapp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pyz = tmp_path / "rbee.pyz"
    with zipfile.ZipFile(pyz, "w") as archive:
        archive.writestr("__main__.py", "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rbee.pyz", "hive"])
    assert process.rbee_command() == [sys.executable, str(pyz)]


def test_a_child_leads_its_own_group_and_reads_nothing(
    started: list[subprocess.Popen[bytes]],
) -> None:
    script = "import os, sys; print(os.getpgid(0), repr(sys.stdin.read()), flush=True)"
    popen = start(started, [sys.executable, "-c", script])
    assert popen.stdout is not None
    assert popen.stdout.read().decode().split() == [str(popen.pid), "''"]
    assert os.getpgid(0) != popen.pid


def test_a_child_gets_sigterm_when_its_parent_is_killed(
    started: list[subprocess.Popen[bytes]],
) -> None:
    parent_script = (
        "import subprocess, sys, time\n"
        "from rbee import process\n"
        f"popen = process.start({child()!r}, stdout=subprocess.PIPE)\n"
        "print(popen.stdout.readline().decode().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = start(started, [sys.executable, "-c", parent_script])
    orphan = read_pid(parent)
    assert not gone(orphan)
    parent.kill()
    parent.wait()
    eventually_sync(lambda: gone(orphan), within=5.0, what="the child of a killed parent")


async def test_wait_returns_the_exit_code_or_the_negative_signal(
    started: list[subprocess.Popen[bytes]],
) -> None:
    assert await process.wait(start(started, [sys.executable, "-c", "raise SystemExit(3)"])) == 3
    sleeper = start(started, child())
    read_pid(sleeper)
    sleeper.send_signal(signal.SIGKILL)
    assert await process.wait(sleeper) == -signal.SIGKILL
    assert await process.wait(sleeper) == -signal.SIGKILL  # reaped already: the same answer


async def test_wait_without_pidfds_uses_a_thread(
    started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError("pidfd_open: not supported")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert await process.wait(start(started, [sys.executable, "-c", "raise SystemExit(4)"])) == 4


async def test_stop_ends_a_child_that_obeys_sigterm_without_killing_it(
    started: list[subprocess.Popen[bytes]],
) -> None:
    popen = start(started, child())
    read_pid(popen)
    assert await process.stop(popen, 60.0, what="the child") is False
    assert popen.returncode == -signal.SIGTERM


async def test_stop_kills_the_group_of_a_child_that_ignores_sigterm(
    started: list[subprocess.Popen[bytes]],
    autojump_clock: trio.abc.Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The child starts a grandchild in its own group, then both ignore SIGTERM.
    script = (
        "import signal, subprocess, sys, time\n"
        f"{IGNORE}\n"
        f"grandchild = subprocess.Popen({child(IGNORE)!r}, stdout=subprocess.PIPE)\n"
        "print(grandchild.stdout.readline().decode().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    popen = start(started, [sys.executable, "-c", script])
    grandchild = read_pid(popen)
    # The virtual clock runs out the grace period as soon as the test only waits.
    assert await process.stop(popen, 3600.0, what="the child", fields={"child": "c-1"}) is True
    assert popen.returncode == -signal.SIGKILL
    eventually_sync(lambda: gone(grandchild), within=5.0, what="the grandchild")
    [record] = [r for r in caplog.records if r.name == "rbee.process"]
    assert record.getMessage() == "the child ignored SIGTERM; killing it"
    assert record.kv == {"pid": popen.pid, "child": "c-1"}  # type: ignore[attr-defined]


async def test_wait_or_kill_waits_on_whoever_reaps_the_child(
    started: list[subprocess.Popen[bytes]], nursery: trio.Nursery
) -> None:
    popen = start(started, child())
    read_pid(popen)
    reaped = trio.Event()

    async def reaper() -> None:
        await process.wait(popen)
        reaped.set()

    nursery.start_soon(reaper)
    process.send_signal(popen, signal.SIGTERM)
    assert await process.wait_or_kill(popen, 60.0, what="the child", exited=reaped.wait) is False
    assert popen.returncode == -signal.SIGTERM


def test_signals_to_a_reaped_child_are_ignored(started: list[subprocess.Popen[bytes]]) -> None:
    popen = start(started, [sys.executable, "-c", "pass"])
    assert popen.wait() == 0
    process.send_signal(popen, signal.SIGTERM)
    process.kill(popen)
    assert popen.returncode == 0
