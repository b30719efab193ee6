"""A hive start that cannot work is refused before anything runs, with one line saying why."""

from __future__ import annotations

import functools
from pathlib import Path

import trio

from rbee.queen.lifecycle.steps import RBEE_DIR
from tests.helpers import eventually
from tests.queen.ssh_queen import Queen, queen
from tests.ssh_hosts import ClientKey, SshHost, SshHosts


def _listening(host: SshHost, port: int) -> bool:
    out = host.in_netns("ss", "-Hltn", f"sport = :{port}").stdout
    return bool(out.strip())


async def _refusal(q: Queen, name: str, status: int = 409) -> str:
    response = await q.start(name)
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


async def test_a_changed_host_key_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    async with queen(tmp_path, pyz) as q:
        await q.add("gpu1", host, client_key)
        await q.trust("gpu1", host)
        host.new_host_key()
        message = await _refusal(q, "gpu1", 502)
        assert "has CHANGED" in message
        assert host.fingerprint() in message
        assert "'rbee hive trust gpu1'" in message
        wrong = await q.http.post("/v1/hives/gpu1/trust", json={"fingerprint": "SHA256:nope"})
        assert wrong.status_code == 409
        assert "nothing was recorded" in wrong.json()["error"]["message"]


async def test_a_wrong_identity_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    other = tmp_path / "other_key"
    made = await trio.run_process(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    assert made.returncode == 0
    async with queen(tmp_path, pyz) as q:
        await q.add("gpu1", host, client_key, identity=str(other))
        await q.trust("gpu1", host)
        message = await _refusal(q, "gpu1", 502)
        assert f"permission denied by {host.target}" in message
        assert str(other) in message


async def test_a_python_the_file_does_not_run_on_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    fake = host.home / "python3.9"
    fake.write_text("#!/bin/sh\necho 3.9\n")
    fake.chmod(0o755)
    async with queen(tmp_path, pyz) as q:
        await q.add("gpu1", host, client_key, python=str(fake))
        await q.trust("gpu1", host)
        message = await _refusal(q, "gpu1")
        assert f"--python {fake} is Python 3.9 there" in message
        assert "needs Python 3.11" in message
    assert not (host.home / RBEE_DIR / "bin").exists() or not any(
        (host.home / RBEE_DIR / "bin").iterdir()
    )


async def test_a_target_directory_that_is_not_writable_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    (host.home / RBEE_DIR).mkdir(mode=0o755)  # owned by root, not by the host's user
    async with queen(tmp_path, pyz) as q:
        await q.add("gpu1", host, client_key)
        await q.trust("gpu1", host)
        message = await _refusal(q, "gpu1")
        assert f"~/{RBEE_DIR}/bin is not writable there" in message


async def test_a_full_disk_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    ssh_hosts.mount_tmpfs(host, host.home / RBEE_DIR, "2m")
    async with queen(tmp_path, pyz) as q:
        await q.add("gpu1", host, client_key)
        await q.trust("gpu1", host)
        message = await _refusal(q, "gpu1")
        assert "not enough disk space: 2 MB free" in message


async def test_an_unknown_hive_and_a_bad_address_are_refused(pyz: Path, tmp_path: Path) -> None:
    async with queen(tmp_path, pyz) as q:
        missing = await q.start("nowhere")
        assert missing.status_code == 404
        assert "no registered hive 'nowhere'" in missing.json()["error"]["message"]
        bad = await q.http.post("/v1/hives", json={"name": "x", "ssh": "bob@;reboot"})
        assert bad.status_code == 400
        assert "invalid SSH address" in bad.json()["error"]["message"]
        local = await q.http.post("/v1/hives", json={"name": "local", "ssh": "bob@h"})
        assert local.status_code == 409


async def test_a_busy_hive_port_is_refused(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    listen = ["ip", "netns", "exec", host.netns, "/usr/bin/python3", "-c"]
    listen += [
        "import socket, time; s = socket.socket(); s.bind(('', 7835)); s.listen(); time.sleep(600)"
    ]
    async with trio.open_nursery() as nursery:
        squatter = await nursery.start(functools.partial(trio.run_process, listen, check=False))
        try:
            await eventually(lambda: _listening(host, 7835), within=10)
            async with queen(tmp_path, pyz) as q:
                await q.add("gpu1", host, client_key)
                await q.trust("gpu1", host)
                message = await _refusal(q, "gpu1")
                assert "port 7835 is in use there" in message
        finally:
            squatter.kill()
