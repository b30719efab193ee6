"""The queen's hives on other hosts: registered by SSH address, started by pushing the queen's file.

`HostHives` does what the ``/v1/hives`` lifecycle routes ask: `add` registers a hive, `trust`
records its host key, `start` connects, runs the preflight, pushes the file when the host lacks
it, starts the hive detached and waits for its first heartbeat; `stop`, `remove`, `logs`. After
a queen restart the hives that were started reattach as their heartbeats arrive; `reattach`
starts again those that do not report within the hive's longest backoff and
`REATTACH_INTERVALS` heartbeat intervals more.

The hive is told to bind the address its host has on the SSH connection and to report to the
address this machine has on it, so that both ends use the route SSH already found.

A hive added with ``tunnel`` (a host that lets only SSH in) talks to the queen only through one
SSH connection the queen keeps open (`_Tunnel`): its heartbeats and model pulls go through a
port forwarded from the host's loopback to the queen; the hive and its workers bind a loopback
address of their own on the host (``127.77.x.y``), which the queen mirrors on its own loopback,
forwarding each port there (the hive's at start, a worker's as the queen first connects to it).
The URLs the hive reports are then good on the queen's side as they are. After a queen restart,
a tunnelled hive that still runs gets its tunnel again on the port and address its command line
names (it cannot report before), rather than being started again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from rbee import ssh
from rbee.errors import ApiError, NotFoundError, RbeeError, SshError
from rbee.hive.client import HiveClient
from rbee.hive.queen_link import MAX_BACKOFF_S
from rbee.log import kv
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.keys import HiveTokens
from rbee.queen.lifecycle import steps
from rbee.queen.lifecycle.connector import Progress, SshConnector
from rbee.queen.lifecycle.records import HostRecord, HostRecords
from rbee.queen.local_hive import LOCAL_HIVE
from rbee.server import is_loopback
from rbee.wire.hosts import (
    HiveAdd,
    HiveStarted,
    HiveStopped,
    HostHive,
    HostKeyInfo,
    PushProgress,
)

__all__ = ["HIVE_PORT", "REATTACH_INTERVALS", "HostHives", "file_pythons", "own_file"]

log = logging.getLogger(__name__)

HIVE_PORT = 7835
REATTACH_INTERVALS = 5
START_TIMEOUT_S = 120.0
# How long a hive asked to stop through its API may take: its workers' grace (10 s by default)
# and their kill, with room.
STOP_TIMEOUT_S = 30.0
_ALIVE_CHECK_S = 0.5
_GONE_CHECK_S = 0.1


def own_file() -> Path | None:
    """The ``rbee.pyz`` this process runs from (what the queen pushes), or None."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.is_file() and zipfile.is_zipfile(argv0):
        return argv0.resolve()
    return None


def file_pythons(file: Path | None) -> tuple[tuple[int, int], ...]:
    """The CPython versions ``file`` carries packages for (its ``rbee-pyz/cp3X.json`` listings).

    A file without listings (or no file) runs only on the queen's own version.
    """
    found: list[tuple[int, int]] = []
    if file is not None and zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as zf:
            for name in zf.namelist():
                tag = name.removeprefix("rbee-pyz/cp").removesuffix(".json")
                if name.startswith("rbee-pyz/cp3") and tag.isdigit():
                    found.append((3, int(tag[1:])))
    return tuple(sorted(found)) or (sys.version_info[:2],)


@dataclasses.dataclass
class _Tunnel:
    conn: ssh.Connection
    address: str
    queen_port: int
    forwarded: set[int] = dataclasses.field(default_factory=set)
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)


@dataclasses.dataclass
class _FileInfo:
    path: Path
    sha256: str
    size: int
    stamp: tuple[int, int]


