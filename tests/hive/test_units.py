"""Small pure pieces of the hive: device names, peer store addresses, telemetry without GPUs."""

from __future__ import annotations

import os
import sys

import pytest

from rbee.errors import UsageError
from rbee.hive.pull import peer_store_url
from rbee.hive.supervisor import validate_device
from rbee.hive.telemetry import Gpus, ProcessStats, host_telemetry


@pytest.mark.parametrize(("device", "gpus"), [("cpu", 0), ("cuda:0", 1), ("cuda:3", 4)])
def test_valid_devices(device: str, gpus: int) -> None:
    assert validate_device(device, gpus) == device


@pytest.mark.parametrize(
    ("device", "gpus", "words"),
    [
        ("cuda:0", 0, "no NVIDIA GPU"),
        ("cuda:2", 2, "GPUs 0-1"),
        ("cuda", 1, "invalid device"),
        ("gpu", 1, "invalid device"),
        ("cuda:-1", 1, "invalid device"),
        ("cpu ", 0, "invalid device"),
    ],
)
def test_invalid_devices(device: str, gpus: int, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        validate_device(device, gpus)


def test_no_nvidia_driver_means_no_gpus_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # whatever this machine has: no driver
    gpus = Gpus()
    try:
        assert gpus.count == 0
        assert gpus.telemetry() == []
        assert gpus.per_process() == {}
        host = host_telemetry(gpus)
    finally:
        gpus.close()
    assert host.gpus == []
    assert host.cpu_count == os.cpu_count()
    assert 0 < host.ram_free_mb <= host.ram_total_mb


def test_process_stats_of_this_process_and_of_a_gone_one() -> None:
    sample = ProcessStats(os.getpid()).sample()
    assert sample.rss_mb > 10
    assert ProcessStats(2**22 + 12345).sample().rss_mb == 0.0


@pytest.mark.parametrize(
    ("source", "base"),
    [
        ("http://queen:7833", "http://queen:7833/v1/store"),
        ("http://queen:7833/", "http://queen:7833/v1/store"),
        ("https://queen:7833/v1/store/", "https://queen:7833/v1/store"),
        ("http://10.0.0.1:7835/v1/store?x=1", "http://10.0.0.1:7835/v1/store"),
    ],
)
def test_peer_store_url(source: str, base: str) -> None:
    assert peer_store_url(source) == base
