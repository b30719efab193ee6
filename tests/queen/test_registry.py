"""The registry's queries and expiry, the database's migrations, the metrics text."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from rbee.errors import ConfigError
from rbee.queen.db import MIGRATIONS, open_db
from rbee.queen.metrics import Histogram, Metrics
from rbee.queen.registry import Registry
from rbee.wire.queen import GpuTelemetry, WorkerStatus
from tests.queen.fake_worker import heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def status(wid: str, model: str = "m", state: str = "ready", free: int = 2) -> WorkerStatus:
    return WorkerStatus(
        id=wid,
        pid=1,
        model=model,
        device="cuda:0",
        url=f"http://{wid}",
        state=state,  # type: ignore[arg-type]
        slots_total=2,
        slots_free=free,
    )


def test_queries() -> None:
    registry = Registry(Clock())
    registry.heartbeat(
        heartbeat(
            "h1",
            [
                status("a"),
                status("b", free=0, state="busy"),
                status("c", model="x"),
                status("d", state="loading"),
            ],
        )
    )
    assert {w.id for w in registry.by_model("m")} == {"a", "b", "d"}
    assert {w.id for w in registry.idle()} == {"a", "c"}
    assert {w.id for w in registry.with_capacity("m")} == {"a"}
    assert {w.id for w in registry.with_capacity()} == {"a", "c"}
    assert registry.models() == ["m", "x"]


def test_a_stalled_worker_is_in_no_snapshot_until_unstalled_whatever_its_hive_says() -> None:
    registry = Registry(Clock())
    registry.heartbeat(heartbeat("h1", [status("a"), status("b")]))
    registry.stall("a")
    registry.heartbeat(heartbeat("h1", [status("a"), status("b")]))
    assert [w.id for w in registry.snapshot().workers] == ["b"]
    assert [w.id for w in registry.with_capacity("m")] == ["b"]
    assert [e.stalled for e in registry.worker_entries()] == [True, False]
    registry.unstall("a")
    assert [w.id for w in registry.snapshot().workers] == ["a", "b"]
    registry.stall("gone")  # a worker that left already: nothing to do


def test_a_draining_hive_and_its_workers_are_in_no_snapshot_until_drained_off() -> None:
    registry = Registry(Clock())
    registry.heartbeat(heartbeat("h1", [status("a")]))
    registry.heartbeat(heartbeat("h2", [status("b")]))
    registry.drain("h1")
    registry.heartbeat(heartbeat("h1", [status("a")]))
    snapshot = registry.snapshot()
    assert ([w.id for w in snapshot.workers], [h.name for h in snapshot.hives]) == (["b"], ["h2"])
    assert registry.get("a") is not None
    registry.drain("h1", on=False)
    snapshot = registry.snapshot()
    assert sorted(w.id for w in snapshot.workers) == ["a", "b"]
    assert sorted(h.name for h in snapshot.hives) == ["h1", "h2"]


def test_inflight_counts_between_heartbeats() -> None:
    registry = Registry(Clock())
    registry.heartbeat(heartbeat("h1", [status("a")]))
    registry.acquire("a")
    assert registry.snapshot().workers[0].slots_free == 1
    # The hive's next report already counts the queen's job: not twice.
    registry.heartbeat(heartbeat("h1", [status("a", free=1)]))
    assert registry.snapshot().workers[0].slots_free == 1
    registry.release("a")
    assert registry.snapshot().workers[0].slots_free == 2


def test_snapshot_carries_vram_and_hives() -> None:
    registry = Registry(Clock())
    beat = heartbeat("h1", [status("a")])
    host = msgspec.structs.replace(
        beat.host,
        gpus=[GpuTelemetry(index=0, name="rtx", util_pct=1, vram_total_mb=8000, vram_used_mb=1000)],
    )
    registry.heartbeat(msgspec.structs.replace(beat, host=host, labels={"zone": "attic"}))
    snap = registry.snapshot()
    assert snap.workers[0].total_vram_mb == 8000
    assert snap.workers[0].labels == {"zone": "attic"}
    assert snap.hives[0].vram_free_mb == 7000
    assert snap.hives[0].workers == 1


def test_a_hive_goes_stale_after_three_missed_intervals() -> None:
    clock = Clock()
    registry = Registry(clock)
    registry.heartbeat(heartbeat("h1", [status("a")], interval_s=1.0))
    registry.heartbeat(heartbeat("h2", [status("b")], interval_s=10.0))
    clock.now += 2.9
    assert registry.expire() == []
    clock.now += 0.2
    assert registry.expire() == ["h1"]
    assert [w.id for w in registry.workers()] == ["b"]
    assert [h.status for h in registry.hive_entries()] == ["offline", "online"]
    came_back, _ = registry.heartbeat(heartbeat("h1", [status("a")], interval_s=1.0))
    assert came_back


def test_a_worker_missing_from_its_hives_report_leaves() -> None:
    registry = Registry(Clock())
    registry.heartbeat(heartbeat("h1", [status("a"), status("b")]))
    _, dropped = registry.heartbeat(heartbeat("h1", [status("b")]))
    assert dropped == ["a"]
    assert registry.remove_worker("b") is not None
    assert registry.workers() == []


def test_migrations_are_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    conn = open_db(path)
    conn.execute("INSERT INTO hives (name, status) VALUES ('h', 'online')")
    conn.close()
    conn = open_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT name FROM hives").fetchall()[0][0] == "h"
    conn.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer than this rbee knows"):
        open_db(path)


def test_histogram_text() -> None:
    h = Histogram("t_seconds", "help", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    assert list(h.render())[2:] == [
        't_seconds_bucket{le="0.1"} 1',
        't_seconds_bucket{le="1"} 2',
        't_seconds_bucket{le="+Inf"} 3',
        "t_seconds_sum 5.55",
        "t_seconds_count 3",
    ]
    text = Metrics().render(lambda: {"g": ("a gauge", {(("k", 'a"b'),): 2.0})})
    assert 'g{k="a\\"b"} 2' in text.splitlines()
