"""PolicyHost: run-time errors with their position, hot reload, platform lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from rbee.decisions import Route
from rbee.errors import PolicyError
from rbee.policy import Limits, PolicyHost
from rbee.wire.queen import Snapshot

from .cluster import job, worker

GOOD = "fn schedule_job(job, workers) { workers.with_model(job.model).least_loaded() }\n"
EVIL = (
    "fn schedule_job(job, workers) {\n"
    '    if job.model == "evil" { range(0, 9999).map(|i| range(0, 9999).count(|j| j > i)); }\n'
    "    return workers.last();\n"
    "}\n"
)
SNAP = Snapshot(workers=(worker("a", free=1), worker("b", free=4), worker("c", "evil")))


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    # Some file systems keep mtimes coarse: move it on so a change is always seen.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_runtime_error_reaches_the_queen_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "p.rhai"
    _write(path, EVIL)
    host = PolicyHost(path, limits=Limits(max_operations=10**12, deadline_ms=5))
    with pytest.raises(PolicyError, match=r"p.rhai:2:.*5 ms deadline"):
        host.schedule(job("evil"), SNAP)
    assert host.schedule(job(), SNAP) == Route("c", host.schedule(job(), SNAP).reasons)


def test_division_by_zero_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "p.rhai"
    _write(path, "fn schedule_job(job, workers) { return 1 / 0; }")
    host = PolicyHost(path)
    with pytest.raises(PolicyError, match="division by zero"):
        host.schedule(job(), SNAP)


def test_a_broken_file_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "p.rhai"
    _write(path, "fn schedule_job(job, workers) { return workers.frist(); }")
    with pytest.raises(
        PolicyError,
        match=r"p.rhai:1:48: name error: unknown method frist\(\) \(did you mean 'first'\?\)",
    ):
        PolicyHost(path)


def test_reload_swaps_only_a_policy_that_compiles(tmp_path: Path) -> None:
    path = tmp_path / "p.rhai"
    _write(path, GOOD)
    host = PolicyHost(path)
    assert host.reload_if_changed() is None
    assert host.schedule(job(), SNAP).worker_id == "b"  # type: ignore[union-attr]

    _write(path, "fn schedule_job(job, workers) { return workers.first() }")
    err = host.reload_if_changed()
    assert isinstance(err, PolicyError)
    assert "syntax error" in str(err)
    assert host.status().reload_error is not None
    assert host.schedule(job(), SNAP).worker_id == "b"  # type: ignore[union-attr]

    _write(path, "fn schedule_job(job, workers) { return workers.first(); }")
    assert host.reload_if_changed() is None
    assert host.schedule(job(), SNAP).worker_id == "a"  # type: ignore[union-attr]
    assert host.status().reloads == 1
    assert host.status().reload_error is None


def test_a_locked_host_never_reloads(tmp_path: Path) -> None:
    path = tmp_path / "p.rhai"
    _write(path, GOOD)
    host = PolicyHost(path, locked=True)
    _write(path, "fn schedule_job(job, workers) { return workers.first(); }")
    assert host.reload_if_changed() is None
    assert host.schedule(job(), SNAP).worker_id == "b"  # type: ignore[union-attr]
    assert host.status().reloads == 0


async def test_watch_reloads_on_change(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    path = tmp_path / "p.rhai"
    _write(path, GOOD)
    host = PolicyHost(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(host.watch, 1.0)
        await trio.sleep(2.5)
        assert host.reloads == 0
        _write(path, "fn schedule_job(job, workers) { return workers.first(); }")
        await trio.sleep(1.5)
        assert host.reloads == 1
        nursery.cancel_scope.cancel()


RULES_FIRST = "rules: []\ndefault:\n  route: {pick: first}\n"
RULES_LAST = "rules: []\ndefault:\n  select: workers.with_model(job.model).last()\n"


def test_a_rules_file_reloads_like_a_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    _write(path, RULES_FIRST)
    host = PolicyHost(path)
    assert host.schedule(job(), SNAP).worker_id == "a"  # type: ignore[union-attr]

    _write(path, "rules: []\ndefault:\n  route: {pick: last}\n")
    err = host.reload_if_changed()
    assert isinstance(err, PolicyError)
    assert str(err).startswith(f"{path}:3:17: value error: 'pick' of 'route' must be one of")
    assert host.status().reload_error == str(err).splitlines()[0]
    assert host.schedule(job(), SNAP).worker_id == "a"  # type: ignore[union-attr]

    _write(path, RULES_LAST)
    assert host.reload_if_changed() is None
    assert host.schedule(job(), SNAP).worker_id == "b"  # type: ignore[union-attr]
    assert host.status().reloads == 1
    assert host.status().reload_error is None
    assert host.name == "rules.yaml"


def test_a_broken_rules_file_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    _write(path, "rules:\n  - condition: {modle: smol}\n    action: queue\n")
    with pytest.raises(PolicyError, match=r"rules.yml:2:17: name error: unknown key 'modle'"):
        PolicyHost(path)


async def test_watch_reloads_a_rules_file(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    path = tmp_path / "rules.yaml"
    _write(path, RULES_FIRST)
    host = PolicyHost(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(host.watch, 1.0)
        await trio.sleep(2.5)
        assert host.reloads == 0
        _write(path, RULES_LAST)
        await trio.sleep(1.5)
        assert host.reloads == 1
        assert host.schedule(job(), SNAP).worker_id == "b"  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
