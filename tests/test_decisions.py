"""The decision leaf: one kind/target accessor and one default device for a spawn."""

from __future__ import annotations

import pytest

from rbee.decisions import Decision, Queue, Reject, Route, Spawn, default_device, kind_target
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
