"""The hive as a process of its own: no worker outlives it, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.helpers import eventually_sync, gone
from tests.hive.conftest import MODEL
from tests.hive.fakes import make_model

pytestmark = pytest.mark.slow


def read_url(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(prefix), line
    return line.removeprefix(prefix).strip()


@pytest.fixture
def standin_hive(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    make_model(tmp_path / "store" / MODEL, MODEL, {"model.int4.onnx": 100})
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "hive" / "standin_hive.py"),
            "http://127.0.0.1:9",  # no queen: the hive must not mind
            str(tmp_path / "store"),
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield proc, read_url(proc, "rbee hive listening on ")
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def spawn_two(url: str) -> list[int]:
    pids = []
    for _ in range(2):
        response = httpx.post(f"{url}/v1/workers", json={"model": MODEL, "wait": True}, timeout=30)
        assert response.status_code == 201, response.text
        pids.append(response.json()["pid"])
    return pids


def test_sigkill_of_the_hive_leaves_no_orphan(
    standin_hive: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = standin_hive
    pids = spawn_two(url)
    time.sleep(0.5)
    assert not any(gone(pid) for pid in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    eventually_sync(lambda: all(gone(pid) for pid in pids), 3.0, "workers of a killed hive")


def test_sigterm_retires_workers_and_exits_cleanly(
    standin_hive: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = standin_hive
    pids = spawn_two(url)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert all(gone(pid) for pid in pids)
