"""What the language computes: operators, scoping, closures, helpers, fields."""

from __future__ import annotations

import msgspec
import pytest

from rbee.decisions import Reject, Route, Spawn
from rbee.errors import PolicyError
from rbee.policy import load_source
from rbee.wire.queen import Snapshot, TenantView

from .cluster import hive, job, worker

SNAP = Snapshot(
    workers=(
        worker("a", free=1, cpu_pct=50.0, labels={"region": "eu"}),
        worker("b", free=4, total_vram_mb=24000.0, vram_mb=4000.0),
        worker("c", "other", free=2),
    ),
    hives=(
        hive("h1", vram=24000, workers=2, models=("smol",)),
        hive("h2", workers=0, labels={"cost": "1"}),
    ),
)


def value(expr: str, prelude: str = "") -> str:
    """The text of ``expr`` as the policy computes it (passed out as a reject reason)."""
    src = f"{prelude}\nfn schedule_job(job, workers, hives) {{ return reject(({expr}).to_string()); }}"
    decision = load_source(src).schedule(job(labels={"tier": "gold"}), SNAP)
    assert isinstance(decision, Reject)
    return decision.reason


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("7 % 4", "3"),
        ("-3 + 1", "-2"),
        ("1 < 2 && !(2 < 1) || false", "true"),
        ('"ab" + "cd"', "abcd"),
        ('"Hello".to_lower().starts_with("he")', "true"),
        ("1_000 + 0.5", "1000.5"),
        ("workers.len()", "3"),
        ("workers.available().len()", "3"),
        ("workers.idle().first().id", "b"),
        ('workers.with_model("smol").least_loaded().id', "b"),
        ("workers.most_vram_free().id", "b"),
        ("workers.max_by(|w| w.cpu_pct).id", "a"),
        ('workers.sort_by(|w| w.slots_free).map(|w| w.id).reduce(|s, x| s + x, "")', "acb"),
        ("workers.count(|w| w.model == job.model)", "2"),
        ('workers.any(|w| w.labels["region"] == "eu")', "true"),
        ('workers.all(|w| w.labels["region"] == "eu")', "false"),
        ('workers.first().labels["missing"] == ""', "true"),
        ('job.labels.get("tier", "none") + job.labels.get("x", "none")', "goldnone"),
        ("[1, 2, 3][-1]", "3"),
        ("[3, 1, 2].sort_by(|x| x)[0] + range(0, 4).sum()", "7"),
        ('[1, 2].contains(2) && "abc".contains("b") && job.labels.contains("tier")', "true"),
        ("min(3, max(1, 2)) + abs(-1) + floor(2.7) + round(2.5)", "7"),
        ("hives.most_vram_free().name + hives.least_loaded().name", "h1h2"),
        ('hives.with_model("smol").first().gpus.first().vram_free_mb', "24000"),
        ('hives.get("h2").labels["cost"].to_number() + 1', "2"),
        ("double(21)", "42"),
        ("let_and_shadow(1)", "13"),
        ("branches(5) + branches(-5) + branches(0)", "posnegzero"),
    ],
)
def test_expressions(expr: str, want: str) -> None:
    prelude = """
    fn double(x) { x * 2 }
    fn let_and_shadow(x) { let y = x + 1; if true { let y = 10; x = x + y; } x + y - 1 + 1 - 1 + 1 }
    fn branches(n) { if n > 0 { "pos" } else if n < 0 { "neg" } else { "zero" } }
    """
    assert value(expr, prelude) == want


def test_closures_capture_the_variables_around_them() -> None:
    src = """
    fn schedule_job(job, workers) {
        let limit = 1;
        let picked = workers.filter(|w| w.slots_free > limit).map(|w| {
            let tag = w.id + "!";
            tag
        });
        return reject(picked.reduce(|acc, t| acc + t, ""));
    }
    """
    decision = load_source(src).schedule(job(), SNAP)
    assert decision == Reject("b!c!", decision.reasons)


