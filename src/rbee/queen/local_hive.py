"""The hive the queen runs on its own machine (``queen.local_hive``, on unless ``--no-local-hive``).

It is ``rbee hive daemon --queen <queen> --port 0 --name local`` run by the same executable as
the queen (`rbee_command`), started once the queen is bound, restarted with backoff whenever it dies, and
stopped with the queen: SIGTERM (the hive then retires its workers), `STOP_GRACE_S`, SIGKILL.

Should the queen be SIGKILLed, the kernel sends the hive SIGTERM (`rbee.process.start`).

The hive gets the token the queen made for it (`rbee.queen.keys.HiveTokens`) through its
environment (``RBEE_HIVE_TOKEN``), where ``ps`` does not show it. It asks every caller for that
token, loopback included, passes it on to its workers, and reports to the queen with it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

import trio

from rbee import process
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
        # Its announcement line is not for the queen's readers; its logs go to our stderr.
        popen = process.start(self.argv(), env=env, stdout=subprocess.DEVNULL)
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
                        code = await process.wait(popen)
                    except trio.Cancelled:
                        with trio.CancelScope(shield=True):
                            await process.stop(popen, STOP_GRACE_S, what="the local hive")
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
