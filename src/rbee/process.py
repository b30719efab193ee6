"""Child daemons that never outlive their parent: start, wait for, and stop them.

The queen runs its local hive and a hive runs its workers the same way: `start` gives the child
its own process group, so that a Ctrl-C at the parent's terminal reaches the parent only (which
then stops its children in order instead of seeing them all "crash" at once), and asks the kernel
to send it SIGTERM should the parent die without stopping it (``PR_SET_PDEATHSIG``, Linux).

The kernel sends that signal when the *thread* that forked the child ends, not the process, so
`start` must be called from the trio thread itself: ``trio.lowlevel.open_process`` forks in a
worker thread that trio retires after a few idle seconds, which would stop the child with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from rbee.log import kv

__all__ = ["kill", "rbee_command", "send_signal", "start", "stop", "wait", "wait_or_kill"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def rbee_command() -> list[str]:
    """How to run this same rbee: ``python rbee.pyz`` inside the zipapp, else ``python -m rbee``.

    A zipapp leaves the archive's path in ``sys.argv[0]``; anything else (the ``rbee`` console script,
    ``python -m rbee``) runs from an installed or source package that ``-m`` finds again.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.isfile(argv0) and zipfile.is_zipfile(argv0):
        return [sys.executable, os.path.abspath(argv0)]
    return [sys.executable, "-m", "rbee"]


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec: nothing beyond the prctl call and a check.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int = subprocess.DEVNULL,
    stderr: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, to get SIGTERM when this thread ends.

    stdin is ``/dev/null``; ``stdout`` and ``stderr`` take what `subprocess.Popen` takes
    (``stderr=None`` shares ours). Call it from the trio thread (see the module docstring).
    """
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        close_fds=True,
        process_group=0,
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )


def send_signal(popen: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the child, unless it has already been reaped."""
    if popen.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)


def kill(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (what it started there goes too).

    Only while the child is not reaped: until then its pid, which names the group, is still ours.
    """
    if popen.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


async def wait(popen: subprocess.Popen[bytes]) -> int:
    """Wait for the child to end and reap it; its exit code (negative: the signal that ended it).

    Through a pidfd, without a thread; through a thread where pidfds are missing.
    """
    if popen.returncode is not None:
        return popen.returncode
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:
        return await trio.to_thread.run_sync(popen.wait, abandon_on_cancel=True)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return popen.wait()


async def wait_or_kill(
    popen: subprocess.Popen[bytes],
    grace_s: float,
    *,
    what: str,
    exited: Callable[[], Awaitable[object]] | None = None,
    fields: Mapping[str, object] | None = None,
) -> bool:
    """Give the child ``grace_s`` to end, then `kill` it; return once it is gone.

    ``exited`` waits for the end where someone else already waits for the child (default: `wait`).
    True when the child had to be killed; the warning logged then names it by ``what`` and
    ``fields``.
    """
    done = exited if exited is not None else functools.partial(wait, popen)
    with trio.move_on_after(grace_s):
        await done()
        return False
    log.warning(f"{what} ignored SIGTERM; killing it", extra=kv(pid=popen.pid, **(fields or {})))
    kill(popen)
    await done()
    return True


async def stop(
    popen: subprocess.Popen[bytes],
    grace_s: float,
    *,
    what: str,
    fields: Mapping[str, object] | None = None,
) -> bool:
    """SIGTERM, up to ``grace_s``, then SIGKILL to the group; True when it had to be killed."""
    send_signal(popen, signal.SIGTERM)
    return await wait_or_kill(popen, grace_s, what=what, fields=fields)
