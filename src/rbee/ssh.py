"""The one place asyncssh lives: connect, run, put_file, get_file, forward, and host keys.

asyncssh runs on asyncio and rbee's daemons run on trio. Every asyncssh call here runs on one
long-lived asyncio loop in a daemon thread (started on first use): a call is submitted with
``asyncio.run_coroutine_threadsafe`` and its completion wakes the calling trio task through the
trio token. A trio cancellation cancels the asyncio task and waits for it to unwind, so that a
cancelled call leaves no channel half open. Connections live on that loop and may be shared by
many trio tasks.

Host keys are always checked, against rbee's own known_hosts file and the user's
``~/.ssh/known_hosts``; an unknown or changed key is refused with the key's fingerprint and the
command that trusts it (`trust_command`), never accepted or added on its own. Every asyncssh
and OS error becomes `SshError` with one line saying what to do. Remote commands are argv lists:
each argument is quoted with `shlex.quote`, so nothing a user typed is read by a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shlex
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import trio

from rbee.errors import SshError, UsageError

__all__ = [
    "Completed",
    "Connection",
    "HostKey",
    "KnownHosts",
    "Target",
    "connect",
    "fetch_host_key",
    "parse_target",
    "quote_argv",
    "session",
    "trust_command",
]

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
# AES-GCM first: on CPUs with AES instructions asyncssh moves bulk data (the pushed file) about
# twice as fast with it as with its default, ChaCha20-Poly1305. The rest as asyncssh orders them.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
# asyncssh logs every connection and channel at INFO; rbee logs what a user must act on.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

_TARGET = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]{0,31})@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]{0,252}|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


def trust_command(hive: str) -> str:
    """The command that records a hive's host key."""
    return f"rbee hive trust {hive}"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to connect: ``host`` is a host name, an address or an alias of ``~/.ssh/config``.

    ``user``, ``port`` and ``identity`` left empty come from ``~/.ssh/config`` as ``ssh`` reads
    it (``User``, ``Port``, ``IdentityFile``), then from the defaults (the local user, 22, the
    agent and ``~/.ssh/id_*``).
    """

    host: str
    user: str = ""
    port: int = 0
    identity: str = ""

    def __str__(self) -> str:
        where = f"{self.user}@{self.host}" if self.user else self.host
        return f"{where}:{self.port}" if self.port else where


def parse_target(text: str, identity: str = "") -> Target:
    """``USER@HOST[:PORT]`` or ``ALIAS`` as a `Target`; `UsageError` naming what is wrong."""
    match = _TARGET.match(text.strip())
    if match is None:
        raise UsageError(
            f"invalid SSH address {text!r}: use USER@HOST[:PORT] or an ~/.ssh/config alias"
        )
    port = int(match["port"]) if match["port"] else 0
    if match["port"] and not 0 < port < 65536:
        raise UsageError(f"invalid SSH port {port} in {text!r}: 1..65535")
    return Target(match["host"].strip("[]"), match["user"] or "", port, identity)


@dataclasses.dataclass(frozen=True)
class KnownHosts:
    """The host keys rbee trusts: its own file (``own``, written by `record`) and the user's."""

    own: Path
    user: Path = Path("~/.ssh/known_hosts")
    ssh_config: Path = Path("~/.ssh/config")

    def load(self) -> asyncssh.SSHKnownHosts:
        text = ""
        for path in (self.own, self.user.expanduser()):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(encoding="utf-8") + "\n"
        return asyncssh.import_known_hosts(text)

    def record(self, host: str, port: int, key: HostKey) -> None:
        """Trust ``key`` for ``host:port`` in rbee's own file, replacing what it held for it."""
        pattern = host if port == 22 else f"[{host}]:{port}"
        try:
            lines = self.own.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        kept = [line for line in lines if line.split(maxsplit=1)[:1] != [pattern]]
        self.own.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.own.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in [*kept, f"{pattern} {key.openssh}"]))
        tmp.replace(self.own)

    def config_paths(self) -> list[str]:
        path = self.ssh_config.expanduser()
        return [str(path)] if path.is_file() else []


