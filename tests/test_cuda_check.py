"""``bench/cuda_check.sh`` where there is no GPU: the CPU part runs, then it says so (exit 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "cuda_check.sh"
NO_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def run_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script with an ``nvidia-smi`` that fails as it does on a host without the driver."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "nvidia-smi").write_text(f'#!/bin/sh\necho "{NO_DRIVER}"\nexit 9\n')
    (stubs / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_without_a_gpu_it_runs_the_cpu_part_and_says_no_gpu_was_found(
    tmp_path: Path, model_store: Path
) -> None:
    result = run_check(tmp_path, "--no-bench", "--models-dir", str(model_store))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "provider in use: CPUExecutionProvider" in result.stdout
    assert "'The capital of France is' ->' Paris" in result.stdout
    assert result.stdout.rstrip().endswith(
        f"cuda_check: no NVIDIA GPU found (nvidia-smi: {NO_DRIVER}): ran the CPU part only"
    )


def test_an_unknown_argument_is_bad_usage(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--gpu")
    assert result.returncode == 2
    assert "cuda_check: unknown argument --gpu" in result.stderr
