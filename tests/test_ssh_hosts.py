"""The test hosts themselves: each answers OpenSSH's own client on its address, as its own user."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.ssh_hosts import ClientKey, SshHosts


def _ssh(key: ClientKey, known_hosts: Path, target: str, *command: str) -> str:
    user_host, _, port = target.rpartition(":")
    argv = ["ssh", "-i", str(key.path), "-p", port, "-o", "BatchMode=yes"]
    argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    done = subprocess.run(
        [*argv, user_host, *command], check=False, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_hosts_each_with_their_own_network_user_and_home(
    ssh_hosts: SshHosts, client_key: ClientKey, tmp_path: Path
) -> None:
    one, two = ssh_hosts.make(), ssh_hosts.make()
    known = tmp_path / "known_hosts"
    known.write_text(one.known_hosts_line() + two.known_hosts_line())
    for host in (one, two):
        out = _ssh(client_key, known, host.target, "id -un; echo $HOME; ip -4 -o addr show")
        user, home, addresses = out.split("\n", 2)
        assert (user, home) == (host.user, str(host.home))
        assert host.address in addresses
        assert (one if host is two else two).address not in addresses
    assert one.fingerprint().startswith("SHA256:")