class HostHives:
    """Registered hives and their lifecycle, for the queen's routes and its start-up.

    ``file`` is what gets pushed (the queen's own ``rbee.pyz``; None when the queen does not run
    from one, and then no hive can be started). ``accepts`` are the Python versions it runs on
    (default: those its listings name, `file_pythons`). ``queen_host`` / ``queen_port`` are where
    the queen listens; each hive gets its own token from ``tokens`` (the queen's daemon sets
    them), else ``token``; `upgrade` starts the new process with a new one. ``http`` calls the
    hives' APIs (`stop` asks a hive there first); None: only over SSH.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        dispatcher: Dispatcher,
        known: ssh.KnownHosts,
        *,
        file: Path | None,
        token: str,
        queen_host: str,
        heartbeat_interval_s: float = 1.0,
        accepts: tuple[tuple[int, int], ...] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.http = http
        self.records = HostRecords(conn)
        self.known = known
        self.file = file
        self.token = token
        self.tokens: HiveTokens | None = None
        self.queen_host = queen_host
        self.queen_port = 0
        self.heartbeat_interval_s = heartbeat_interval_s
        self.accepts = accepts if accepts is not None else file_pythons(file)
        self.start_timeout_s = start_timeout_s
        self._file_info: _FileInfo | None = None
        self._nursery: trio.Nursery | None = None
        self._tunnels: dict[str, _Tunnel] = {}
        self._tunnel_at: dict[str, _Tunnel] = {}
        self._addresses = 0
        self._locks: dict[str, trio.Lock] = {}
        for record in self.records.all():
            self._publish_labels(record)

    # --- registration ------------------------------------------------------------------------

    def add(self, req: HiveAdd) -> HostHive:
        if req.name == LOCAL_HIVE:
            raise ApiError(f"the name {LOCAL_HIVE!r} is the queen's own hive: choose another", 409)
        target = ssh.parse_target(req.ssh, identity=req.identity)
        record = HostRecord(req.name, target, req.python, dict(req.labels), tunnel=req.tunnel)
        if not self.records.add(record):
            raise ApiError(
                f"hive {req.name} is already registered ('rbee hive remove {req.name}' first)", 409
            )
        self._publish_labels(record)
        return self.view(record)

    def get(self, name: str) -> HostRecord:
        record = self.records.get(name)
        if record is None:
            known = ", ".join(r.name for r in self.records.all()) or "none"
            raise NotFoundError(
                f"no registered hive {name!r} (registered: {known}; 'rbee hive add' registers one)"
            )
        return record

    def view(self, record: HostRecord) -> HostHive:
        online = self.dispatcher.registry.hive(record.name)
        return HostHive(
            name=record.name,
            ssh=str(dataclasses.replace(record.target, identity="")),
            identity=record.target.identity,
            python=record.python,
            labels=record.labels,
            auto_start=record.auto_start,
            tunnel=record.tunnel,
            status="online" if online is not None and online.online else "offline",
            url=online.heartbeat.url if online is not None else "",
        )

    def _publish_labels(self, record: HostRecord) -> None:
        self.dispatcher.hive_labels[record.name] = dict(record.labels)

    # --- host keys ---------------------------------------------------------------------------

    async def trust(self, name: str, fingerprint: str) -> HostKeyInfo:
        """The host key the hive's host offers; recorded when ``fingerprint`` is its own."""
        record = self.get(name)
        key = await ssh.fetch_host_key(record.target, self.known)
        trusted = bool(fingerprint) and fingerprint == key.fingerprint
        if fingerprint and not trusted:
            raise ApiError(
                f"the host key of {record.target} is {key.fingerprint}, not {fingerprint}: "
                "nothing was recorded",
                409,
            )
        if trusted:
            self.known.record(key.host, key.port, key)
        return HostKeyInfo(
            hive=name,
            host=key.host,
            port=key.port,
            fingerprint=key.fingerprint,
            key=key.openssh,
            trusted=trusted,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def _file(self) -> _FileInfo:
        if self.file is None:
            raise ApiError(
                "this queen does not run from rbee.pyz, so it has no file to push: start it as "
                "'python3.11 rbee.pyz queen'",
                409,
            )
        stat = self.file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._file_info is None or self._file_info.stamp != stamp:
            sha = await trio.to_thread.run_sync(steps.sha256_of, self.file)
            self._file_info = _FileInfo(self.file, sha, stat.st_size, stamp)
        return self._file_info

    def _queen_url(self, name: str, conn: ssh.Connection) -> str:
        tunnel = self._tunnels.get(name)
        if tunnel is not None:
            return f"http://127.0.0.1:{tunnel.queen_port}"
        if is_loopback(self.queen_host):
            raise ApiError(
                f"the queen listens on {self.queen_host} only, which another host cannot reach: "
                "start it with --host 0.0.0.0 and a --token, or add the hive with --tunnel",
                409,
            )
        # A queen bound to one address is reached there; on every address, by the route SSH took.
        wildcard = self.queen_host in ("0.0.0.0", "::", "")
        host = conn.local_address if wildcard else self.queen_host
        return (
            f"http://[{host}]:{self.queen_port}"
            if ":" in host
            else f"http://{host}:{self.queen_port}"
        )

    @contextlib.asynccontextmanager
    async def _host(self, name: str) -> AsyncIterator[tuple[HostRecord, ssh.Connection]]:
        record = self.get(name)
        lock = self._locks.setdefault(name, trio.Lock())
        async with lock:
            if record.tunnel:
                yield record, (await self._tunnel(name, record)).conn
                return
            async with ssh.session(record.target, self.known, hive=name) as conn:
                yield record, conn

    async def _tunnel(self, name: str, record: HostRecord) -> _Tunnel:
        """The hive's tunnel: its SSH connection, kept open, and the queen's port forwarded."""
        old = self._tunnels.get(name)
        if old is not None and not old.conn.closed:
            return old
        conn = await ssh.connect(record.target, self.known, hive=name)
        if old is not None:
            # Again the port and address a running hive already uses, when the tunnel is back.
            return await self._forward(name, conn, old.queen_port, old.address, running=True)
        return await self._forward(name, conn, 0, self._new_address(), running=False)

    async def _forward(
        self, name: str, conn: ssh.Connection, queen_port: int, address: str, *, running: bool
    ) -> _Tunnel:
        """Make ``conn`` hive ``name``'s tunnel: the queen's port forwarded from the host's
        loopback ``queen_port`` (0: any), the hive's ``address`` mirrored here (its API
        forwarded at once when it ``running``). ``conn`` is closed if that fails.
        """
        try:
            local = self.queen_host if not self.queen_host.startswith(("0.0.0.0", "::")) else ""
            port = await conn.forward_remote(queen_port, local or "127.0.0.1", self.queen_port)
        except BaseException:
            await conn.close()
            raise
        tunnel = _Tunnel(conn, address, port)
        self._tunnels[name] = self._tunnel_at[address] = tunnel
        if running:
            await self.before_connect(address, HIVE_PORT)
        return tunnel

    def _new_address(self) -> str:
        """A loopback address (``127.77.x.y``) no tunnelled hive of this queen uses."""
        while True:
            self._addresses += 1
            address = f"127.77.{self._addresses // 250}.{self._addresses % 250 + 1}"
            if address not in self._tunnel_at:
                return address

    async def _reopen_tunnel(self, name: str) -> None:
        """After a queen restart, give tunnelled hive ``name``, if it still runs, its tunnel
        again: the queen's port on the host port it reports to, its address mirrored here, so
        that its next heartbeat arrives. Tried every heartbeat interval until `reattach` would
        start the hive again (the host may not have let go of the old queen's port yet).
        """
        deadline = trio.current_time() + self._reattach_after_s()
        while True:
            try:
                await self._reopen_tunnel_once(name)
                return
            except RbeeError as err:
                if trio.current_time() + self.heartbeat_interval_s > deadline:
                    log.warning(
                        "cannot reopen the SSH tunnel of a running hive; it is started again "
                        "if it does not report",
                        extra=kv(hive=name, error=str(err)),
                    )
                    return
            await trio.sleep(self.heartbeat_interval_s)

    async def _reopen_tunnel_once(self, name: str) -> None:
        record = self.records.get(name)
        if record is None:
            return
        async with self._locks.setdefault(name, trio.Lock()):
            conn = await ssh.connect(record.target, self.known, hive=name)
            try:
                facts = await steps.preflight(
                    SshConnector(conn), hive=name, file="", port=HIVE_PORT
                )
            except BaseException:
                await conn.close()
                raise
            queen = httpx.URL(facts.running_option("--queen") or "http://-")
            address = facts.running_option("--host")
            if not (facts.running_pid and address and queen.host == "127.0.0.1" and queen.port):
                await conn.close()
                return
            await self._forward(name, conn, queen.port, address, running=True)

    async def _mend_tunnels(self) -> None:
        """Open again, every few heartbeat intervals, the tunnels whose connection has closed."""
        while True:
            await trio.sleep(REATTACH_INTERVALS * self.heartbeat_interval_s)
            for name, tunnel in list(self._tunnels.items()):
                record = self.records.get(name)
                if tunnel.conn.closed and record is not None:
                    lock = self._locks.setdefault(name, trio.Lock())
                    try:
                        async with lock:
                            await self._tunnel(name, record)
                    except RbeeError as err:
                        log.warning(
                            "cannot open the SSH tunnel to a hive again; retrying",
                            extra=kv(hive=name, error=str(err)),
                        )

    def _close_tunnel(self, name: str) -> None:
        tunnel = self._tunnels.pop(name, None)
        if tunnel is not None:
            self._tunnel_at.pop(tunnel.address, None)
            if self._nursery is not None:
                self._nursery.start_soon(tunnel.conn.close)

    async def before_connect(self, host: str, port: int) -> None:
        """Forward ``port`` of a tunnelled hive's address before the queen connects to it."""
        tunnel = self._tunnel_at.get(host)
        if tunnel is None or port in tunnel.forwarded:
            return
        async with tunnel.lock:
            if port not in tunnel.forwarded:
                await tunnel.conn.forward_local(host, port)
                tunnel.forwarded.add(port)

    async def start(self, name: str, progress: Progress | None = None) -> HiveStarted:
        """Start hive ``name`` on its host; nothing changes when it already runs this file."""
        return await self._deploy(name, progress, upgrade=False)

    async def upgrade(self, name: str, progress: Progress | None = None) -> HiveStarted:
        """Run hive ``name`` on the queen's current file: push it, drain the hive (no new jobs
        for it; the running ones end, for up to ``queen.drain_grace_s``), stop it (it retires its
        workers), start the new file with a new token (the old one is refused from then on); if
        that does not come up, start the previous one again, with the new token too.
        """
        return await self._deploy(name, progress, upgrade=True)

    async def _deploy(self, name: str, progress: Progress | None, *, upgrade: bool) -> HiveStarted:
        began = trio.current_time()
        info = await self._file()
        wanted = steps.file_name(info.sha256)
        async with self._host(name) as (record, conn):
            connector = SshConnector(conn)
            facts = await steps.preflight(
                connector, hive=name, file=wanted, port=HIVE_PORT, python=record.python
            )
            online = self.dispatcher.registry.hive(name)
            same = facts.running_file.endswith(wanted)
            if facts.running_pid and same and online is not None and online.online:
                self.records.set_auto_start(name, True)
                return HiveStarted(
                    name=name,
                    changed=False,
                    pushed=False,
                    file=facts.running_file,
                    python="",
                    pid=facts.running_pid,
                    seconds=trio.current_time() - began,
                    message=f"hive {name} already runs this rbee (pid {facts.running_pid}); "
                    "nothing changed",
                )
            if facts.running_pid and not same and not upgrade:
                raise ApiError(
                    f"hive {name} runs another rbee ({facts.running_file}): "
                    f"'rbee hive upgrade {name}' replaces it",
                    409,
                )
            interpreter = steps.check(
                facts,
                where=f"{name} ({record.target})",
                python=record.python,
                size=info.size,
                port=HIVE_PORT,
                accepts=self.accepts,
            )
            if not facts.have_file:
                await steps.push(connector, info.path, info.sha256, progress)
            previous = facts.running_file if facts.running_pid and not same else ""
            try:
                if facts.running_pid:
                    # It runs another file (an upgrade), or this one without reporting here.
                    if previous:
                        await self._drain(name)
                    await steps.stop(connector, name)
                    self.dispatcher.registry.take_offline(name)
                if upgrade and self.tokens is not None:
                    # The old process is gone: only the one started next holds a token that works.
                    self.tokens.rotate(name)
                remote = f"{steps.RBEE_DIR}/bin/{wanted}"
                try:
                    pid = await self._launch(connector, name, interpreter, remote)
                except SshError as err:
                    if not previous:
                        raise
                    await self._launch(connector, name, interpreter, previous)
                    raise ApiError(
                        f"hive {name} did not come up on the new file, so it runs the previous "
                        f"one ({previous}) again: {err}",
                        502,
                    ) from None
            finally:
                self.dispatcher.end_drain(name)
            self.records.set_auto_start(name, True)
            what = f"upgraded from {previous}" if previous else "started"
            return HiveStarted(
                name=name,
                changed=True,
                pushed=not facts.have_file,
                file=remote,
                python=interpreter,
                pid=pid,
                seconds=trio.current_time() - began,
                message=f"hive {name} {what} on {record.target} (pid {pid})",
            )

    async def _drain(self, name: str) -> None:
        """Let the jobs running on hive ``name`` end (up to the queen's drain grace), routing
        none to it meanwhile; those still running when the hive stops go on elsewhere.
        """
        grace = self.dispatcher.config.drain_grace_s
        left = await self.dispatcher.drain_hive(name, grace)
        if left:
            log.warning(
                "jobs still run on a hive about to stop; they continue on other workers",
                extra=kv(hive=name, jobs=left, grace_s=grace),
            )

    async def _launch(
        self, connector: SshConnector, name: str, interpreter: str, remote: str
    ) -> int:
        """Start the hive on ``remote`` and wait for its first heartbeat; return its pid."""
        conn = connector.conn
        tunnel = self._tunnels.get(name)
        if tunnel is not None:
            await self.before_connect(tunnel.address, HIVE_PORT)
        argv = steps.hive_argv(
            # -S: no site, so that what the host's site-packages hold or run at every start
            # (.pth files) neither slows the hive down nor reaches it; the file carries all.
            [interpreter, "-S", remote],
            self._queen_url(name, conn),
            name=name,
            host=tunnel.address if tunnel is not None else conn.peer_address,
            port=HIVE_PORT,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        started_at = trio.current_time()
        pid = await steps.start(connector, name, argv, self._token(name), file=remote)
        await self._wait_online(connector, name, pid, started_at)
        return pid

    def _token(self, name: str) -> str:
        return self.tokens.token(name) if self.tokens is not None else self.token

    async def _wait_online(
        self, connector: SshConnector, name: str, pid: int, since: float
    ) -> None:
        """Wait for the hive's first heartbeat; if it dies or stays silent, its last log lines."""
        died = False

        async def watch(cancel: trio.CancelScope) -> None:
            nonlocal died
            # The process is on another host: there is nothing to wait on but asking.
            while await steps.running_pid(connector, pid):  # noqa: ASYNC110
                await trio.sleep(_ALIVE_CHECK_S)
            died = True
            cancel.cancel()

        with trio.move_on_after(self.start_timeout_s) as waited:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, nursery.cancel_scope)
                await self.dispatcher.wait_for_hive(name, after=since)
                nursery.cancel_scope.cancel()
        if died or waited.cancelled_caught:
            tail = " | ".join(await steps.log_tail(connector, name, 8))
            if not died:
                await steps.stop(connector, name)
            what = "exited" if died else f"sent no heartbeat within {self.start_timeout_s:g} s"
            raise SshError(f"hive {name} {what}; its log ends: {tail or '(empty)'}")

    async def stop(self, name: str) -> HiveStopped:
        """Drain the hive (no new jobs for it; the running ones end, for up to
        ``queen.drain_grace_s``), then stop it, which retires its workers: through its API
        (``POST /v1/shutdown`` with its token), else over SSH (SIGTERM to its pid, then SIGKILL)
        when the API does not take the request or the hive does not go within `STOP_TIMEOUT_S`.
        """
        self.get(name)
        try:
            await self._drain(name)
            why = await self._stop_through_api(name)
            if why is None:
                was_running, message = True, f"hive {name} stopped"
            else:
                async with self._host(name) as (_, conn):
                    outcome = await steps.stop(SshConnector(conn), name)
                was_running = outcome in ("stopped", "killed")
                message = (
                    f"hive {name} stopped over SSH ({why})"
                    if was_running
                    else f"hive {name} was not running"
                )
            self._close_tunnel(name)
            self.records.set_auto_start(name, False)
            self.dispatcher.registry.take_offline(name)
            self.dispatcher.hive_records.offline(name, time.time())
        finally:
            # The jobs that waited for the hive's models are decided again, without it.
            self.dispatcher.end_drain(name)
        return HiveStopped(name=name, was_running=was_running, message=message)

    async def _stop_through_api(self, name: str) -> str | None:
        """Ask the hive to stop and wait until its API is gone; else why that did not happen."""
        online = self.dispatcher.registry.hive(name)
        if self.http is None or online is None or not online.online:
            return "it does not report to this queen"
        url = httpx.URL(online.heartbeat.url)
        hive = HiveClient(str(url), self.http, self._token(name))
        try:
            await self.before_connect(url.host, url.port or HIVE_PORT)
            await hive.shutdown()
        except RbeeError as err:
            return f"its API did not take the request: {err}"
        with trio.move_on_after(STOP_TIMEOUT_S):
            # The hive is another process, maybe on another host: there is nothing to wait on.
            while await self._answers(url):  # noqa: ASYNC110
                await trio.sleep(_GONE_CHECK_S)
            return None
        return f"it still answered {STOP_TIMEOUT_S:g} s after it was asked to stop"

    async def _answers(self, url: httpx.URL) -> bool:
        """Whether a hive's API still takes connections (a slow answer counts as one)."""
        assert self.http is not None
        try:
            await self.http.get(url.join("/health"), timeout=_ALIVE_CHECK_S)
        except httpx.TimeoutException:
            return True
        except httpx.TransportError:
            return False
        return True

    async def remove(self, name: str) -> HiveStopped:
        """Stop the hive if it runs (and its host answers), then forget it."""
        self.get(name)
        try:
            stopped = await self.stop(name)
        except SshError as err:
            stopped = HiveStopped(
                name=name, was_running=False, message=f"could not stop hive {name}: {err}"
            )
        self.records.remove(name)
        self.dispatcher.hive_labels.pop(name, None)
        return HiveStopped(
            name=name, was_running=stopped.was_running, message=f"{stopped.message}; removed"
        )

    async def logs(self, name: str, lines: int) -> list[str]:
        async with self._host(name) as (_, conn):
            return await steps.log_tail(SshConnector(conn), name, lines)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the deploys that report through `deploy_events`, and `reattach`, until cancelled."""
        for record in self.records.all():
            if record.auto_start:
                # Jobs sent right after a restart wait for the hives that ran before it.
                self.dispatcher.expect_hive(record.name, self._reattach_after_s())
        try:
            async with trio.open_nursery() as self._nursery:
                task_status.started()
                for record in self.records.all():
                    if record.auto_start and record.tunnel:
                        self._nursery.start_soon(self._reopen_tunnel, record.name)
                self._nursery.start_soon(self.reattach)
                self._nursery.start_soon(self._mend_tunnels)
                await trio.sleep_forever()
        finally:
            # Their hives keep running; a queen started again gives them their tunnels back.
            for tunnel in self._tunnels.values():
                await tunnel.conn.close()
            self._tunnels.clear()
            self._tunnel_at.clear()

    def deploy_events(
        self, name: str, *, upgrade: bool
    ) -> trio.MemoryReceiveChannel[PushProgress | HiveStarted | RbeeError]:
        """Start or upgrade hive ``name`` in the background; its progress, outcome or error.

        The deploy goes on when nobody reads any more (a client gone half way).
        """
        assert self._nursery is not None, "HostHives.run is not running"
        send, receive = trio.open_memory_channel[Any](float("inf"))
        percent = -1

        def progress(copied: int, total: int) -> None:
            nonlocal percent
            now = copied * 100 // max(total, 1)
            if now != percent:
                percent = now
                with contextlib.suppress(trio.BrokenResourceError):
                    send.send_nowait(PushProgress(copied=copied, total=total))

        async def deploy() -> None:
            with send:
                try:
                    outcome: HiveStarted | RbeeError = await self._deploy(
                        name, progress, upgrade=upgrade
                    )
                except RbeeError as err:
                    outcome = err
                with contextlib.suppress(trio.BrokenResourceError):
                    send.send_nowait(outcome)

        self._nursery.start_soon(deploy)
        return receive

    async def follow_logs(self, name: str, lines: int) -> AsyncIterator[list[str]]:
        """The hive's last ``lines`` log lines, then each line it writes, until closed."""
        record = self.get(name)
        async with ssh.session(record.target, self.known, hive=name) as conn:
            log_file = f"{steps.hive_dir(name)}/log"
            partial = ""
            async for chunk in conn.stream(["tail", "-n", str(lines), "-F", log_file]):
                *complete, partial = (partial + chunk).split("\n")
                if complete:
                    yield complete

    async def reattach(self) -> None:
        """Start again every hive marked to start that does not report after a queen start."""
        due = [r for r in self.records.all() if r.auto_start]
        if not due:
            return
        await trio.sleep(self._reattach_after_s())
        async with trio.open_nursery() as nursery:
            for record in due:
                online = self.dispatcher.registry.hive(record.name)
                if online is None or not online.online:
                    nursery.start_soon(self._start_quietly, record.name)

    def _reattach_after_s(self) -> float:
        # A running hive may be backing off after failing to reach the queen while it was down.
        return MAX_BACKOFF_S + REATTACH_INTERVALS * self.heartbeat_interval_s

    async def _start_quietly(self, name: str) -> None:
        try:
            await self.start(name)
        except (SshError, ApiError) as err:
            log.warning(
                "could not start a registered hive again", extra=kv(hive=name, error=str(err))
            )
