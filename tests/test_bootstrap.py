"""The bootstrap's bookkeeping of unpacked builds (build/bootstrap.py), without an archive: a
build no process holds and none started for a week is removed at another's start."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DAY = 24 * 3600.0


def load_bootstrap() -> ModuleType:
    """build/bootstrap.py as the module ``_rbee_boot`` that rbee.pyz carries."""
    spec = importlib.util.spec_from_file_location("_rbee_boot", ROOT / "build" / "bootstrap.py")
    assert spec is not None
    assert spec.loader is not None
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    return boot


def unpacked_build(root: Path, name: str, started_days_ago: float | None) -> Path:
    """A build directory as `extract` leaves it, its use file last set that long ago (None: no
    use file, as an older bootstrap left it)."""
    target = root / name
    (target / "rbee").mkdir(parents=True)
    (target / "rbee" / "__init__.py").write_text("")
    if started_days_ago is not None:
        use = root / f".{name}.use"
        use.touch()
        then = time.time() - started_days_ago * DAY
        os.utime(use, (then, then))
    return target


def test_a_start_removes_the_builds_unused_for_a_week_and_keeps_the_rest(tmp_path: Path) -> None:
    boot = load_bootstrap()
    assert boot.UNUSED_FOR_S == 7 * DAY
    unpacked_build(tmp_path, "aaaa-cp311", started_days_ago=8)
    unpacked_build(tmp_path, "bbbb-cp311", started_days_ago=6)
    unpacked_build(tmp_path, "cccc-cp311", started_days_ago=None)
    unpacked_build(tmp_path, "dddd-cp311", started_days_ago=30)
    held = unpacked_build(tmp_path, "eeee-cp312", started_days_ago=None)
    with boot.hold(held):
        then = time.time() - 9 * DAY
        os.utime(tmp_path / ".eeee-cp312.use", (then, then))
        removed = boot.prune(tmp_path, keep="dddd-cp311")
    assert removed == ["aaaa-cp311"]
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert left == ["bbbb-cp311", "cccc-cp311", "dddd-cp311", "eeee-cp312"]
    # Once its process has ended, the held build goes too.
    assert boot.prune(tmp_path, keep="dddd-cp311") == ["eeee-cp312"]


def test_holding_a_build_marks_it_started_now(tmp_path: Path) -> None:
    boot = load_bootstrap()
    target = unpacked_build(tmp_path, "aaaa-cp311", started_days_ago=10)
    with boot.hold(target):
        assert time.time() - (tmp_path / ".aaaa-cp311.use").stat().st_mtime < DAY
        assert boot.prune(tmp_path, keep="other", now=time.time() + 8 * DAY) == []
    assert boot.prune(tmp_path, keep="other", now=time.time() + 8 * DAY) == ["aaaa-cp311"]
    assert not target.exists()
