"""A queen for tests with hives on SSH hosts: on every address, with a token, its file to push."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio

from rbee import ssh
from rbee.config import QueenConfig
from rbee.queen.daemon import run_queen
from tests.helpers import RBEE
from tests.ssh_hosts import ClientKey, SshHost

__all__ = ["TOKEN", "Queen", "queen"]

TOKEN = "test-token-for-ssh-hives"


@dataclasses.dataclass
class Queen:
    url: str
    http: httpx.AsyncClient
    known: ssh.KnownHosts

    async def add(self, name: str, host: SshHost, key: ClientKey, **extra: object) -> None:
        body = {"name": name, "ssh": host.target, "identity": str(key.path), **extra}
        response = await self.http.post("/v1/hives", json=body)
        assert response.status_code == 201, response.text

    async def trust(self, name: str, host: SshHost) -> None:
        offered = (await self.http.post(f"/v1/hives/{name}/trust", json={})).json()
        assert (offered["fingerprint"], offered["trusted"]) == (host.fingerprint(), False)
        body = {"fingerprint": offered["fingerprint"]}
        trusted = await self.http.post(f"/v1/hives/{name}/trust", json=body)
        assert trusted.json()["trusted"] is True

    async def start(self, name: str) -> httpx.Response:
        return await self.http.post(f"/v1/hives/{name}/start", timeout=300)

    async def rbee(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """``rbee ARGS`` against this queen, as its own process (the keeper as a user runs it)."""
        command = [*RBEE, "--queen", self.url, "--token", TOKEN, *args]

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=300, check=False
            )

        return await trio.to_thread.run_sync(run)


@contextlib.asynccontextmanager
async def queen(
    tmp_path: Path,
    pyz: Path,
    models: Path | None = None,
    *,
    stop_hives: bool = True,
    **config: object,
) -> AsyncIterator[Queen]:
    """A queen until the block ends; then it stops the hives it knows (unless ``stop_hives``)."""
    settings = QueenConfig(
        host="0.0.0.0",
        port=0,
        token=TOKEN,
        db=str(tmp_path / "queen.db"),
        retry_backoff_s=0.01,
        drain_grace_s=2.0,
    )
    settings = dataclasses.replace(settings, **config)  # type: ignore[arg-type]
    known = ssh.KnownHosts(
        own=tmp_path / "known_hosts",
        user=tmp_path / "no_user_known_hosts",
        ssh_config=tmp_path / "none",
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(
            lambda task_status: run_queen(
                settings,
                provision=True,
                store_dir=models,
                deploy_file=pyz,
                known_hosts=known,
                shutdown=stop.wait,
                task_status=task_status,
            )
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        base = url.replace("0.0.0.0", "127.0.0.1")
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            yield Queen(base, http, known)
            hives = (await http.get("/v1/hives")).json()["hives"] if stop_hives else []
            for hive in hives:
                with contextlib.suppress(httpx.HTTPError):
                    await http.post(f"/v1/hives/{hive['name']}/stop", timeout=60)
        stop.set()
