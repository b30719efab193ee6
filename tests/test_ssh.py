"""rbee.ssh against real OpenSSH servers: host keys checked, argv quoted, files, cancellation."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import trio

from rbee import ssh
from rbee.errors import SshError, UsageError
from tests.helpers import eventually
from tests.ssh_hosts import ClientKey, SshHost, SshHosts


def _known(tmp_path: Path) -> ssh.KnownHosts:
    return ssh.KnownHosts(
        own=tmp_path / "rbee_known_hosts",
        user=tmp_path / "user_known_hosts",
        ssh_config=tmp_path / "no_ssh_config",
    )


def _target(host: SshHost, key: ClientKey) -> ssh.Target:
    return ssh.parse_target(host.target, identity=str(key.path))


async def _trusted(host: SshHost, key: ClientKey, known: ssh.KnownHosts) -> ssh.Target:
    target = _target(host, key)
    offered = await ssh.fetch_host_key(target, known)
    assert offered.fingerprint == host.fingerprint()
    known.record(offered.host, offered.port, offered)
    return target


@dataclasses.dataclass
class Trusted:
    """A host whose key rbee trusts, and how to reach it."""

    host: SshHost
    known: ssh.KnownHosts
    target: ssh.Target


@pytest.fixture
async def trusted(ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path) -> Trusted:
    host = ssh_hosts.make()
    known = _known(tmp_path)
    return Trusted(host, known, await _trusted(host, client_key, known))


def test_parse_target() -> None:
    assert ssh.parse_target("bob@gpu1:2222") == ssh.Target("gpu1", "bob", 2222)
    assert ssh.parse_target("gpu1") == ssh.Target("gpu1")
    assert ssh.parse_target("[fe80::1]:22") == ssh.Target("fe80::1", "", 22)
    for bad in ("bob@", "a b", "gpu1:99999", "x;rm -rf /", "-oProxyCommand=x"):
        with pytest.raises(UsageError, match="invalid SSH"):
            ssh.parse_target(bad)


async def test_run_quotes_every_argument_and_feeds_stdin(trusted: Trusted) -> None:
    host, known, target = trusted.host, trusted.known, trusted.target
    tricky = ["a b", "$HOME", "'; touch pwned; '", "`id`", "*", ""]
    async with ssh.session(target, known, hive="h") as conn:
        done = await conn.run(["printf", "%s|", *tricky])
        assert (done.exit_status, done.stdout) == (0, "".join(f"{a}|" for a in tricky))
        assert not (host.home / "pwned").exists()
        fed = await conn.run(["cat"], stdin="the token\n")
        assert fed.stdout == "the token\n"
        failed = await conn.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert (failed.exit_status, failed.stderr) == (3, "oops\n")
        assert conn.local_address == host.gateway
        assert conn.peer_address == host.address


async def test_put_and_get_file_with_progress(trusted: Trusted, tmp_path: Path) -> None:
    host, known, target = trusted.host, trusted.known, trusted.target
    payload = bytes(range(256)) * 8192
    (tmp_path / "file").write_bytes(payload)
    seen: list[tuple[int, int]] = []
    async with ssh.session(target, known, hive="h") as conn:
        await conn.put_file(tmp_path / "file", "copied", lambda n, total: seen.append((n, total)))
        assert (host.home / "copied").read_bytes() == payload
        assert seen[-1] == (len(payload), len(payload))
        await conn.get_file("copied", tmp_path / "back")
    assert (
        hashlib.sha256((tmp_path / "back").read_bytes()).digest()
        == hashlib.sha256(payload).digest()
    )


async def test_a_cancelled_command_is_stopped_and_the_connection_stays_usable(
    trusted: Trusted,
) -> None:
    known, target = trusted.known, trusted.target
    async with ssh.session(target, known, hive="h") as conn:
        with trio.move_on_after(0.2) as scope:
            await conn.run(["sleep", "60"])
        assert scope.cancelled_caught
        assert (await conn.run(["echo", "still here"])).stdout == "still here\n"


async def test_a_key_in_the_users_known_hosts_is_trusted_as_it_is(
    ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    known = _known(tmp_path)
    known.user.write_text(host.known_hosts_line())
    async with ssh.session(_target(host, client_key), known, hive="h") as conn:
        assert (await conn.run(["id", "-un"])).stdout.strip() == host.user


async def test_an_unknown_host_key_is_refused_with_its_fingerprint_and_the_trust_command(
    ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    with pytest.raises(SshError) as err:
        await ssh.connect(_target(host, client_key), _known(tmp_path), hive="gpu1")
    message = str(err.value)
    assert "is not known" in message
    assert host.fingerprint() in message
    assert "'rbee hive trust gpu1'" in message


async def test_a_changed_host_key_is_refused(trusted: Trusted) -> None:
    host, known, target = trusted.host, trusted.known, trusted.target
    host.new_host_key()
    with pytest.raises(SshError, match="has CHANGED") as err:
        await ssh.connect(target, known, hive="gpu1")
    assert host.fingerprint() in str(err.value)
    assert "'rbee hive trust gpu1'" in str(err.value)


async def test_a_wrong_identity_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    known = _known(tmp_path)
    await _trusted(host, client_key, known)
    other = tmp_path / "other_key"
    trio_run = await trio.run_process(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], capture_stdout=True
    )
    assert trio_run.returncode == 0
    target = ssh.parse_target(host.target, identity=str(other))
    with pytest.raises(SshError, match=r"permission denied by .*identity file"):
        await ssh.connect(target, known, hive="gpu1")


async def test_a_refused_connection_says_so(
    ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    target = ssh.parse_target(f"{host.user}@{host.address}:2222", identity=str(client_key.path))
    with pytest.raises(SshError, match="refused: is sshd running there"):
        await ssh.connect(target, _known(tmp_path), hive="gpu1")


async def test_stream_yields_output_as_it_comes_and_closing_stops_the_command(
    trusted: Trusted,
) -> None:
    host, known, target = trusted.host, trusted.known, trusted.target
    async with ssh.session(target, known, hive="h") as conn:
        script = "echo first; echo oops >&2; exec sleep 60"
        chunks = conn.stream(["sh", "-c", script])
        seen = ""
        async for chunk in chunks:
            seen += chunk
            if "oops" in seen:
                break
        await chunks.aclose()  # type: ignore[attr-defined]
        assert seen == "first\noops\n"

        async def stopped() -> bool:
            found = await conn.run(["pgrep", "-u", host.user, "-x", "sleep"])
            return found.exit_status != 0

        await eventually(stopped, 10, "the remote command ends")


async def test_a_host_that_drops_ssh_times_out_with_a_hint(trusted: Trusted) -> None:
    host, known, target = trusted.host, trusted.known, trusted.target
    host.in_netns("nft", "add", "table", "inet", "drop22")
    chain = ["{", "type", "filter", "hook", "input", "priority", "0", ";", "}"]
    host.in_netns("nft", "add", "chain", "inet", "drop22", "input", *chain)
    host.in_netns("nft", "add", "rule", "inet", "drop22", "input", "tcp", "dport", "22", "drop")
    with pytest.raises(SshError, match=r"timed out connecting to .*: check the address"):
        await ssh.connect(target, known, hive="gpu1")


async def test_an_alias_resolves_as_ssh_config_says(
    ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host gpu-box\n  HostName {host.address}\n  User {host.user}\n  Port {host.port}\n"
        f"  IdentityFile {client_key.path}\n"
    )
    known = dataclasses.replace(_known(tmp_path), ssh_config=config)
    target = ssh.parse_target("gpu-box")
    offered = await ssh.fetch_host_key(target, known)
    assert (offered.host, offered.port, offered.fingerprint) == (
        host.address,
        host.port,
        host.fingerprint(),
    )
    known.record(offered.host, offered.port, offered)
    async with ssh.session(target, known, hive="gpu-box") as conn:
        assert (await conn.run(["id", "-un"])).stdout.strip() == host.user
