"""The main job with real processes: ``rbee queen`` starts its local hive, a job for the default
model starts a worker on demand, the keep-alive retires it, and the keeper's cluster commands,
crash detection and a pull from the queen's store to a second hive work through the queen.

One queen (and its local hive) serves the module's tests, each of which leaves no worker behind
and the cluster as it found it; a test that adds a hive or kills the queen has a queen of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rbee.models.importer import DEFAULT_MODEL
from rbee.models.store import sha256_file
from tests.helpers import RBEE, eventually_sync, gone, run_rbee
from tests.hive.fakes import make_model

pytestmark = pytest.mark.slow

KEEP_ALIVE_S = 5.0
SECOND_INTERVAL_S = 0.3


@dataclass
class Cluster:
    url: str
    queen: subprocess.Popen[str]
    root: Path
    store: Path
    env: dict[str, str]
    stderr: Path

    def rbee(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run_rbee("--queen", self.url, *args, env=self.env, timeout=timeout)

    def rbee_json(self, *args: str) -> Any:
        done = self.rbee(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=10).json()


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return proc.stdout.readline().strip()


def environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
    env.update(XDG_CONFIG_HOME=str(root / "config"), XDG_DATA_HOME=str(root / "data"))
    env["XDG_CACHE_HOME"] = str(root / "cache")
    return env


def link_default_model(store: Path, model_store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    (store / DEFAULT_MODEL).symlink_to(model_store / DEFAULT_MODEL, target_is_directory=True)


@contextlib.contextmanager
def running_cluster(root: Path, model_store: Path) -> Iterator[Cluster]:
    """``rbee queen`` under ``root``, once its local hive has reported; leaves no process behind."""
    # The queen's store: the default model (the shared session store, never written to) and a
    # small fabricated model for the pull test.
    store = root / "queen-models"
    link_default_model(store, model_store)
    sizes = {"model.int4.onnx": 300_000, "model.fp16.onnx": 200_000, "tokenizer.json": 2_000}
    make_model(store / "tiny", "tiny", sizes, precisions=("int4", "fp16"))
    env = environment(root)
    stderr = root / "queen.err"
    argv = [*RBEE, "queen", "--port", "0", "--db", str(root / "q.db")]
    argv += ["--models-dir", str(store), "--keep-alive", str(KEEP_ALIVE_S)]
    with stderr.open("w") as err:
        queen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        first = read_line(queen, 30)
        assert first.startswith("rbee queen listening on http://"), first
        assert read_line(queen, 30) == "rbee queen ready"
        cluster = Cluster(first.rsplit(" ", 1)[1], queen, root, store, env, stderr)
        # Each test starts from a local hive that has reported, whichever test runs first.
        eventually_sync(lambda: bool(cluster.get("/v1/hives")["hives"]), 30, "the local hive")
        yield cluster
    finally:
        family = (
            [*psutil.Process(queen.pid).children(recursive=True)] if queen.poll() is None else []
        )
        if queen.poll() is None:
            queen.send_signal(signal.SIGTERM)
            queen.wait(timeout=60)
        assert queen.stdout is not None
        queen.stdout.close()
        _, alive = psutil.wait_procs(family, timeout=30)
        for proc in alive:
            proc.kill()
        assert not alive, f"left behind: {alive}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Cluster]:
    """The queen the module shares."""
    with running_cluster(tmp_path_factory.mktemp("main-job"), model_store) as shared:
        yield shared


@pytest.fixture
def own_cluster(tmp_path: Path, model_store: Path) -> Iterator[Cluster]:
    """A queen for one test that changes what the others expect."""
    with running_cluster(tmp_path, model_store) as own:
        yield own


def test_a_job_starts_a_worker_on_demand_and_the_keep_alive_retires_it(cluster: Cluster) -> None:
    assert cluster.rbee_json("worker", "list") == []
    hives = cluster.rbee_json("hive", "list")
    assert [(h["name"], h["status"]) for h in hives] == [("local", "online")]

    prompt = "What is the capital of France? Answer in one sentence."
    done = cluster.rbee(
        "infer", "-m", DEFAULT_MODEL, "-p", prompt, "--max-tokens", "24", "--temperature", "0"
    )
    assert done.returncode == 0, done.stderr + cluster.stderr.read_text()[-2000:]
    assert "Paris" in done.stdout

    workers = cluster.rbee_json("worker", "list")
    assert len(workers) == 1
    entry = workers[0]
    assert (entry["hive"], entry["worker"]["model"]) == ("local", DEFAULT_MODEL)
    assert entry["worker"]["rss_mb"] > 0
    assert entry["worker"]["state"] == "ready"
    process = psutil.Process(entry["worker"]["pid"])
    assert "worker" in process.cmdline()

    # Idle for the keep-alive, then SIGTERM (the worker may take a few seconds to stop).
    eventually_sync(
        lambda: cluster.get("/v1/workers")["workers"] == [], KEEP_ALIVE_S + 20, "retired"
    )
    process.wait(timeout=15)
    assert cluster.rbee_json("worker", "list") == []


def test_keeper_worker_commands(cluster: Cluster) -> None:
    spawned = cluster.rbee_json("worker", "spawn", "--hive", "local", "--model", DEFAULT_MODEL)
    assert spawned["state"] == "ready"
    assert spawned["model"] == DEFAULT_MODEL
    assert spawned["pinned"]
    # Started by hand, it outlives the keep-alive that retires the queen's own idle workers.
    time.sleep(KEEP_ALIVE_S + 2)
    listed = cluster.rbee("worker", "list")
    assert listed.returncode == 0
    [row] = [line for line in listed.stdout.splitlines() if spawned["id"] in line]
    assert "ready (pinned)" in row
    retired = cluster.rbee("worker", "retire", spawned["id"])
    assert retired.returncode == 0, retired.stderr
    assert retired.stdout.startswith(f"retired worker {spawned['id']}")
    assert gone(spawned["pid"])
    assert cluster.rbee_json("worker", "list") == []

    unknown = cluster.rbee("worker", "spawn", "--hive", "nope", "--model", DEFAULT_MODEL)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("rbee: error: ")
    assert "no hive named 'nope' (known hives: local)" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    absent = cluster.rbee("worker", "retire", "w-000000000000")
    assert (absent.returncode, absent.stderr.count("\n")) == (1, 1)
    assert "no worker 'w-000000000000'" in absent.stderr
    # The hive's own refusal passes through with its message.
    bad = cluster.rbee("worker", "spawn", "--hive", "local", "--model", "absent-model")
    assert bad.returncode == 1
    assert "is not on hive local" in bad.stderr
    no_graph = cluster.rbee(
        "worker", "spawn", "--hive", "local", "--model", "tiny", "--precision", "fp32"
    )
    assert (no_graph.returncode, no_graph.stderr.count("\n")) == (1, 1)
    assert "model tiny has no fp32 graph (has: int4, fp16)" in no_graph.stderr

    models = cluster.rbee_json("model", "list", "--hive", "local")
    assert [m["name"] for m in models[0]["models"]] == [DEFAULT_MODEL, "tiny"]
    everywhere = cluster.rbee("model", "list")  # every online hive
    assert everywhere.returncode == 0
    assert any(line.split()[:2] == ["local", "tiny"] for line in everywhere.stdout.splitlines())


def test_a_worker_that_cannot_start_fails_its_job_at_once_with_the_reason(
    cluster: Cluster,
) -> None:
    # "tiny" is in the store with a manifest, but its graph is random bytes.
    started = time.monotonic()
    done = cluster.rbee("infer", "-m", "tiny", "-p", "hello", "--max-tokens", "4")
    assert done.returncode == 1
    # The hive's answer to the spawn and the worker's exit race; either way the job names the
    # model, the hive and the worker's last words.
    assert "could not start a worker for 'tiny' on local" in done.stderr
    assert "Protobuf parsing failed" in done.stderr
    assert time.monotonic() - started < 60  # the spawn timeout is 120 s
    assert cluster.get("/v1/workers")["workers"] == []


def test_a_killed_worker_is_reported_by_its_hive_and_leaves_the_registry(
    cluster: Cluster,
) -> None:
    body = {"hive": "local", "model": DEFAULT_MODEL, "wait": True}
    status = httpx.post(f"{cluster.url}/v1/workers", json=body, timeout=180).json()
    eventually_sync(lambda: len(cluster.get("/v1/workers")["workers"]) == 1, 5, "listed")
    os.kill(status["pid"], signal.SIGKILL)
    eventually_sync(lambda: cluster.get("/v1/workers")["workers"] == [], 10, "gone")

    # The hive's crash report (sent as the worker exits, not with the next heartbeat) is what
    # names the exit; a heartbeat that no longer lists the worker does not.
    def reported() -> bool:
        errors = cluster.get("/v1/status")["recent_errors"]
        return any(
            e["what"] == f"worker {status['id']}" and "exited with code -9" in e["message"]
            for e in errors
        )

    eventually_sync(reported, 10, "crash report")


def test_pull_to_a_second_hive_and_its_death(own_cluster: Cluster, model_store: Path) -> None:
    cluster = own_cluster
    other = cluster.root / "second-models"
    link_default_model(other, model_store)  # so that a worker can run there without a pull
    argv = [*RBEE, "hive", "daemon", "--queen", cluster.url, "--name", "second"]
    argv += ["--port", "0", "--models-dir", str(other), "--state-dir", str(cluster.root / "s2")]
    argv += ["--heartbeat-interval", str(SECOND_INTERVAL_S)]
    # Started by hand with no token, on the queen's host with the queen's settings: the hive takes
    # its own token from the cluster secret beside the queen's database.
    env = {**cluster.env, "RBEE_QUEEN_DB": str(cluster.root / "q.db")}
    hive = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert read_line(hive, 30).startswith("rbee hive listening on")

        def online() -> bool:
            return any(h["name"] == "second" for h in cluster.get("/v1/hives")["hives"])

        eventually_sync(online, 10, "second hive online")

        # A GPU host's workers need the fp16 graph only; one the store lacks is refused at once.
        gpu = cluster.rbee("model", "pull", "tiny", "--hive", "second", "--precision", "fp16")
        assert gpu.returncode == 0, gpu.stderr
        assert "tiny/model.fp16.onnx: 100%" in gpu.stderr
        assert sorted(p.name for p in (other / "tiny").glob("*.onnx")) == ["model.fp16.onnx"]
        assert cluster.rbee("model", "rm", "tiny", "--hive", "second").returncode == 0
        absent = cluster.rbee("model", "pull", "tiny", "--hive", "second", "--precision", "fp32")
        assert absent.returncode == 1
        assert absent.stderr.count("\n") == 1
        assert "model tiny has no fp32 graph (has: int4, fp16)" in absent.stderr
        assert not (other / "tiny").exists()

        pulled = cluster.rbee("model", "pull", "tiny", "--hive", "second")
        assert pulled.returncode == 0, pulled.stderr
        assert "pulled tiny onto hive second" in pulled.stdout
        assert "sha256 verified" in pulled.stdout
        assert "tiny/model.int4.onnx: 100%" in pulled.stderr
        for name in ("model.int4.onnx", "model.fp16.onnx", "tokenizer.json"):
            assert sha256_file(other / "tiny" / name) == sha256_file(cluster.store / "tiny" / name)
        listed = cluster.rbee_json("model", "list", "--hive", "second")
        assert "tiny" in [m["name"] for m in listed[0]["models"]]
        removed = cluster.rbee("model", "rm", "tiny", "--hive", "second")
        assert removed.returncode == 0
        assert not (other / "tiny").exists()
        missing = cluster.rbee("model", "pull", "nothing-here", "--hive", "second")
        assert missing.returncode == 1
        assert "nor in the queen's store" in missing.stderr

        spawned = cluster.rbee_json("worker", "spawn", "--hive", "second", "--model", DEFAULT_MODEL)
        worker = psutil.Process(spawned["pid"])
        hive.send_signal(signal.SIGKILL)
        hive.wait()

        def offline() -> bool:
            states = {h["name"]: h["status"] for h in cluster.get("/v1/hives")["hives"]}
            return bool(states["second"] == "offline")

        # When, to the interval, is test_registry's (on a mock clock): a bound on the wall clock
        # here would measure how busy the machine is.
        eventually_sync(offline, 20 * SECOND_INTERVAL_S, "second hive offline")
        workers = cluster.get("/v1/workers")["workers"]
        assert all(w["hive"] != "second" for w in workers)
        shown = cluster.rbee("hive", "list")
        assert any(line.split()[:2] == ["second", "offline"] for line in shown.stdout.splitlines())
        worker.wait(timeout=15)  # the kernel's SIGTERM on the hive's death stops the worker
    finally:
        if hive.poll() is None:
            hive.kill()
            hive.wait()
        assert hive.stdout is not None
        hive.stdout.close()


def test_a_killed_queen_takes_its_local_hive_along(own_cluster: Cluster) -> None:
    cluster = own_cluster
    family = psutil.Process(cluster.queen.pid).children(recursive=True)
    assert len(family) == 1
    assert "hive" in family[0].cmdline()
    cluster.queen.send_signal(signal.SIGKILL)
    cluster.queen.wait()
    _, alive = psutil.wait_procs(family, timeout=20)
    assert alive == []
