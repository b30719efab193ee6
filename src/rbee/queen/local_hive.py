"""The hive the queen runs on its own machine (``queen.local_hive``, on unless ``--no-local-hive``).

It is ``rbee hive --queen <queen> --port 0 --name local`` run by the same executable as the queen
(`rbee_command`), started once the queen is bound, restarted with backoff whenever it dies, and
stopped with the queen: SIGTERM (the hive then retires its workers), `STOP_GRACE_S`, SIGKILL.

Should the queen be SIGKILLed, the kernel sends the hive SIGTERM (``PR_SET_PDEATHSIG``). The
kernel sends it when the *thread* that forked the child ends, so the hive is forked from the trio
thread itself, never from a worker thread that trio retires when idle (as the hive does for its
workers, see `rbee.hive.supervisor`).

The hive gets the queen's token through its environment (``RBEE_HIVE_TOKEN``), where ``ps`` does
not show it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Sequence

import trio

from rbee.log import kv
from rbee.queen.lifecycle.steps import hive_argv

__all__ = ["LOCAL_HIVE", "LocalHive"]

log = logging.getLogger(__name__)

LOCAL_HIVE = "local"
# Longer than the hive's own grace for its workers (hive.worker_stop_grace_s, 10 s by default).
STOP_GRACE_S = 15.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# A hive that ran this long before dying is restarted after the first backoff again.
STABLE_S = 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec: nothing beyond the prctl call and a check.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the queen died before prctl took effect
        os._exit(1)


async def _wait_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait for the process to end through a pidfd (no thread)."""
    pidfd = os.pidfd_open(popen.pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return popen.wait()


class LocalHive:
    """Runs and supervises the local hive process; `run` until `stop` (or cancellation)."""

    def __init__(
        self,
        command: Sequence[str],
        queen_url: str,
        *,
        token: str = "",
        models_dir: str = "",
        heartbeat_interval_s: float = 1.0,
    ) -> None:
        self.command = list(command)
        self.queen_url = queen_url
        self.token = token
        self.models_dir = models_dir
        self.heartbeat_interval_s = heartbeat_interval_s
        self.pid: int | None = None
        self.restarts = 0
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    def argv(self) -> list[str]:
        return hive_argv(
            self.command,
            self.queen_url,
            name=LOCAL_HIVE,
            heartbeat_interval_s=self.heartbeat_interval_s,
            models_dir=self.models_dir,
        )

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        if self.token:
            env["RBEE_HIVE_TOKEN"] = self.token
        popen = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            # Its announcement line is not for the queen's readers; its logs go to our stderr.
            stdout=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            # A Ctrl-C at the queen's terminal reaches the queen only, which stops the hive in order.
            process_group=0,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        self.pid = popen.pid
        return popen

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the hive, restart it whenever it dies, until `stop` or cancellation."""
        backoff = FIRST_BACKOFF_S
        try:
            with trio.CancelScope() as self._scope:
                popen = self._start()
                task_status.started()
                while True:
                    started = trio.current_time()
                    try:
                        code = await _wait_exit(popen)
                    except trio.Cancelled:
                        with trio.CancelScope(shield=True):
                            await self._terminate(popen)
                        raise
                    if trio.current_time() - started > STABLE_S:
                        backoff = FIRST_BACKOFF_S
                    log.warning(
                        "the local hive exited; restarting it (see its log lines above)",
                        extra=kv(exit_code=code, restart_in_s=backoff),
                    )
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    popen = self._start()
                    self.restarts += 1
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop the hive (SIGTERM, `STOP_GRACE_S`, SIGKILL) and its supervision; wait for both."""
        if self._scope is not None:
            self._scope.cancel()
        await self._stopped.wait()

    @staticmethod
    async def _terminate(popen: subprocess.Popen[bytes]) -> None:
        if popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE_S):
            await _wait_exit(popen)
            return
        log.warning("the local hive ignored SIGTERM; killing it", extra=kv(pid=popen.pid))
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        await _wait_exit(popen)
