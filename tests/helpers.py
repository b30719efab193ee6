"""Helpers for any test package: waiting for an effect that has no event to wait on, processes."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping

import psutil
import trio

POLL_S = 0.02


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0, what: str = ""
) -> None:
    """Poll ``predicate`` (plain or async) every `POLL_S` in a trio test until it is true.

    For effects outside the test's own tasks: another process, a file, a log, an HTTP answer.
    Fails with ``what`` (else the predicate's name) when it is still false after ``within`` s.
    """
    with trio.move_on_after(within):
        while True:
            result = predicate()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(POLL_S)
    raise AssertionError(f"{what or predicate.__qualname__}: not within {within:g} s")


def eventually_sync(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> float:
    """`eventually` outside trio (blocking); return the seconds it took to hold."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what or predicate.__qualname__}: not within {within:g} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie not yet reaped by whoever adopted it counts as ended)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# ``rbee`` as a user runs it, from this checkout: the start of every command line that runs the CLI.
RBEE = [sys.executable, "-m", "rbee"]


def run_rbee(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``rbee ARGS`` to its end and capture its output (``env``: the whole environment)."""
    return subprocess.run(
        [*RBEE, *args],
        capture_output=True,
        text=True,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )


def listed_commands(help_text: str) -> list[str]:
    """The command names in the "Commands:" section of a group's ``--help``."""
    section = help_text.split("Commands:\n", 1)[1]
    return [line.split()[0] for line in section.splitlines() if line[:3].strip()]