@dataclasses.dataclass(frozen=True)
class HostKey:
    """A server's host key: ``fingerprint`` as ``SHA256:...``, ``openssh`` as ``TYPE BASE64``."""

    fingerprint: str
    openssh: str
    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class Completed:
    """A remote command that ran to its end."""

    exit_status: int
    stdout: str
    stderr: str


def quote_argv(argv: Sequence[str]) -> str:
    """One command line from an argv list, every argument quoted for a POSIX shell."""
    return " ".join(shlex.quote(arg) for arg in argv)


# --- the asyncio side ------------------------------------------------------------------------

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="rbee-ssh", daemon=True).start()
            _loop = loop
        return _loop


class _Call:
    """One coroutine on the asyncio loop that the trio side may cancel at any moment."""

    def __init__(self, make: Callable[[], Awaitable[Any]]) -> None:
        self.make = make
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False

    async def run(self) -> Any:
        self.task = asyncio.current_task()
        if self.cancelled:
            raise asyncio.CancelledError
        return await self.make()

    def cancel(self) -> None:
        # Runs on the loop, after the task was created (callbacks run in order), maybe before
        # its first step.
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


async def _on_asyncio(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on the asyncio loop; wait for it from trio; pass a cancellation on."""
    loop = _asyncio_loop()
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    call = _Call(make)
    future = asyncio.run_coroutine_threadsafe(call.run(), loop)
    future.add_done_callback(wake)
    try:
        await done.wait()
    except trio.Cancelled:
        loop.call_soon_threadsafe(call.cancel)
        with trio.CancelScope(shield=True):
            await done.wait()
        raise
    result: T = future.result()
    return result


def _from_asyncio(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: Any) -> None:
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(fn, *args)


# --- errors ------------------------------------------------------------------------------------


def _where(target: Target) -> str:
    return str(target)


def _os_error(err: OSError, target: Target) -> SshError:
    where = _where(target)
    if isinstance(err, socket.gaierror):
        return SshError(
            f"cannot resolve {target.host!r}: check the host name or its alias in ~/.ssh/config"
        )
    if isinstance(err, ConnectionRefusedError):
        return SshError(f"connection to {where} refused: is sshd running there, on that port?")
    if isinstance(err, TimeoutError):
        return SshError(
            f"timed out connecting to {where}: check the address, that the host is up and that "
            "no firewall drops SSH"
        )
    if isinstance(err, FileNotFoundError) and err.filename:
        return SshError(f"cannot read {err.filename}: check --identity")
    return SshError(f"cannot reach {where}: {err.strerror or err}")


def _ssh_error(err: Exception, target: Target) -> SshError:
    where = _where(target)
    if isinstance(err, asyncssh.PermissionDenied):
        key = f"the identity file {target.identity}" if target.identity else "your agent's keys"
        return SshError(
            f"permission denied by {where}: {key} are not accepted there; add the public key to "
            "the host's ~/.ssh/authorized_keys or pass another --identity"
        )
    if isinstance(err, asyncssh.KeyImportError):
        return SshError(f"cannot use the identity file {target.identity}: {err}")
    if isinstance(err, asyncssh.DisconnectError):
        return SshError(f"SSH connection to {where} failed: {err.reason}")
    if isinstance(err, asyncssh.ChannelOpenError):
        return SshError(f"SSH channel to {where} refused: {err.reason}")
    if isinstance(err, asyncssh.SFTPError):
        return SshError(f"file transfer with {where} failed: {err.reason}")
    if isinstance(err, OSError):
        return _os_error(err, target)
    return SshError(f"SSH to {where} failed: {type(err).__name__}: {err}")


# --- connections ---------------------------------------------------------------------------


def _options(target: Target, known: KnownHosts, **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "config": known.config_paths() or None,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "encryption_algs": CIPHERS,
        **extra,
    }
    if target.user:
        options["username"] = target.user
    if target.port:
        options["port"] = target.port
    if target.identity:
        # Only that key: an agent offering others would hide which one the host refused.
        options["client_keys"] = [target.identity]
        options["agent_path"] = None
    return options


async def _resolve(target: Target, known: KnownHosts) -> tuple[str, int]:
    """The host and port ``target`` means, after ``~/.ssh/config`` (as ``ssh`` resolves it)."""

    async def resolve() -> tuple[str, int]:
        options = asyncssh.SSHClientConnectionOptions(
            host=target.host,
            known_hosts=None,
            client_keys=None,
            agent_path=None,
            **{k: v for k, v in _options(target, known).items() if k in ("config", "port")},
        )
        return str(options.host), int(options.port)

    try:
        return await _on_asyncio(resolve)
    except (OSError, asyncssh.Error, ValueError) as err:
        raise _ssh_error(err, target) from None


async def fetch_host_key(target: Target, known: KnownHosts) -> HostKey:
    """The host key ``target`` offers (no authentication, nothing trusted or recorded)."""
    host, port = await _resolve(target, known)

    async def fetch() -> HostKey:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            key = await asyncssh.get_server_host_key(host, port, config=None)
        if key is None:
            raise SshError(f"{target} offered no host key")
        public = key.export_public_key("openssh").decode().split()
        return HostKey(key.get_fingerprint("sha256"), " ".join(public[:2]), host, port)

    try:
        return await _on_asyncio(fetch)
    except (OSError, asyncssh.Error) as err:
        raise _ssh_error(err, target) from None


async def _host_key_error(target: Target, known: KnownHosts, hive: str) -> SshError:
    offered = await fetch_host_key(target, known)
    port = None if offered.port == 22 else offered.port
    if known.load().match(offered.host, "", port)[0]:
        return SshError(
            f"the host key of {target} has CHANGED (it offers {offered.fingerprint}): someone may "
            f"be in the middle, or the host was reinstalled; once you have checked the key, run "
            f"'{trust_command(hive)}'"
        )
    return SshError(
        f"the host key of {target} is not known (it offers {offered.fingerprint}): check it and "
        f"run '{trust_command(hive)}'"
    )


class Connection:
    """An open SSH connection; its methods run on the asyncio loop and may be called from trio."""

    def __init__(self, conn: asyncssh.SSHClientConnection, target: Target) -> None:
        self._conn = conn
        self.target = target

    @property
    def local_address(self) -> str:
        """This machine's address as the host sees it (where the host reaches us)."""
        return str(self._conn.get_extra_info("sockname")[0])

    @property
    def peer_address(self) -> str:
        """The host's address on the connection."""
        return str(self._conn.get_extra_info("peername")[0])

    async def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        try:
            return await _on_asyncio(make)
        except (OSError, asyncssh.Error) as err:
            raise _ssh_error(err, self.target) from None

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> Completed:
        """Run ``argv`` on the host (each argument quoted); ``stdin`` is fed to it, then closed."""
        command = quote_argv(argv)

        async def run() -> Completed:
            done = await self._conn.run(command, input=stdin, check=False)
            status = done.exit_status if done.exit_status is not None else 255
            return Completed(status, str(done.stdout or ""), str(done.stderr or ""))

        return await self._call(run)

    async def stream(self, argv: Sequence[str]) -> AsyncIterator[str]:
        """Run ``argv`` on the host and yield its output (stderr too) as it comes, until it
        ends; closing the generator stops the command.
        """
        command = quote_argv(argv)
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[str | SshError | None](float("inf"))

        async def pump() -> None:
            try:
                async with self._conn.create_process(command, stderr=asyncssh.STDOUT) as process:
                    try:
                        async for chunk in process.stdout:
                            _from_asyncio(token, send.send_nowait, str(chunk))
                    except asyncio.CancelledError:
                        # Without a terminal, a closed channel does not end the command.
                        with contextlib.suppress(OSError, asyncssh.Error):
                            process.send_signal("TERM")
                        raise
                _from_asyncio(token, send.send_nowait, None)
            except (OSError, asyncssh.Error) as err:
                _from_asyncio(token, send.send_nowait, _ssh_error(err, self.target))

        loop = _asyncio_loop()
        call = _Call(pump)
        # Not awaited through `_on_asyncio`: the generator yields while it runs.
        asyncio.run_coroutine_threadsafe(call.run(), loop)
        try:
            async for item in receive:
                if item is None:
                    return
                if isinstance(item, SshError):
                    raise item
                yield item
        finally:
            loop.call_soon_threadsafe(call.cancel)

    async def put_file(
        self,
        local: Path,
        remote: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Copy ``local`` to ``remote`` (relative paths start in the user's home) over SFTP.

        ``progress(copied, total)`` is called in the calling trio task's thread as it goes.
        """
        token = trio.lowlevel.current_trio_token()

        def handler(_src: bytes, _dst: bytes, copied: int, total: int) -> None:
            if progress is not None:
                _from_asyncio(token, progress, copied, total)

        async def put() -> None:
            async with self._conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote, progress_handler=handler)

        await self._call(put)

    async def get_file(self, remote: str, local: Path) -> None:
        """Copy ``remote`` from the host to ``local`` over SFTP."""

        async def get() -> None:
            async with self._conn.start_sftp_client() as sftp:
                await sftp.get(remote, str(local))

        await self._call(get)

    async def forward_remote(self, remote_port: int, local_host: str, local_port: int) -> int:
        """Listen on the host's loopback ``remote_port`` (0: any) and carry each connection to
        ``local_host:local_port`` here; return the port listened on.
        """

        async def forward() -> int:
            listener = await self._conn.forward_remote_port(
                "127.0.0.1", remote_port, local_host, local_port
            )
            return int(listener.get_port())

        try:
            return await self._call(forward)
        except asyncssh.ChannelListenError:
            # Not an asyncssh.Error: raised when sshd refuses, mostly for a port in use.
            port = f"port {remote_port}" if remote_port else "a port"
            raise SshError(
                f"{_where(self.target)} refused to listen on {port} of its loopback for the "
                "queen (in use?)"
            ) from None

    async def forward_local(self, host: str, port: int) -> None:
        """Listen on ``host:port`` here and carry each connection to ``host:port`` as the host
        sees it (a loopback address of the host, mirrored on this machine's loopback).
        """

        async def forward() -> None:
            await self._conn.forward_local_port(host, port, host, port)

        await self._call(forward)

    @property
    def closed(self) -> bool:
        """Whether the connection has closed (the host went away, or `close`)."""
        return bool(self._conn.is_closed())

    async def close(self) -> None:
        async def close() -> None:
            self._conn.close()
            await self._conn.wait_closed()

        with trio.CancelScope(shield=True):
            await self._call(close)


async def connect(target: Target, known: KnownHosts, *, hive: str) -> Connection:
    """Open a connection to ``target``, its host key checked against ``known``.

    ``hive`` names the hive in the messages of refused host keys (the command that trusts it).
    """

    async def open_() -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            target.host, known_hosts=known.load(), **_options(target, known)
        )

    try:
        conn = await _on_asyncio(open_)
    except asyncssh.HostKeyNotVerifiable:
        raise await _host_key_error(target, known, hive) from None
    except (OSError, asyncssh.Error, ValueError) as err:
        raise _ssh_error(err, target) from None
    return Connection(conn, target)


@contextlib.asynccontextmanager
async def session(target: Target, known: KnownHosts, *, hive: str) -> AsyncIterator[Connection]:
    """`connect`, and close the connection at the end of the block."""
    conn = await connect(target, known, hive=hive)
    try:
        yield conn
    finally:
        await conn.close()
