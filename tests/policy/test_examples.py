"""Golden cases: each shipped policy and each adapted seed script against its case file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.policy import load_file
from rbee.policy.cases import Case, Expect, load_cases, run_case
from rbee.wire.queen import Snapshot

from .cluster import job, worker

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cases"
SEEDS = Path(__file__).parent / "seed_scripts"
SHIPPED = sorted(p.stem for p in (ROOT / "policies").iterdir() if p.suffix in (".rhai", ".yaml"))


def _policy_for(stem: str) -> Path:
    if stem.startswith("seed_"):
        return SEEDS / f"{stem}.rhai"
    rhai = ROOT / "policies" / f"{stem}.rhai"
    return rhai if rhai.exists() else ROOT / "policies" / f"{stem}.yaml"


def test_every_shipped_policy_has_a_case_file() -> None:
    assert set(SHIPPED) >= {
        "first_available",
        "least_loaded",
        "big_models_to_big_gpus",
        "eu_only",
        "cheapest",
        "spawn_on_least_loaded_hive",
        "rules",
    }
    assert all((CASES / f"{stem}.toml").exists() for stem in SHIPPED)


@pytest.mark.parametrize("stem", sorted(p.stem for p in CASES.glob("*.toml")))
def test_golden_cases(stem: str) -> None:
    policy = load_file(_policy_for(stem))
    results = [run_case(policy, case, snap) for case, snap in load_cases(CASES / f"{stem}.toml")]
    assert len(results) >= 2
    failed = [f"{r.name}: got {r.got}, {r.problem}" for r in results if not r.passed]
    assert not failed


def test_a_wrong_expectation_fails() -> None:
    policy = load_file(ROOT / "policies" / "least_loaded.rhai")
    snap = Snapshot(workers=(worker("a", free=1), worker("b", free=4)))
    right = Case(name="r", job=job(), expect=Expect(kind="route", target="b"))
    wrong = Case(name="w", job=job(), expect=Expect(kind="route", target="a"))
    assert run_case(policy, right, snap).passed
    result = run_case(policy, wrong, snap)
    assert not result.passed
    assert result.got == "route b"


def test_reasons_say_which_filter_kept_whom() -> None:
    policy = load_file(ROOT / "policies" / "least_loaded.rhai")
    snap = Snapshot(workers=(worker("a", "other"), worker("b", free=2), worker("c", free=0)))
    decision = policy.schedule(job(), snap)
    assert decision.reasons == (
        "line 4: with_model() kept 2 of 3 workers",
        "line 8: available() kept 1 of 2 workers",
        "line 12: least_loaded() chose worker b",
        "least_loaded.rhai chose worker b (line 12)",
    )
