"""The job records: writes held until a flush, and read back as if nothing had been held."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import pytest

from rbee.queen.db import open_db
from rbee.queen.store import JobStore
from rbee.wire.queen import DecisionRecord, JobRequest, JobView, Snapshot


def request() -> JobRequest:
    return JobRequest(model="m", prompt="hello")


def decision(job_id: str, kind: Literal["route", "queue", "reject"]) -> DecisionRecord:
    view = JobView(id=job_id, model="m", priority="interactive", prompt_tokens=1, max_tokens=8)
    return DecisionRecord(
        job_id=job_id,
        at=1.0,
        policy="first-available",
        job=view,
        snapshot=Snapshot(workers=(), hives=()),
        kind=kind,
        target=None,
        reasons=[kind],
    )


def decision_kind(store: JobStore, job_id: str) -> str | None:
    info = store.get(job_id)
    assert info is not None
    return None if info.decision is None else info.decision.kind


def count_on_disk(path: Path) -> int:
    """Jobs as another connection sees them: only what was committed."""
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def test_held_writes_reach_the_database_at_flush(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = JobStore(open_db(path))
    with store.held():
        store.insert("job-1", 1, request(), 1.0, None)
        store.update("job-1", state="running", worker="w")
    assert count_on_disk(path) == 0
    store.flush()
    assert count_on_disk(path) == 1
    info = store.get("job-1")
    assert info is not None
    assert (info.state, info.worker) == ("running", "w")


def test_a_read_sees_held_writes(tmp_path: Path) -> None:
    store = JobStore(open_db(tmp_path / "q.db"))
    with store.held():
        store.insert("job-1", 1, request(), 1.0, None)
    assert [j.id for j in store.recent()] == ["job-1"]
    assert [j.id for j in store.unfinished()] == ["job-1"]
    assert store.next_seq() == 2


def test_a_later_write_goes_after_the_held_ones(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = JobStore(open_db(path))
    with store.held():
        store.insert("job-1", 1, request(), 1.0, None)
    store.update("job-1", state="completed")
    assert count_on_disk(path) == 1
    info = store.get("job-1")
    assert info is not None
    assert info.state == "completed"


def test_a_job_shows_its_latest_decision(tmp_path: Path) -> None:
    store = JobStore(open_db(tmp_path / "q.db"))
    store.insert("job-1", 1, request(), 1.0, None)
    store.insert("job-2", 2, request(), 1.0, None)
    with store.held():
        store.add_decision(decision("job-1", "queue"))
        store.add_decision(decision("job-2", "reject"))
        store.add_decision(decision("job-1", "route"))
    assert [decision_kind(store, job_id) for job_id in ("job-1", "job-2")] == ["route", "reject"]
    assert [d.kind for d in store.decisions(10, "job-1")] == ["queue", "route"]


def test_an_error_drops_the_writes_held_inside(tmp_path: Path) -> None:
    store = JobStore(open_db(tmp_path / "q.db"))
    with store.held():
        store.insert("job-1", 1, request(), 1.0, None)

    def failing_submit() -> None:
        with store.held():
            store.insert("job-2", 2, request(), 1.0, None)
            raise RuntimeError("a bug in the middle of a submit")

    with pytest.raises(RuntimeError):
        failing_submit()
    assert [j.id for j in store.recent()] == ["job-1"]
