"""The queen's local hive as a process: restarted when it dies, stopped in order, killed if deaf.

The "hive" is a small Python script (``LocalHive.command``), so that these tests run in a moment.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import trio

from rbee.queen import local_hive
from rbee.queen.local_hive import LocalHive
from tests.helpers import eventually_sync, gone

# Once it has set up its SIGTERM handling, writes the token it was given to a file named after
# its pid (see `ready`).
HIVE = (
    "import os, pathlib, signal, time\n"
    "if os.environ.get('HIVE_IGNORES_SIGTERM'):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "ready = pathlib.Path(os.environ['HIVE_READY_DIR'], str(os.getpid()))\n"
    "ready.with_suffix('.tmp').write_text(os.environ.get('RBEE_HIVE_TOKEN', ''))\n"
    "ready.with_suffix('.tmp').rename(ready)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def ready_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HIVE_READY_DIR", str(tmp_path))
    return tmp_path


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait in real time for an effect of real processes, also under trio's virtual clock.

    Blocked on a thread, the test lets the virtual clock run out the hive's own timers only.
    """
    await trio.to_thread.run_sync(eventually_sync, predicate, 10.0, what)


async def ready(hive: LocalHive, ready_dir: Path) -> int:
    """The pid of the hive process once it has started."""
    await until(lambda: hive.pid is not None and (ready_dir / str(hive.pid)).exists(), "ready")
    assert hive.pid is not None
    return hive.pid


async def test_a_hive_that_dies_is_restarted_after_the_backoff(
    nursery: trio.Nursery, ready_dir: Path, autojump_clock: trio.abc.Clock
) -> None:
    hive = LocalHive([sys.executable, "-c", HIVE], "http://127.0.0.1:9")
    await nursery.start(hive.run)
    first = await ready(hive, ready_dir)
    os.kill(first, signal.SIGKILL)
    died_at = trio.current_time()
    await until(lambda: hive.restarts == 1, "a restart")
    assert trio.current_time() - died_at >= local_hive.FIRST_BACKOFF_S
    second = await ready(hive, ready_dir)
    assert second != first
    await hive.stop()
    assert gone(second)


async def test_stop_ends_the_hive_with_sigterm(
    nursery: trio.Nursery, ready_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hive = LocalHive([sys.executable, "-c", HIVE], "http://127.0.0.1:9")
    await nursery.start(hive.run)
    pid = await ready(hive, ready_dir)
    with trio.fail_after(local_hive.STOP_GRACE_S):
        await hive.stop()
    assert gone(pid)
    assert hive.restarts == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_hive_that_ignores_sigterm_is_killed_after_the_grace_period(
    nursery: trio.Nursery,
    ready_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.abc.Clock,
) -> None:
    monkeypatch.setenv("HIVE_IGNORES_SIGTERM", "1")
    hive = LocalHive([sys.executable, "-c", HIVE], "http://127.0.0.1:9")
    await nursery.start(hive.run)
    pid = await ready(hive, ready_dir)
    asked_at = trio.current_time()
    stopped = trio.Event()

    async def stop() -> None:
        await hive.stop()
        stopped.set()

    nursery.start_soon(stop)
    # Not trio.fail_after: the virtual clock would run it out while the kill takes real time.
    await until(stopped.is_set, "the hive stopped")
    assert trio.current_time() - asked_at >= local_hive.STOP_GRACE_S
    assert gone(pid)
    assert [r.getMessage() for r in caplog.records] == [
        "the local hive ignored SIGTERM; killing it"
    ]


async def test_the_hive_gets_the_token_through_its_environment_not_its_command_line(
    nursery: trio.Nursery, ready_dir: Path
) -> None:
    hive = LocalHive([sys.executable, "-c", HIVE], "http://127.0.0.1:9", token="s3cret")
    await nursery.start(hive.run)
    pid = await ready(hive, ready_dir)
    assert (ready_dir / str(pid)).read_text() == "s3cret"
    assert "s3cret" not in " ".join(psutil.Process(pid).cmdline())
    await hive.stop()
