"""SSH hosts for tests: one network namespace, one OpenSSH server and one user per host.

Each host is a network namespace joined to this one by a veth pair on a private /30 made up for
the test (this side ``.1``, the host ``.2``), running ``/usr/sbin/sshd -D -e`` with a throwaway
host key and an ``authorized_keys`` holding the session's client key. Namespaces isolate only the
network, so each host also has its own user (``useradd``, unlocked without a password so that
sshd without PAM lets it in) whose home directory is the host's own disk. The user's shell is
``/bin/sh``: no rc files run for a remote command.

Needs root, ``ip`` and Debian's ``openssh-server``; without them the tests that use these
fixtures are skipped with the reason. Everything made is removed afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

__all__ = ["ClientKey", "SshHost", "SshHosts", "client_key", "make_client_key", "ssh_hosts"]

SSHD = "/usr/sbin/sshd"
SSHD_READY_S = 10.0

SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
Subsystem sftp internal-sftp
MaxSessions 64
MaxStartups 64:30:128
LogLevel VERBOSE
{extra}"""


def _run(*argv: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    if netns is not None:
        argv = ("ip", "netns", "exec", netns, *argv)
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def _quiet(*argv: str) -> None:
    subprocess.run(argv, check=False, capture_output=True)


def _missing() -> str | None:
    """Why these hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "SSH host tests need root (network namespaces, sshd, useradd); CI runs as root"
    for tool in (SSHD, "ip", "ssh-keygen", "useradd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install openssh-server iproute2)"
    return None


@dataclasses.dataclass(frozen=True)
class ClientKey:
    """The session's client key pair: ``path`` is the private key, ``public`` its line."""

    path: Path
    public: str


@dataclasses.dataclass
class SshHost:
    """One test host. ``gateway`` is this machine's address as the host sees it."""

    name: str
    netns: str
    address: str
    gateway: str
    port: int
    user: str
    home: Path
    host_key: Path
    dir: Path
    veth: str
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """``USER@HOST:PORT`` as ``rbee hive add --ssh`` takes it."""
        return f"{self.user}@{self.address}:{self.port}"

    def host_public_key(self) -> str:
        return self.host_key.with_suffix(".pub").read_text().split(maxsplit=2)[1]

    def known_hosts_line(self) -> str:
        """This host's key as a line of an OpenSSH ``known_hosts`` file."""
        key_type, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {key_type} {key}\n"

    def fingerprint(self) -> str:
        """The host key's ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` prints it."""
        out = _run("ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key)).stdout
        return out.split()[1]

    def new_host_key(self) -> None:
        """Give the host a new host key and restart its sshd (a changed host key)."""
        self.stop_sshd()
        self.host_key.unlink()
        self.host_key.with_suffix(".pub").unlink()
        _keygen(self.host_key)
        self.start_sshd()

    def start_sshd(self) -> None:
        log = (self.dir / "sshd.log").open("ab")
        self.sshd = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, SSHD, "-D", "-e", "-f", str(self.dir / "sshd")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + SSHD_READY_S
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, self.port), 1),
            ):
                return
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {self.name} did not start: {self.sshd_log()}")
            time.sleep(0.01)

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(5)
        self.sshd = None

    def sshd_log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the host's network namespace (as root)."""
        return _run(*argv, netns=self.netns)

    def only_ssh(self) -> None:
        """A firewall on the host: only SSH comes in, and nothing new goes out but on loopback."""
        rules = [
            ["add", "table", "inet", "fw"],
            ["add", "chain", "inet", "fw", "input", "{", "type", "filter", "hook", "input",
             "priority", "0", ";", "policy", "drop", ";", "}"],
            ["add", "rule", "inet", "fw", "input", "iif", "lo", "accept"],
            ["add", "rule", "inet", "fw", "input", "ct", "state", "established,related", "accept"],
            ["add", "rule", "inet", "fw", "input", "tcp", "dport", str(self.port), "accept"],
            ["add", "chain", "inet", "fw", "output", "{", "type", "filter", "hook", "output",
             "priority", "0", ";", "policy", "drop", ";", "}"],
            ["add", "rule", "inet", "fw", "output", "oif", "lo", "accept"],
            ["add", "rule", "inet", "fw", "output", "ct", "state", "established,related", "accept"],
        ]  # fmt: skip
        for rule in rules:
            self.in_netns("nft", *rule)

    def can_reach(self, address: str, port: int) -> bool:
        """Whether a TCP connection from the host to ``address:port`` opens (within 2 s)."""
        probe = f"import socket; socket.create_connection(({address!r}, {port}), 2)"
        argv = ["ip", "netns", "exec", self.netns, "/usr/bin/python3", "-c", probe]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def ssh_sessions(self) -> set[int]:
        """The pids of sshd's processes serving the host's user: one per SSH connection."""
        return {
            proc.pid
            for proc in psutil.process_iter(["username", "name"])
            if proc.info["username"] == self.user and proc.info["name"] == "sshd"
        }

    def drop_ssh_sessions(self) -> set[int]:
        """End every SSH connection to the host (its sshd keeps listening): a dropped link.

        Returns the pids of the sessions it ended.
        """
        ended = self.ssh_sessions()
        for pid in ended:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        return ended

    def link(self, up: bool) -> None:
        """Take the host's link down or bring it back up."""
        _run("ip", "link", "set", self.veth, "up" if up else "down")


