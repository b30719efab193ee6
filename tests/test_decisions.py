"""The decision leaf: kind/target, the VRAM need, the spawn device; and the built-ins' spawns."""

from __future__ import annotations

import pytest

from rbee.decisions import (
    Decision,
    Queue,
    Reject,
    Route,
    Spawn,
    best_fit,
    default_device,
    kind_target,
    model_vram_mb,
    most_free_gpu,
)
from rbee.policy import load_source
from rbee.queen.scheduler import BUILTIN_POLICIES, builtin
from rbee.wire.queen import GpuTelemetry, HiveView, JobView, Snapshot


def gpu(index: int, total: int, used: int) -> GpuTelemetry:
    return GpuTelemetry(
        index=index, name="GPU", util_pct=0.0, vram_total_mb=total, vram_used_mb=used
    )


# GPU 1 has the most free VRAM (20 GB), though GPU 0 is the larger card.
TWO_GPUS = HiveView(
    name="h1", gpus=(gpu(0, 48000, 40000), gpu(1, 24000, 4000), gpu(2, 24000, 6000))
)
JOB = JobView(id="job-1", model="smol")


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Route("w1", ("why",)), ("route", "w1")),
        (Spawn("h1", "smol", "cuda:1"), ("spawn", "h1")),
        (Queue(("busy",)), ("queue", None)),
        (Reject("no hive"), ("reject", None)),
    ],
)
def test_kind_target_names_what_each_decision_points_at(
    decision: Decision, expected: tuple[str, str | None]
) -> None:
    assert kind_target(decision) == expected


def test_default_device_is_the_gpu_with_the_most_free_vram() -> None:
    assert default_device(TWO_GPUS) == "cuda:1"


def test_default_device_breaks_a_tie_by_the_first_gpu_listed() -> None:
    hive = HiveView(name="h1", gpus=(gpu(3, 24000, 0), gpu(1, 24000, 0)))
    assert default_device(hive) == "cuda:3"


def test_default_device_is_cpu_without_a_gpu() -> None:
    assert default_device(HiveView(name="h1")) == "cpu"


@pytest.mark.parametrize("name", sorted(BUILTIN_POLICIES))
def test_builtin_policies_and_the_policy_language_spawn_on_the_same_device(name: str) -> None:
    snapshot = Snapshot(hives=(TWO_GPUS,))
    by_builtin = builtin(name).schedule(JOB, snapshot)
    by_language = load_source(
        "fn schedule_job(job, hives) { spawn(hives[0], job.model) }"
    ).schedule(JOB, snapshot)
    assert isinstance(by_builtin, Spawn)
    assert isinstance(by_language, Spawn)
    assert (by_builtin.hive, by_builtin.device) == (by_language.hive, by_language.device)
    assert by_builtin.device == "cuda:1"


def named(name: str, *gpus: GpuTelemetry, models: tuple[str, ...] = (), **need: float) -> HiveView:
    return HiveView(name=name, gpus=gpus, models=models, model_vram_mb=need, ram_free_mb=8000.0)


# A mixed cluster: a 24 GB card with 20 GB free and an 80 GB card with 70 GB free.
SMALL = named("small", gpu(0, 24000, 4000), models=("big",), big=30000.0)
LARGE = named("large", gpu(0, 81920, 11920), models=("big",), big=30000.0)


def test_the_need_is_the_hives_own_estimate_else_the_largest_reported() -> None:
    hives = (named("a", a=100.0), named("b", a=300.0), named("c"))
    assert model_vram_mb(hives, "a", hives[0]) == 100.0
    assert model_vram_mb(hives, "a", hives[2]) == 300.0
    assert model_vram_mb(hives, "a") == 300.0
    assert model_vram_mb(hives, "unknown") == 0.0


def test_default_device_skips_gpus_without_room_for_the_need() -> None:
    # GPU 1 has the most free (20 GB) but GPU 2 is the only other one with 18 GB free.
    assert default_device(TWO_GPUS, 19000) == "cuda:1"
    assert default_device(TWO_GPUS, 21000) == "cpu"
    assert default_device(HiveView(name="h1"), 10) == "cpu"


def test_spread_takes_the_emptiest_gpu_and_pack_the_fullest_that_fits() -> None:
    def index(g: GpuTelemetry | None) -> int | None:
        return None if g is None else g.index

    assert index(most_free_gpu(TWO_GPUS, 5000)) == 1
    assert index(best_fit(TWO_GPUS, 5000)) == 0
    assert index(best_fit(TWO_GPUS, 9000)) == 2
    assert index(best_fit(TWO_GPUS, 21000)) is None


@pytest.mark.parametrize("name", sorted(BUILTIN_POLICIES))
def test_a_model_that_fits_only_the_bigger_gpu_is_spawned_there(name: str) -> None:
    decision = builtin(name).schedule(JobView(id="j", model="big"), Snapshot(hives=(SMALL, LARGE)))
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.device) == ("large", "cuda:0")
    assert "model 'big' needs about 30000 MB of VRAM" in decision.reasons


def test_a_model_that_fits_no_gpu_goes_to_a_cpu_when_allowed() -> None:
    hives = (
        named("small", gpu(0, 24000, 4000), models=("big",), big=50000.0),
        named("large", gpu(0, 81920, 41920), big=50000.0),
    )
    decision = builtin("first-available").schedule(
        JobView(id="j", model="big"), Snapshot(hives=hives)
    )
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.device) == ("small", "cpu")
    assert "no GPU has room for it (most free: 40000 MB on large cuda:0)" in decision.reasons


def test_a_model_that_fits_no_free_gpu_queues_without_the_cpu_fallback() -> None:
    hives = (named("small", gpu(0, 24000, 4000), big=50000.0), named("large", gpu(0, 81920, 41920)))
    decision = builtin("least-loaded", cpu_fallback=False).schedule(
        JobView(id="j", model="big"), Snapshot(hives=hives)
    )
    assert isinstance(decision, Queue)
    assert decision.reasons[-1] == (
        "model 'big' needs about 50000 MB of VRAM and no GPU has room for it "
        "(most free: 40000 MB on large cuda:0): waiting for a GPU to free up"
    )


def test_a_model_bigger_than_every_gpu_is_rejected_without_the_cpu_fallback() -> None:
    hives = (named("small", gpu(0, 24000, 0), big=90000.0), named("large", gpu(0, 81920, 0)))
    decision = builtin("round-robin", cpu_fallback=False).schedule(
        JobView(id="j", model="big"), Snapshot(hives=hives)
    )
    assert isinstance(decision, Reject)
    assert decision.reason == (
        "model 'big' needs about 90000 MB of VRAM, more than any GPU has "
        "(the largest: 81920 MB on large cuda:0)"
    )


def test_a_cpu_host_with_the_model_beats_pulling_it_to_a_gpu() -> None:
    hives = (named("cpu-box", models=("m",)), named("gpu-box", gpu(0, 24000, 0)))
    decision = builtin("first-available").schedule(
        JobView(id="j", model="m"), Snapshot(hives=hives)
    )
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.device) == ("cpu-box", "cpu")


def test_a_gpu_with_room_elsewhere_beats_the_cpu_of_a_full_gpu_host_with_the_model() -> None:
    hives = (
        named("full", gpu(0, 24000, 23000), models=("m",), m=2000.0),
        named("roomy", gpu(0, 24000, 0)),
    )
    decision = builtin("first-available").schedule(
        JobView(id="j", model="m"), Snapshot(hives=hives)
    )
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.device) == ("roomy", "cuda:0")
