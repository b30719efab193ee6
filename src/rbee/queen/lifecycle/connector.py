"""One interface to a host, whether it is this machine or one reached over SSH.

The hive lifecycle (`rbee.queen.lifecycle.steps`) only runs commands and copies files through a
`Connector`; `SshConnector` does it over an `rbee.ssh.Connection`, `LocalConnector` on this
machine with a directory standing for the home directory. Remote paths are relative to that home.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from rbee.errors import SshError
from rbee.ssh import Completed, Connection

__all__ = ["Connector", "LocalConnector", "Progress", "SshConnector"]

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20


class Connector(Protocol):
    """Runs commands and moves files on one host; ``where`` names the host in messages."""

    where: str

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> Completed: ...

    async def put_file(
        self, local: Path, remote: str, progress: Progress | None = None
    ) -> None: ...

    async def get_file(self, remote: str, local: Path) -> None: ...


class SshConnector:
    """A host over an open SSH connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.where = str(conn.target)

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> Completed:
        return await self.conn.run(argv, stdin=stdin)

    async def put_file(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        await self.conn.put_file(local, remote, progress)

    async def get_file(self, remote: str, local: Path) -> None:
        await self.conn.get_file(remote, local)


class LocalConnector:
    """This machine, with ``home`` as the home directory that remote paths start in."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.where = "this machine"

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> Completed:
        try:
            done = await trio.run_process(
                list(argv),
                cwd=self.home,
                stdin=(stdin or "").encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        except OSError as err:
            raise SshError(f"cannot run {argv[0]} here: {err.strerror or err}") from None
        return Completed(done.returncode, done.stdout.decode(), done.stderr.decode())

    async def put_file(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        await self._copy(local, self.home / remote, progress)

    async def get_file(self, remote: str, local: Path) -> None:
        await self._copy(self.home / remote, local, None)

    @classmethod
    async def _copy(cls, src: Path, dst: Path, progress: Progress | None) -> None:
        try:
            await trio.to_thread.run_sync(cls._copy_file, src, dst, progress)
        except OSError as err:
            raise SshError(f"cannot copy {src} to {dst}: {err.strerror or err}") from None

    @staticmethod
    def _copy_file(src: Path, dst: Path, progress: Progress | None) -> None:
        total = src.stat().st_size
        copied = 0
        with src.open("rb") as fin, dst.open("wb") as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
                copied += len(chunk)
                if progress is not None:
                    trio.from_thread.run_sync(progress, copied, total)
        shutil.copymode(src, dst)
