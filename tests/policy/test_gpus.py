"""The policy language on GPUs: the VRAM need, GPU lists, spreading and packing workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.decisions import Reject, Spawn
from rbee.errors import PolicyError
from rbee.policy import load_file, load_source
from rbee.wire.queen import GpuTelemetry, HiveView, JobView, Snapshot

ROOT = Path(__file__).resolve().parents[2]


def gpu(index: int, total: int, used: int) -> GpuTelemetry:
    return GpuTelemetry(
        index=index, name=f"GPU{index}", util_pct=0.0, vram_total_mb=total, vram_used_mb=used
    )


# One host with two GPUs of different sizes (14 GB and 40 GB free), one with a single 8 GB free.
DUO = HiveView(
    name="duo",
    gpus=(gpu(0, 24000, 10000), gpu(1, 49152, 9152)),
    models=("m",),
    model_vram_mb={"m": 6000.0, "mid": 20000.0},
)
SOLO = HiveView(name="solo", gpus=(gpu(0, 16000, 8000),), model_vram_mb={"m": 5000.0})
SNAP = Snapshot(hives=(DUO, SOLO))
JOB = JobView(id="job-1", model="m")


def value(expr: str) -> str:
    src = f"fn schedule_job(job, hives) {{ return reject(({expr}).to_string()); }}"
    decision = load_source(src).schedule(JOB, SNAP)
    assert isinstance(decision, Reject)
    return decision.reason


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ('model_vram_required("m")', "6000.0"),
        ('model_vram_required("m", hives.get("solo"))', "5000.0"),
        ('model_vram_required("mid", hives.get("solo"))', "20000.0"),
        ('model_vram_required("unknown")', "0.0"),
        ('hives.get("duo").gpus.len()', "2"),
        ('hives.get("duo").gpus.most_vram_free().device', "cuda:1"),
        ('hives.get("duo").gpus.best_fit(6000).device', "cuda:0"),
        ('hives.get("duo").gpus.best_fit(20000).index', "1"),
        ('hives.get("duo").gpus.with_capacity(20000).map(|g| g.name)[0]', "GPU1"),
        ("hives.with_gpu_room(10000).len()", "1"),
        ("hives.with_gpu_room(5000).len()", "2"),
        ("hives.best_fit(6000).name", "solo"),
        ("hives.best_fit(9000).name", "duo"),
    ],
)
def test_gpu_helpers(expr: str, want: str) -> None:
    assert value(expr) == want


def test_best_fit_of_nothing_is_an_error_naming_the_call() -> None:
    policy = load_source("fn schedule_job(job, hives) { hives.best_fit(90000).name }")
    with pytest.raises(PolicyError, match="best_fit\\(\\) at line 1 found nothing"):
        policy.schedule(JOB, SNAP)


def test_spawn_takes_a_gpu_for_its_device() -> None:
    policy = load_source(
        'fn schedule_job(job, hives) { let h = hives.get("duo"); '
        "spawn(h, job.model, h.gpus.best_fit(6000)) }"
    )
    decision = policy.schedule(JOB, SNAP)
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.device) == ("duo", "cuda:0")
    assert "line 1: best_fit() chose GPU cuda:0" in decision.reasons


def test_spawn_without_a_device_takes_a_gpu_with_room_for_the_need() -> None:
    policy = load_source('fn schedule_job(job, hives) { spawn("duo", "mid") }')
    decision = policy.schedule(JobView(id="j", model="mid"), SNAP)
    assert isinstance(decision, Spawn)
    assert decision.device == "cuda:1"
    on_solo = load_source('fn schedule_job(job, hives) { spawn("solo", "mid") }')
    decision = on_solo.schedule(JobView(id="j", model="mid"), SNAP)
    assert isinstance(decision, Spawn)
    assert decision.device == "cpu"


def test_spawn_on_a_gpu_the_hive_lacks_is_an_error() -> None:
    policy = load_source('fn schedule_job(job, hives) { spawn("solo", job.model, "cuda:1") }')
    with pytest.raises(PolicyError, match="names device 'cuda:1', which hive solo does not have"):
        policy.schedule(JOB, SNAP)


def test_the_need_must_be_for_a_model_name_and_a_hive() -> None:
    policy = load_source(
        'fn schedule_job(job) { reject(model_vram_required("m", "duo").to_string()) }'
    )
    with pytest.raises(PolicyError, match="needs a hive, got a string"):
        policy.schedule(JOB, SNAP)


@pytest.mark.parametrize(
    ("stem", "where"), [("spread_over_gpus", ("duo", "cuda:1")), ("pack_gpus", ("solo", "cuda:0"))]
)
def test_spread_and_pack_place_the_same_model_differently(
    stem: str, where: tuple[str, str]
) -> None:
    """Spread takes duo's 40 GB free GPU; pack the fullest that holds 6 GB: solo's 8 GB free."""
    decision = load_file(ROOT / "policies" / f"{stem}.rhai").schedule(JOB, SNAP)
    assert isinstance(decision, Spawn)
    assert (decision.hive, decision.device) == where
