"""Hives on other hosts, end to end: the queen pushes rbee.pyz over SSH to namespace hosts.

Each host is a network namespace with its own sshd and user (`tests.ssh_hosts`); the queen runs
in the test's trio loop on every address with a token, as it must for hives on other hosts. The
hosts run the pushed file with Debian's own python3.11.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import httpx
import psutil
import pytest
import trio

from rbee import sse
from rbee.hive.queen_link import MAX_BACKOFF_S
from rbee.models.importer import DEFAULT_MODEL
from rbee.queen.keys import SECRET_FILE, hive_token
from rbee.queen.lifecycle.steps import RBEE_DIR, sha256_of
from rbee.queen.registry import STALE_INTERVALS
from tests.helpers import eventually, gone
from tests.queen.conftest import read_stream
from tests.queen.ssh_queen import TOKEN, Queen, queen
from tests.ssh_hosts import ClientKey, SshHost, SshHosts

pytestmark = pytest.mark.slow


async def _first_bytes(q: Queen, target: str, until: bytes) -> bytes:
    """What a GET answers until ``until`` arrives; then the connection is closed (a client
    that goes away in the middle of a stream).
    """
    host, port = q.url.removeprefix("http://").split(":")
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", host), ("Authorization", f"Bearer {TOKEN}")]
    async with await trio.open_tcp_stream(host, int(port)) as sock:
        request = h11.Request(method="GET", target=target, headers=headers)
        await sock.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        received = b""
        with trio.fail_after(30):
            while until not in received:
                received += await sock.receive_some(4096)
    return received


def _size(path: Path) -> int:
    return path.stat().st_size


async def _events(http: httpx.AsyncClient, path: str, body: object = None) -> list[str]:
    """The payloads of the event stream a POST answers."""
    headers = {"Accept": "text/event-stream"}
    async with http.stream("POST", path, json=body, headers=headers, timeout=300) as r:
        assert r.status_code == 200, await r.aread()
        return [p async for p in sse.data_lines(r.aiter_lines())]


async def _pull(http: httpx.AsyncClient, hive: str, model: str) -> list[str]:
    return await _events(http, f"/v1/hives/{hive}/models/pull", {"model": model})


async def test_two_hosts_started_over_ssh_a_remote_worker_answers(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, model_store: Path, tmp_path: Path
) -> None:
    one, two = ssh_hosts.make(), ssh_hosts.make()
    async with queen(tmp_path, pyz, model_store) as q:
        await q.add("gpu1", one, client_key, labels={"zone": "attic"})
        await q.add("gpu2", two, client_key)

        refused = await q.start("gpu1")
        assert refused.status_code == 502
        message = refused.json()["error"]["message"]
        assert one.fingerprint() in message
        assert "'rbee hive trust gpu1'" in message

        await q.trust("gpu1", one)
        first = await q.start("gpu1")
        assert first.status_code == 200, first.text
        assert (first.json()["changed"], first.json()["pushed"]) == (True, True)
        assert first.json()["python"] == "/usr/bin/python3.11"
        await q.trust("gpu2", two)
        events = await _events(q.http, "/v1/hives/gpu2/start")
        assert events[-1] == "[DONE]"
        started = json.loads(events[-2])
        assert (started["type"], started["pushed"]) == ("started", True)
        progress = [json.loads(e) for e in events[:-2]]
        assert {p["type"] for p in progress} == {"progress"}
        assert progress[-1]["copied"] == progress[-1]["total"] == _size(pyz)
        pushed = list((one.home / RBEE_DIR / "bin").glob("rbee-*.pyz"))
        assert len(pushed) == 1
        assert pushed[0].name == f"rbee-{sha256_of(pyz)}.pyz"

        again = await q.start("gpu1")
        assert again.status_code == 200, again.text
        assert (again.json()["changed"], again.json()["pushed"]) == (False, False)
        assert "nothing changed" in again.json()["message"]

        hives = {h["name"]: h for h in (await q.http.get("/v1/hives")).json()["hives"]}
        assert hives["gpu1"]["status"] == hives["gpu2"]["status"] == "online"
        assert hives["gpu1"]["url"] == f"http://{one.address}:7835"
        assert hives["gpu1"]["labels"] == {"zone": "attic"}
        # Each hive gets a token of its own, which speaks only for it.
        token_file = one.home / RBEE_DIR / "hives" / "gpu1" / "token"
        secret = (tmp_path / SECRET_FILE).read_text().strip()
        assert _token(one, "gpu1") == hive_token(secret, "gpu1")
        assert token_file.stat().st_mode & 0o777 == 0o600

        logs = (await q.http.get("/v1/hives/gpu1/logs", params={"lines": 50})).json()["lines"]
        assert any(line.startswith("rbee hive listening on") for line in logs)
        followed = await _first_bytes(q, "/v1/hives/gpu2/logs?lines=50&follow=1", b"listening")
        assert b"rbee hive listening on" in followed

        pulled = await _pull(q.http, "gpu1", DEFAULT_MODEL)
        assert pulled[-1] == "[DONE]", pulled[-3:]
        spawn = {"hive": "gpu1", "model": DEFAULT_MODEL, "wait": True}
        spawned = await q.http.post("/v1/workers", json=spawn, timeout=300)
        assert spawned.status_code == 201, spawned.text

        answered = await q.rbee(
            "infer", "-m", DEFAULT_MODEL, "-p", "What is the capital of France?",
            "--max-tokens", "8", "--temperature", "0",
        )  # fmt: skip
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip()
        job = (await q.http.get("/v1/jobs", params={"limit": 1})).json()["jobs"][0]
        assert job["state"] == "completed"
        workers = (await q.http.get("/v1/workers")).json()["workers"]
        assert {w["worker"]["id"]: w["hive"] for w in workers}[job["worker"]] == "gpu1"

        hive_pid = _pid(one, "gpu1")
        stopped = (await q.http.post("/v1/hives/gpu1/stop", timeout=60)).json()
        # Through its API: the hive retired its worker and exited, with no SSH involved.
        assert (stopped["was_running"], stopped["message"]) == (True, "hive gpu1 stopped")
        await eventually(lambda: gone(hive_pid), 10, "the hive exited")
        hives = {h["name"]: h for h in (await q.http.get("/v1/hives")).json()["hives"]}
        assert hives["gpu1"]["status"] == "offline"

        # A hive whose API refuses the queen is stopped by its pid over SSH.
        refuse = ["add", "rule", "inet", "fw", "input", "tcp", "dport", "7835", "reject"]
        two.in_netns("nft", "add", "table", "inet", "fw")
        two.in_netns("nft", "add", "chain", "inet", "fw", "input", "{", "type", "filter",
                     "hook", "input", "priority", "0", ";", "}")  # fmt: skip
        two.in_netns("nft", *refuse, "with", "tcp", "reset")
        hive_pid = _pid(two, "gpu2")
        stopped = (await q.http.post("/v1/hives/gpu2/stop", timeout=60)).json()
        assert stopped["was_running"] is True
        assert stopped["message"].startswith("hive gpu2 stopped over SSH (its API did not take")
        await eventually(lambda: gone(hive_pid), 10, "the hive exited")
        assert not (two.home / RBEE_DIR / "hives" / "gpu2" / "pid").exists()


async def _status(q: Queen, name: str) -> str:
    hives = {h["name"]: h for h in (await q.http.get("/v1/hives")).json()["hives"]}
    return str(hives[name]["status"]) if name in hives else "unknown"


async def _until_status(q: Queen, name: str, want: str, within: float) -> float:
    """Wait until hive ``name`` is ``want``; return how long that took."""
    began = trio.current_time()
    await eventually(_is(q, name, want), within, f"hive {name} {want}")
    return trio.current_time() - began


def _is(q: Queen, name: str, want: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _status(q, name) == want

    return check


def _pid(host: SshHost, hive: str) -> int:
    return int((host.home / RBEE_DIR / "hives" / hive / "pid").read_text())


async def test_hives_outlive_a_queen_restart_and_a_link_that_goes_down(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    one, two = ssh_hosts.make(), ssh_hosts.make()
    interval = 1.0
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    settings = {"port": port, "heartbeat_interval_s": interval}
    async with queen(tmp_path, pyz, stop_hives=False, **settings) as first:
        for name, host in (("gpu1", one), ("gpu2", two)):
            await first.add(name, host, client_key)
            await first.trust(name, host)
            assert (await first.start(name)).status_code == 200
    running, killed = _pid(one, "gpu1"), _pid(two, "gpu2")
    os.kill(killed, signal.SIGKILL)

    async with queen(tmp_path, pyz, **settings) as second:
        await _until_status(second, "gpu1", "online", MAX_BACKOFF_S + 5)
        assert _pid(one, "gpu1") == running
        await _until_status(second, "gpu2", "online", MAX_BACKOFF_S + 60)
        assert _pid(two, "gpu2") != killed

        one.link(up=False)
        took = await _until_status(second, "gpu1", "offline", 10 * interval)
        assert took <= (STALE_INTERVALS + 2) * interval
        one.link(up=True)
        await _until_status(second, "gpu1", "online", MAX_BACKOFF_S + 5)
        assert _pid(one, "gpu1") == running


def _rebuilt(path: Path, comment: bytes) -> None:
    """The same archive with another zip comment: another file, another sha256."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.comment = comment


