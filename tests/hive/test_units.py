"""Small pure pieces of the hive: how workers are started, device names, telemetry without GPUs."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

from rbee.errors import UsageError
from rbee.hive.pull import peer_store_url
from rbee.hive.supervisor import rbee_command, validate_device
from rbee.hive.telemetry import Gpus, ProcessStats, host_telemetry


def test_rbee_command_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "rbee"), "hive"])
    assert rbee_command() == [sys.executable, "-m", "rbee"]


def test_rbee_command_inside_the_zipapp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pyz = tmp_path / "rbee.pyz"
    with zipfile.ZipFile(pyz, "w") as archive:
        archive.writestr("__main__.py", "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rbee.pyz", "hive"])
    assert rbee_command() == [sys.executable, str(pyz)]


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


def test_no_nvidia_driver_means_no_gpus_and_no_error() -> None:
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
