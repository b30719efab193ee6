"""Small cluster builders shared by the policy tests."""

from __future__ import annotations

from rbee.wire.queen import GpuTelemetry, HiveView, JobView, Snapshot, WorkerView

__all__ = ["cluster", "hive", "job", "worker"]


def worker(
    id: str, model: str = "smol", *, hive: str = "h1", free: int = 4, **kw: object
) -> WorkerView:
    fields: dict[str, object] = {
        "id": id,
        "hive": hive,
        "model": model,
        "device": "cpu",
        "state": "ready",
        "slots_total": 4,
        "slots_free": free,
    }
    fields.update(kw)
    return WorkerView(**fields)  # type: ignore[arg-type]


def hive(name: str, *, vram: int = 0, workers: int = 0, **kw: object) -> HiveView:
    gpus = (
        (GpuTelemetry(index=0, name="GPU", util_pct=0.0, vram_total_mb=vram, vram_used_mb=0),)
        if vram
        else ()
    )
    return HiveView(name=name, gpus=gpus, workers=workers, **kw)  # type: ignore[arg-type]


def job(model: str = "smol", **kw: object) -> JobView:
    return JobView(id="job-1", model=model, **kw)  # type: ignore[arg-type]


def cluster(n: int, models: int = 3) -> Snapshot:
    """``n`` workers over ``max(n // 10, 1)`` hives, spread over ``models`` models."""
    hives = max(n // 10, 1)
    return Snapshot(
        workers=tuple(
            worker(
                f"w{i:04d}",
                f"model-{i % models}",
                hive=f"h{i % hives}",
                free=i % 5,
                cpu_pct=float(i % 97),
                total_vram_mb=24000.0 * (1 + i % 4),
                vram_mb=float(1000 * (i % 7)),
                labels={"region": "eu" if i % 2 else "us", "cost": f"0.{i % 9 + 1}"},
            )
            for i in range(n)
        ),
        hives=tuple(
            hive(
                f"h{i}",
                vram=24000 * (1 + i % 4),
                workers=10,
                labels={"region": "eu" if i % 2 else "us", "cost": f"0.{i % 9 + 1}"},
                models=("model-0",),
            )
            for i in range(hives)
        ),
    )