def _broken(path: Path) -> None:
    """A zipapp that fails at once, as a bad build would."""
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__main__.py", "import sys\nsys.exit('broken build')\n")


def _token(host: SshHost, hive: str) -> str:
    return (host.home / RBEE_DIR / "hives" / hive / "token").read_text()


def _running_file(host: SshHost, hive: str) -> str:
    return (host.home / RBEE_DIR / "hives" / hive / "file").read_text().strip()


async def test_upgrade_to_a_changed_file_and_back_when_the_new_one_fails(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    current = tmp_path / "rbee.pyz"
    shutil.copy(pyz, current)
    async with queen(tmp_path, current) as q:
        await q.add("gpu1", host, client_key)
        await q.trust("gpu1", host)
        assert (await q.start("gpu1")).status_code == 200
        first_file, first_pid = _running_file(host, "gpu1"), _pid(host, "gpu1")
        first_token = _token(host, "gpu1")
        secret = (tmp_path / SECRET_FILE).read_text().strip()
        assert first_token == hive_token(secret, "gpu1")

        _rebuilt(current, b"rebuilt")
        up = await q.http.post("/v1/hives/gpu1/upgrade", timeout=300)
        assert up.status_code == 200, up.text
        assert (up.json()["changed"], up.json()["pushed"]) == (True, True)
        assert f"upgraded from {first_file}" in up.json()["message"]
        second_file = _running_file(host, "gpu1")
        assert second_file != first_file
        assert _pid(host, "gpu1") != first_pid
        assert await _status(q, "gpu1") == "online"
        # The new hive holds a new token; the old one opens neither the queen nor the hive.
        second_token = _token(host, "gpu1")
        assert second_token == hive_token(secret, "gpu1", 1)
        hive_url = next(h["url"] for h in (await q.http.get("/v1/hives")).json()["hives"])
        async with httpx.AsyncClient(timeout=30) as http:
            old = {"Authorization": f"Bearer {first_token}"}
            beat = await http.post(f"{q.url}/v1/heartbeat", content=b"{}", headers=old)
            assert beat.status_code == 401
            assert "replaced by a newer one at an upgrade" in beat.json()["error"]["message"]
            assert (await http.get(f"{hive_url}/v1/workers", headers=old)).status_code == 401
            new = {"Authorization": f"Bearer {second_token}"}
            assert (await http.get(f"{hive_url}/v1/workers", headers=new)).status_code == 200

        _broken(current)
        failed = await q.http.post("/v1/hives/gpu1/upgrade", timeout=300)
        assert failed.status_code == 502, failed.text
        message = failed.json()["error"]["message"]
        assert f"runs the previous one ({second_file}) again" in message
        assert "broken build" in message
        assert _running_file(host, "gpu1") == second_file
        assert await _status(q, "gpu1") == "online"
        # The previous file came back with the generation the failed upgrade started.
        assert _token(host, "gpu1") == hive_token(secret, "gpu1", 2)
        kept = sorted(p.name for p in (host.home / RBEE_DIR / "bin").glob("rbee-*.pyz"))
        assert Path(second_file).name in kept
        assert len(kept) == 2


async def test_a_tunnelled_host_that_lets_only_ssh_in_answers_a_prompt(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, model_store: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    host.only_ssh()
    async with queen(tmp_path, pyz, model_store, heartbeat_interval_s=0.5) as q:
        queen_port = int(q.url.rsplit(":", 1)[1])
        assert not await trio.to_thread.run_sync(host.can_reach, host.gateway, queen_port)
        await q.add("far", host, client_key, tunnel=True)
        await q.trust("far", host)
        started = await q.start("far")
        assert started.status_code == 200, started.text
        hives = {h["name"]: h for h in (await q.http.get("/v1/hives")).json()["hives"]}
        assert hives["far"]["status"] == "online"
        assert hives["far"]["url"].startswith("http://127.77.")

        pulled = await _pull(q.http, "far", DEFAULT_MODEL)
        assert pulled[-1] == "[DONE]", pulled[-3:]
        spawn = {"hive": "far", "model": DEFAULT_MODEL, "wait": True}
        spawned = await q.http.post("/v1/workers", json=spawn, timeout=300)
        assert spawned.status_code == 201, spawned.text
        answered = await q.rbee(
            "infer", "-m", DEFAULT_MODEL, "-p", "Hello", "--max-tokens", "8", "--temperature", "0"
        )
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip()
        job = (await q.http.get("/v1/jobs", params={"limit": 1})).json()["jobs"][0]
        assert job["state"] == "completed"

        hive_pid = _pid(host, "far")
        ended = host.drop_ssh_sessions()
        assert ended
        await eventually(lambda: bool(host.ssh_sessions() - ended), 30, "the tunnel is back")
        back_at = trio.current_time()

        async def reported_since_the_tunnel_came_back() -> bool:
            # "online" alone may still be the status from before the drop.
            hives = {h["name"]: h for h in (await q.http.get("/v1/hives")).json()["hives"]}
            far = hives["far"]
            return bool(
                far["status"] == "online" and far["last_seen_s"] < trio.current_time() - back_at
            )

        await eventually(
            reported_since_the_tunnel_came_back, MAX_BACKOFF_S + 30, "the hive reports again"
        )
        assert _pid(host, "far") == hive_pid
        again = await q.rbee("infer", "-m", DEFAULT_MODEL, "-p", "Hi", "--max-tokens", "4")
        assert again.returncode == 0, again.stderr

        stopped = (await q.http.post("/v1/hives/far/stop", timeout=60)).json()
        assert stopped["was_running"] is True


PROMPT = "Once upon a time, in a small village by the sea,"


def _greedy(tokens: int) -> dict[str, object]:
    """A greedy job of up to ``tokens`` tokens on `PROMPT`."""
    return {
        "operation": "infer",
        "model": DEFAULT_MODEL,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
    }


async def _stream_job(
    q: Queen, tokens: int, cut: Callable[[str], Awaitable[None]] | None = None, after: int = 4
) -> tuple[str, dict[str, Any]]:
    """Run one greedy job through the queen: its terminal marker and its record at the end.

    ``cut(job_id)`` is awaited once, after ``after`` tokens arrived.
    """
    headers = {"Accept": "text/event-stream"}
    end, seen = "", 0
    body = _greedy(tokens)
    async with q.http.stream("POST", "/v1/jobs", json=body, headers=headers, timeout=300) as r:
        assert r.status_code == 200, await r.aread()
        job_id = r.headers["rbee-job-id"]
        async for data in sse.data_lines(r.aiter_lines()):
            if data.startswith("["):
                end = data
            elif json.loads(data)["type"] == "token":
                seen += 1
                if seen == after and cut is not None:
                    await cut(job_id)
    record: dict[str, Any] = (await q.http.get(f"/v1/jobs/{job_id}")).json()
    return end, record


async def _start_with_worker(q: Queen, name: str, host: SshHost, key: ClientKey) -> str:
    """Add, trust and start hive ``name`` with a worker of the default model; its id."""
    await _start_hive(q, name, host, key)
    return await _spawn_worker(q, name)


async def _start_hive(q: Queen, name: str, host: SshHost, key: ClientKey) -> None:
    await q.add(name, host, key)
    await q.trust(name, host)
    started = await q.start(name)
    assert started.status_code == 200, started.text


async def _spawn_worker(q: Queen, name: str) -> str:
    """Pull the default model to hive ``name`` and start a worker of it there; its id."""
    pulled = await _pull(q.http, name, DEFAULT_MODEL)
    assert pulled[-1] == "[DONE]", pulled[-3:]
    spawn = {"hive": name, "model": DEFAULT_MODEL, "wait": True}
    spawned = await q.http.post("/v1/workers", json=spawn, timeout=300)
    assert spawned.status_code == 201, spawned.text
    return str(spawned.json()["id"])


async def _hive_of(q: Queen, worker_id: str) -> str:
    workers = (await q.http.get("/v1/workers")).json()["workers"]
    return str({w["worker"]["id"]: w["hive"] for w in workers}[worker_id])


async def test_the_job_of_a_host_whose_link_goes_down_is_answered_by_another_hive(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, model_store: Path, tmp_path: Path
) -> None:
    hosts = {"gpu1": ssh_hosts.make(), "gpu2": ssh_hosts.make()}
    interval = 0.5
    # A stream silent for 1 s counts as stalled (or 10 of its steps, if longer).
    async with queen(
        tmp_path,
        pyz,
        model_store,
        heartbeat_interval_s=interval,
        stall_floor_s=1.0,
        stall_steps=10,
        max_attempts=3,
    ) as q:
        workers = {
            name: await _start_with_worker(q, name, host, client_key)
            for name, host in hosts.items()
        }
        down: list[str] = []

        async def take_its_link_down(job_id: str) -> None:
            job = (await q.http.get(f"/v1/jobs/{job_id}")).json()
            down.append(await _hive_of(q, job["worker"]))
            hosts[down[0]].link(up=False)

        end, record = await _stream_job(q, 40, take_its_link_down)
        assert end == "[DONE]"
        (lost,) = down
        other = "gpu2" if lost == "gpu1" else "gpu1"
        assert (record["state"], record["worker"]) == ("completed", workers[other])
        assert record["attempts"] == 2
        assert record["attempt_log"][0]["worker"] == workers[lost]
        assert record["tokens_out"] == 40
        await _until_status(q, lost, "offline", 10 * interval)

        hosts[lost].link(up=True)
        await _until_status(q, lost, "online", MAX_BACKOFF_S + 5)


async def test_after_a_queen_restart_a_running_tunnelled_hive_gets_its_tunnel_back(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, tmp_path: Path
) -> None:
    host = ssh_hosts.make()
    host.only_ssh()
    async with queen(tmp_path, pyz, stop_hives=False, heartbeat_interval_s=0.5) as first:
        await first.add("far", host, client_key, tunnel=True)
        await first.trust("far", host)
        started = await first.start("far")
        assert started.status_code == 200, started.text
    running = _pid(host, "far")

    async with queen(tmp_path, pyz, heartbeat_interval_s=0.5) as second:
        await _until_status(second, "far", "online", MAX_BACKOFF_S + 30)
        assert _pid(host, "far") == running
        # The queen reaches the hive's API through the tunnel again.
        models = await second.http.get("/v1/hives/far/models")
        assert models.status_code == 200, models.text
        again = await second.start("far")
        assert "nothing changed" in again.json()["message"]
        stopped = (await second.http.post("/v1/hives/far/stop", timeout=60)).json()
        assert (stopped["was_running"], stopped["message"]) == (True, "hive far stopped")
        await eventually(lambda: gone(running), 10, "the hive exited")


async def _worker_process(q: Queen, worker_id: str, host: SshHost) -> psutil.Process:
    workers = (await q.http.get("/v1/workers")).json()["workers"]
    process = psutil.Process({w["worker"]["id"]: w["worker"]["pid"] for w in workers}[worker_id])
    # Hosts share this machine's pids: it must be that host's worker, not a process of ours.
    assert process.username() == host.user
    return process


def _draining(q: Queen, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        hives = {h["name"]: h for h in (await q.http.get("/v1/hives")).json()["hives"]}
        return bool(hives[name]["draining"])

    return check


async def _submit(q: Queen, tokens: int) -> str:
    """Send one greedy job (not streamed); its id."""
    accepted = await q.http.post("/v1/jobs", json=_greedy(tokens))
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["job_id"])


async def _job(q: Queen, job_id: str) -> dict[str, Any]:
    record: dict[str, Any] = (await q.http.get(f"/v1/jobs/{job_id}")).json()
    return record


async def _drain_during_a_stream(
    q: Queen,
    hosts: dict[str, SshHost],
    meanwhile: Callable[[str], Awaitable[None]],
    verb: str = "upgrade",
) -> tuple[str, dict[str, Any], httpx.Response]:
    """Stream a job; at its first tokens pause its worker, ``verb`` (upgrade or stop) the
    worker's hive, await ``meanwhile(hive)`` once that hive drains, and let the worker go on.

    The paused worker holds the drain open for as long as ``meanwhile`` takes. Returns the
    stream's end, its record and the answer to ``verb``.
    """
    upgraded: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:

        async def upgrade(hive: str) -> None:
            upgraded.append(await q.http.post(f"/v1/hives/{hive}/{verb}", timeout=300))

        async def drain_its_hive(job_id: str) -> None:
            worker = (await _job(q, job_id))["worker"]
            hive = await _hive_of(q, worker)
            process = await _worker_process(q, worker, hosts[hive])
            process.suspend()
            try:
                nursery.start_soon(upgrade, hive)
                await eventually(_draining(q, hive), 120, f"hive {hive} drains")
                await meanwhile(hive)
            finally:
                process.resume()

        end, record = await _stream_job(q, 64, drain_its_hive, after=2)
    (up,) = upgraded
    return end, record, up


async def test_upgrade_and_stop_drain_the_hive_new_jobs_go_to_another_hive_or_wait(
    ssh_hosts: SshHosts, client_key: ClientKey, pyz: Path, model_store: Path, tmp_path: Path
) -> None:
    hosts = {"gpu1": ssh_hosts.make(), "gpu2": ssh_hosts.make()}
    current = tmp_path / "rbee.pyz"
    shutil.copy(pyz, current)
    # A stream whose worker the test holds still must not be taken for a stalled one.
    async with queen(tmp_path, current, model_store, drain_grace_s=120.0, stall_floor_s=600.0) as q:
        workers: dict[str, str] = {}

        async def spawn(name: str) -> None:
            workers[name] = await _spawn_worker(q, name)

        async def start(name: str) -> None:
            await _start_hive(q, name, hosts[name], client_key)
            await spawn(name)

        # gpu1 unpacks the file into the root that the hosts share; then both go on at once.
        await _start_hive(q, "gpu1", hosts["gpu1"], client_key)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawn, "gpu1")
            nursery.start_soon(start, "gpu2")

        # Both hives serve the model: a job sent while one drains goes to the other.
        _rebuilt(current, b"first upgrade")
        served: dict[str, dict[str, Any]] = {}

        async def serve_one_elsewhere(hive: str) -> None:
            listed = await q.rbee("hive", "list")
            assert f"{hive}  online (draining)" in listed.stdout, listed.stdout
            job_id = await _submit(q, 8)
            assert (await read_stream(q.http, f"/v1/jobs/{job_id}/stream"))[-1] == "[DONE]"
            served[hive] = await _job(q, job_id)

        end, record, up = await _drain_during_a_stream(q, hosts, serve_one_elsewhere)
        ((drained, job),) = served.items()
        other = "gpu2" if drained == "gpu1" else "gpu1"
        assert (job["state"], job["worker"], job["attempts"]) == ("completed", workers[other], 1)
        assert end == "[DONE]"
        assert (record["state"], record["worker"], record["attempts"]) == (
            "completed",
            workers[drained],
            1,
        )
        assert job["finished_at"] < record["finished_at"]
        assert up.status_code == 200, up.text
        assert "upgraded from" in up.json()["message"]
        assert await _status(q, drained) == "online"

        # Stopping a hive drains it too: its stream ends there, a job sent meanwhile goes to
        # the other hive (which starts a worker for it if it has none).
        served.clear()
        end, record, stopped = await _drain_during_a_stream(q, hosts, serve_one_elsewhere, "stop")
        ((gone, job),) = served.items()
        other = "gpu2" if gone == "gpu1" else "gpu1"
        assert end == "[DONE]"
        assert (record["state"], record["worker"], record["attempts"]) == (
            "completed",
            workers[gone],
            1,
        )
        assert (job["state"], job["attempts"]) == ("completed", 1)
        assert await _hive_of(q, job["worker"]) == other
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["message"] == f"hive {gone} stopped"
        assert await _status(q, gone) == "offline"
        workers[other] = job["worker"]

        # The other hive alone serves the model: a job sent while it drains waits for it.
        old_pid = _pid(hosts[other], other)
        _rebuilt(current, b"second upgrade")
        sent: list[str] = []

        async def send_one(hive: str) -> None:
            sent.append(await _submit(q, 8))
            assert (await _job(q, sent[0]))["state"] == "queued"

        end, record, up = await _drain_during_a_stream(q, hosts, send_one)
        assert end == "[DONE]"
        assert (record["state"], record["worker"], record["attempts"]) == (
            "completed",
            workers[other],
            1,
        )
        assert up.status_code == 200, up.text
        assert "upgraded from" in up.json()["message"]
        assert _pid(hosts[other], other) != old_pid
        assert await _status(q, other) == "online"
        (waited_id,) = sent
        assert (await read_stream(q.http, f"/v1/jobs/{waited_id}/stream"))[-1] == "[DONE]"
        waited = await _job(q, waited_id)
        # It ran on a worker the upgraded hive started for it, after the stream ended.
        assert (waited["state"], waited["attempts"]) == ("completed", 1)
        assert waited["worker"] != workers[other]
        assert await _hive_of(q, waited["worker"]) == other
        assert waited["started_at"] > record["finished_at"]
