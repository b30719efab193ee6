"""A stand-in for the ``pynvml`` module: GPUs of chosen sizes, or a host without the driver.

Installed as ``sys.modules["pynvml"]``, it is what `rbee.hive.telemetry.Gpus` imports, so the
real telemetry code runs against it. Only the calls rbee makes exist.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

__all__ = ["FakeGpu", "FakeNvml"]

_MB = 1024 * 1024


class NVMLError(Exception):
    """What every NVML call raises on failure."""


@dataclass
class FakeGpu:
    name: str
    total_mb: int
    used_mb: int = 0
    util_pct: int = 0
    power_mw: int | None = None
    temperature_c: int | None = None
    processes: dict[int, int] = field(default_factory=dict)
    """``pid -> MB`` of each process with a CUDA context on it."""


class FakeNvml(types.ModuleType):
    """``pynvml`` for ``gpus``; ``driver=False`` fails `nvmlInit` as a host without one does."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[FakeGpu], *, driver: bool = True) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.driver = driver
        self.initialised = False

    def nvmlInit(self) -> None:
        if not self.driver:
            raise NVMLError("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return gpu.name

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> types.SimpleNamespace:
        used = gpu.used_mb * _MB
        return types.SimpleNamespace(
            total=gpu.total_mb * _MB, used=used, free=gpu.total_mb * _MB - used
        )

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=gpu.util_pct, memory=0)

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        if gpu.power_mw is None:
            raise NVMLError("Not Supported")
        return gpu.power_mw

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        if gpu.temperature_c is None:
            raise NVMLError("Not Supported")
        return gpu.temperature_c

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[types.SimpleNamespace]:
        return [
            types.SimpleNamespace(pid=pid, usedGpuMemory=mb * _MB)
            for pid, mb in gpu.processes.items()
        ]

    def nvmlDeviceGetProcessUtilization(self, gpu: FakeGpu, since: int) -> list[object]:
        raise NVMLError("Not Found")
