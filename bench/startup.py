"""Warm start time of ``rbee.pyz --version`` and ``python -m rbee --version``.

Usage: ``python bench/startup.py [--pyz rbee.pyz] [--runs 15]``. Prints the median and best of
several runs of each, after one untimed run that warms the shiv cache and the page cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, check=True, capture_output=True)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=Path("rbee.pyz"))
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    commands = {
        "rbee.pyz --version": [str(args.pyz.resolve()), "--version"],
        "python -m rbee --version": [sys.executable, "-m", "rbee", "--version"],
    }
    print(f"{'command':<28} {'median s':>9} {'best s':>8}   (runs={args.runs}, target < 0.5 s)")
    for name, command in commands.items():
        samples = timed(command, args.runs)
        print(f"{name:<28} {statistics.median(samples):>9.3f} {min(samples):>8.3f}")


if __name__ == "__main__":
    main()
