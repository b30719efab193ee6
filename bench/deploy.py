"""Deploy figures: ``hive start`` over SSH to namespace hosts, and the file's copy rate.

Usage (as root, with openssh-server): ``python bench/deploy.py [--pyz FILE] [--hosts 8]
[--rounds 3]``. Without ``--pyz`` it builds ``rbee.pyz`` first.

The hosts are network namespaces with their own sshd and user (``tests/ssh_hosts.py``); the
queen runs in this process and is driven through its API, as ``rbee hive start`` drives it.

1. ``hive start`` to online on one host without the file (push + first unpack), then with the
   file already there (each round stops the hive first). Target with the file: < 2 s.
2. The copy rate of the file: rbee's SFTP push against OpenSSH's ``scp`` of the same file to the
   same host, alternating, in the same run. Target: >= 0.9x scp.
3. ``hive start`` of ``--hosts`` hosts at once with the files there, in total. Target: < 3 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.queen.ssh_queen import Queen, queen  # noqa: E402
from tests.ssh_hosts import ClientKey, SshHost, SshHosts, make_client_key  # noqa: E402

from rbee import ssh  # noqa: E402


async def _start(q: Queen, name: str) -> float:
    began = time.perf_counter()
    response = await q.start(name)
    if response.status_code != 200:
        raise SystemExit(f"hive start {name} failed: {response.text}")
    return time.perf_counter() - began


async def _stop(q: Queen, name: str) -> None:
    response = await q.http.post(f"/v1/hives/{name}/stop", timeout=60)
    response.raise_for_status()


async def _copy_rates(
    host: SshHost, key: ClientKey, known: ssh.KnownHosts, pyz: Path, size_mb: float, rounds: int
) -> tuple[list[float], list[float]]:
    target = ssh.parse_target(host.target, identity=str(key.path))
    ours: list[float] = []
    theirs: list[float] = []
    scp = ["scp", "-q", "-i", str(key.path), "-o", f"UserKnownHostsFile={known.own}"]
    scp += ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    async with ssh.session(target, known, hive="bench") as conn:
        for _ in range(rounds):
            began = time.perf_counter()
            await conn.put_file(pyz, "bench-copy.pyz")
            ours.append(size_mb / (time.perf_counter() - began))
            began = time.perf_counter()
            await trio.run_process([*scp, str(pyz), f"{host.user}@{host.address}:scp-copy.pyz"])
            theirs.append(size_mb / (time.perf_counter() - began))
    return ours, theirs


async def bench(pyz: Path, size_mb: float, work: Path, hosts_n: int, rounds: int) -> None:
    key = make_client_key(work / "client")
    hosts = SshHosts(key)
    try:
        made = [hosts.make() for _ in range(hosts_n)]
        async with queen(work, pyz) as q:
            names = [f"host{i}" for i in range(hosts_n)]
            for name, host in zip(names, made, strict=True):
                await q.add(name, host, key)
                await q.trust(name, host)
            cold = await _start(q, names[0])
            warm: list[float] = []
            for _ in range(rounds):
                await _stop(q, names[0])
                warm.append(await _start(q, names[0]))
            await _stop(q, names[0])
            print(f"size of the file: {size_mb:.1f} MB")
            print(f"hive start to online, file not there: {cold:.2f} s")
            print(
                f"hive start to online, file there: median {statistics.median(warm):.2f} s "
                f"(runs: {', '.join(f'{w:.2f}' for w in warm)}; target < 2 s)"
            )

            ours, theirs = await _copy_rates(made[0], key, q.known, pyz, size_mb, rounds)
            ratio = statistics.median(ours) / statistics.median(theirs)
            print(
                f"copy rate: rbee {statistics.median(ours):.0f} MB/s, scp "
                f"{statistics.median(theirs):.0f} MB/s, ratio {ratio:.2f}x (target >= 0.9x)"
            )

            async with trio.open_nursery() as nursery:
                for name in names[1:]:
                    nursery.start_soon(_start, q, name)
            async with trio.open_nursery() as nursery:
                for name in names[1:]:
                    nursery.start_soon(_stop, q, name)
            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(_start, q, name)
            together = time.perf_counter() - began
            print(
                f"hive start of {hosts_n} hosts at once, files there: {together:.2f} s (target < 3 s)"
            )
    finally:
        hosts.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyz", type=Path, help="the file to push (default: build rbee.pyz)")
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pyz = args.pyz
    if pyz is None:
        pyz = Path(tempfile.mkdtemp(prefix="rbee-bench-pyz-")) / "rbee.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "build" / "build.py"), "--output", str(pyz)], check=True
        )
    work = Path(tempfile.mkdtemp(prefix="rbee-bench-deploy-"))
    try:
        trio.run(bench, pyz.resolve(), pyz.stat().st_size / 1e6, work, args.hosts, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