def test_round_robin_takes_turns_across_decisions() -> None:
    policy = load_source("fn schedule_job(job, workers) { workers.round_robin() }")
    picks = [policy.schedule(job(), SNAP) for _ in range(4)]
    assert [p.worker_id for p in picks if isinstance(p, Route)] == ["a", "b", "c", "a"]


def test_spawn_picks_a_gpu_device_on_a_gpu_hive() -> None:
    policy = load_source('fn schedule_job(job, hives) { spawn(hives.most_vram_free(), "m") }')
    assert policy.schedule(job(), SNAP) == Spawn(
        "h1", "m", "cuda:0", policy.schedule(job(), SNAP).reasons
    )
    policy = load_source('fn schedule_job(job, hives) { spawn("h2", job.model) }')
    decision = policy.schedule(job(), SNAP)
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.model, decision.device) == ("h2", "smol", "cpu")


def test_comments_are_ignored() -> None:
    src = "// a\n/* block\n comment */ fn schedule_job(job, workers) { /* x */ workers.first() } // end"
    assert load_source(src).schedule(job(), SNAP) == Route(
        "a", load_source(src).schedule(job(), SNAP).reasons
    )


def test_errors_name_file_line_column_and_show_a_caret() -> None:
    src = "fn schedule_job(job, workers) {\n    let x = workers.first();\n    return x.cpu_pct + job.model;\n}\n"
    with pytest.raises(PolicyError) as caught:
        load_source(src, "my.rhai").schedule(job(), SNAP)
    assert str(caught.value) == (
        "my.rhai:3:22: type error: cannot compute a number + a string\n"
        "        return x.cpu_pct + job.model;\n"
        "                         ^"
    )


def test_schedule_job_parameters_are_bound_by_name() -> None:
    decision = load_source(
        "fn schedule_job(hives, job, workers) { spawn(hives.first(), job.model) }"
    ).schedule(job(), SNAP)
    assert isinstance(decision, Spawn)
    with pytest.raises(PolicyError, match="parameters are named from job, workers, hives"):
        load_source('fn schedule_job(job, pools) { reject("x") }')


def test_tenant_helpers_read_the_snapshots_tenants() -> None:
    tenants = (
        TenantView(name="acme", requests=3, tokens=900, concurrent=1, rpm=10, tpm=1000),
        TenantView(name="full", requests=5, rpm=5),
    )
    snap = msgspec.structs.replace(SNAP, tenants=tenants)

    def value_of(expr: str) -> str:
        src = f"fn schedule_job(job, workers) {{ return reject(({expr}).to_string()); }}"
        decision = load_source(src).schedule(job(tenant="acme"), snap)
        assert isinstance(decision, Reject)
        return decision.reason

    assert value_of("tenant_over_quota(job.tenant)") == "false"
    assert value_of('tenant_over_quota("full")') == "true"
    # The tightest limit: 100 of 1000 tokens left.
    assert value_of("tenant_remaining_quota(job.tenant)") == "0.1"
    assert value_of('tenant_remaining_quota("full")') == "0.0"
    assert value_of('tenant_remaining_quota("nobody")') == "1.0"
    assert value_of('tenant_over_quota("nobody")') == "false"
    usage = "tenant_usage(job.tenant)"
    assert value_of(f"{usage}.requests + {usage}.tokens + {usage}.concurrent") == "904"
    assert value_of(f"{usage}.rpm + {usage}.tpm + {usage}.max_concurrent") == "1010"
    assert value_of('tenant_usage("nobody").tokens') == "0"


def test_tenant_helpers_check_their_argument() -> None:
    src = 'fn schedule_job(job, workers) { if tenant_over_quota(42) { return reject("x"); } }'
    with pytest.raises(PolicyError, match="tenant_over_quota\\(\\) needs a string for the tenant"):
        load_source(src).schedule(job(), SNAP)
    with pytest.raises(PolicyError, match="a tenant's usage has no field 'model'"):
        load_source('fn schedule_job(job, workers) { reject(tenant_usage("a").model) }').schedule(
            job(), SNAP
        )
