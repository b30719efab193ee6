"""What the host and each worker process use, from psutil and NVML (never from parsing tool output).

NVML comes from ``nvidia-ml-py`` (module ``pynvml``). A host without the NVIDIA driver has no
GPUs: `Gpus` then reports an empty list, without an error, and never retries the driver.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from rbee.wire.queen import GpuTelemetry, HostTelemetry

__all__ = ["Gpus", "ProcessSample", "ProcessStats", "host_telemetry"]

log = logging.getLogger(__name__)

_MB = 1024 * 1024


class Gpus:
    """NVML, initialised once; every method answers "no GPU" where there is no driver."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except Exception as err:  # pynvml raises NVMLError subclasses and OSError for a missing lib
            log.debug("no NVIDIA GPUs: %s", err)

    @property
    def count(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None
            self._handles = []

    def telemetry(self) -> list[GpuTelemetry]:
        """Utilisation, memory, power and temperature of every GPU."""
        nv = self._nvml
        if nv is None:
            return []
        gpus = []
        for index, handle in enumerate(self._handles):
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                name = nv.nvmlDeviceGetName(handle)
            except nv.NVMLError as err:
                log.debug("NVML failed for GPU %d: %s", index, err)
                continue
            gpus.append(
                GpuTelemetry(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    util_pct=float(util.gpu),
                    vram_total_mb=int(mem.total // _MB),
                    vram_used_mb=int(mem.used // _MB),
                    power_w=self._optional(lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000, handle),
                    temperature_c=self._optional(
                        lambda h: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                        handle,
                    ),
                )
            )
        return gpus

    def _optional(self, read: Any, handle: Any) -> float | None:
        # Power and temperature are unsupported on some boards (and in most VMs).
        try:
            return float(read(handle))
        except self._nvml.NVMLError:
            return None

    def per_process(self) -> dict[int, tuple[float, float]]:
        """``pid -> (gpu_util_pct, vram_mb)`` for every process with a CUDA context."""
        nv = self._nvml
        if nv is None:
            return {}
        usage: dict[int, tuple[float, float]] = {}
        for handle in self._handles:
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(handle)
            except nv.NVMLError:
                continue
            for proc in procs:
                used = proc.usedGpuMemory or 0
                util, vram = usage.get(proc.pid, (0.0, 0.0))
                usage[proc.pid] = (util, vram + used / _MB)
            try:
                # Samples of the last few seconds; the timestamp argument asks for all buffered.
                samples = nv.nvmlDeviceGetProcessUtilization(handle, 0)
            except nv.NVMLError:
                continue
            for sample in samples:
                util, vram = usage.get(sample.pid, (0.0, 0.0))
                usage[sample.pid] = (max(util, float(sample.smUtil)), vram)
        return usage


def host_telemetry(gpus: Gpus) -> HostTelemetry:
    """CPU count and load, RAM total and available, and every GPU."""
    mem = psutil.virtual_memory()
    return HostTelemetry(
        cpu_count=os.cpu_count() or 1,
        load_1m=os.getloadavg()[0],
        ram_total_mb=int(mem.total // _MB),
        ram_free_mb=int(mem.available // _MB),
        gpus=gpus.telemetry(),
    )


@dataclass(frozen=True)
class ProcessSample:
    cpu_pct: float
    rss_mb: float
    uptime_s: float


@dataclass
class ProcessStats:
    """CPU and memory of one process; ``cpu_pct`` is averaged since the previous sample."""

    pid: int
    started: float = field(default_factory=time.monotonic)
    _proc: psutil.Process | None = None

    def sample(self) -> ProcessSample:
        uptime = time.monotonic() - self.started
        try:
            if self._proc is None:
                # The first reading only starts the measurement (psutil answers 0.0 for it).
                self._proc = psutil.Process(self.pid)
            with self._proc.oneshot():
                cpu = self._proc.cpu_percent(None)
                rss = self._proc.memory_info().rss / _MB
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return ProcessSample(0.0, 0.0, uptime)
        return ProcessSample(cpu, rss, uptime)