def _kill_processes_of(user: str) -> None:
    """Kill what a test left running as a host's user (a hive it started), pid by pid."""
    for proc in psutil.process_iter(["username"]):
        if proc.info["username"] == user:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _keygen(path: Path) -> None:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path))


def make_client_key(directory: Path) -> ClientKey:
    """A new client key pair in ``directory``; `RuntimeError` when hosts cannot be made here."""
    reason = _missing()
    if reason is not None:
        raise RuntimeError(reason)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "id_ed25519"
    _keygen(path)
    return ClientKey(path, path.with_suffix(".pub").read_text().strip())


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """A throwaway client key pair that every test host accepts."""
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    return make_client_key(tmp_path_factory.mktemp("ssh-client"))


def _free_subnet() -> int:
    """A third octet for 10.213.X.0/24 that no interface here uses yet."""
    used = _run("ip", "-4", "-o", "addr").stdout
    for _ in range(100):
        octet = secrets.randbelow(250) + 1
        if f"10.213.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.213.X.0/24 for test hosts")


class SshHosts:
    """Makes test hosts (`make`) and removes them all (`close`).

    ``pyz_root``: where the hosts' users unpack a pushed ``rbee.pyz`` (its ``RBEE_PYZ_ROOT``), set
    for every SSH session; one directory shared by hosts made one after the other unpacks each
    file once. None: each user unpacks it in its own home, as separate machines would.
    """

    def __init__(self, key: ClientKey, pyz_root: Path | None = None) -> None:
        self.key = key
        self.pyz_root = pyz_root
        self.root = Path(tempfile.mkdtemp(prefix="rbee-ssh-hosts-"))
        self.root.chmod(0o755)
        self.octet = _free_subnet()
        self.tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.hosts: list[SshHost] = []
        self.users: list[str] = []

    def make(self) -> SshHost:
        i = len(self.hosts)
        name = f"h{i}"
        host = SshHost(
            name=name,
            netns=f"rbt{self.tag}{name}",
            address=f"10.213.{self.octet}.{4 * i + 2}",
            gateway=f"10.213.{self.octet}.{4 * i + 1}",
            port=22,
            user=f"rbt{self.tag}{name}",
            home=self.root / name / "home",
            host_key=self.root / name / "ssh_host_ed25519_key",
            dir=self.root / name,
            veth=f"rv{self.tag}{name}"[:15],
        )
        self.hosts.append(host)
        host.home.mkdir(parents=True)
        _keygen(host.host_key)
        (host.dir / "authorized_keys").write_text(self.key.public + "\n")
        self._user(host)
        self._network(host)
        (host.dir / "sshd").write_text(
            SSHD_CONFIG.format(
                port=host.port,
                address=host.address,
                host_key=host.host_key,
                authorized_keys=host.dir / "authorized_keys",
                user=host.user,
                extra=f"SetEnv RBEE_PYZ_ROOT={self.pyz_root}\n" if self.pyz_root else "",
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host.start_sshd()
        return host

    def _user(self, host: SshHost) -> None:
        _run(
            "useradd",
            "--no-create-home",
            "--home-dir",
            str(host.home),
            "--shell",
            "/bin/sh",
            host.user,
        )
        self.users.append(host.user)
        # useradd locks the account ('!'), which sshd without PAM refuses even for a key.
        _run("usermod", "-p", "*", host.user)
        shutil.chown(host.home, host.user, host.user)

    def _network(self, host: SshHost) -> None:
        peer = f"rp{self.tag}{host.name}"[:15]
        _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", host.netns)
        _run("ip", "addr", "add", f"{host.gateway}/30", "dev", host.veth)
        _run("ip", "link", "set", host.veth, "up")
        _run("ip", "addr", "add", f"{host.address}/30", "dev", peer, netns=host.netns)
        _run("ip", "link", "set", peer, "up", netns=host.netns)
        _run("ip", "link", "set", "lo", "up", netns=host.netns)

    def mount_tmpfs(self, host: SshHost, path: Path, size: str) -> None:
        """A small tmpfs at ``path`` (a full disk) owned by the host's user, as its sshd sees it.

        ``ip netns exec`` gives sshd a mount namespace of its own, which mounts made here do not
        reach; the tmpfs goes away with that namespace.
        """
        assert host.sshd is not None
        path.mkdir(parents=True, exist_ok=True)
        enter = ("nsenter", "--target", str(host.sshd.pid), "--mount")
        _run(*enter, "mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
        _run(*enter, "chown", f"{host.user}:{host.user}", str(path))

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop_sshd()
            _kill_processes_of(host.user)
            _quiet("ip", "netns", "del", host.netns)
            _quiet("ip", "link", "del", host.veth)
        for user in self.users:
            _quiet("userdel", user)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_pyz_root() -> Iterator[Path]:
    """One directory where every test host unpacks pushed files (world-writable, sticky)."""
    path = Path(tempfile.mkdtemp(prefix="rbee-ssh-pyz-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ssh_hosts(client_key: ClientKey, shared_pyz_root: Path) -> Iterator[SshHosts]:
    """A factory: ``ssh_hosts.make()`` adds one host; all of them go when the test ends.

    The hosts share one shiv root, so a file is unpacked once per test session.
    """
    hosts = SshHosts(client_key, shared_pyz_root)
    try:
        yield hosts
    finally:
        hosts.close()
