"""Start times of ``rbee.pyz --version`` under each supported CPython, and of ``python -m rbee``.

Usage: ``python bench/startup.py [--pyz rbee.pyz] [--runs 15]``. For each interpreter found (on
``PATH`` as ``python3.X``, else pyenv's): the first start, which unpacks and compiles that
interpreter's packages into an empty ``RBEE_PYZ_ROOT``, then the median and best of several warm
starts. The baseline is ``python -m rbee --version`` from the development tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rbee import pythons  # noqa: E402  (the tree's own list, not an installed rbee's)

TARGET_S = 0.5


def find(version: str) -> str | None:
    """The real executable of a working ``python<version>`` (on PATH, else pyenv's): a pyenv shim
    on PATH is a shell script that would add its own start to every figure."""
    candidates = [shutil.which(f"python{version}")]
    candidates += [str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python3")]
    for candidate in filter(None, candidates):
        probe = [candidate, "-c", "import sys; print(sys.executable)"]
        found = subprocess.run(probe, capture_output=True, text=True, check=False)
        if found.returncode == 0:
            return found.stdout.strip()
    return None


def once(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def warm(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    once(command, env)
    return [once(command, env) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=Path("rbee.pyz"))
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    pyz = str(args.pyz.resolve())
    size_mb = args.pyz.stat().st_size / 2**20
    print(f"{args.pyz} ({size_mb:.0f} MB), runs={args.runs}, warm start target < {TARGET_S} s\n")
    print(f"{'command':<34} {'first s':>8} {'median s':>9} {'best s':>8}")
    with tempfile.TemporaryDirectory(prefix="rbee-pyz-root-") as root:
        env = {**os.environ, "RBEE_PYZ_ROOT": root}
        for major, minor in pythons.SUPPORTED:
            version = f"{major}.{minor}"
            python = find(version)
            name = f"python{version} rbee.pyz --version"
            if python is None:
                print(f"{name:<34} (no Python {version} here)")
                continue
            first = once([python, pyz, "--version"], env)
            samples = warm([python, pyz, "--version"], env, args.runs)
            print(
                f"{name:<34} {first:>8.2f} {statistics.median(samples):>9.3f} {min(samples):>8.3f}"
            )
    dev_env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    samples = warm([sys.executable, "-m", "rbee", "--version"], dev_env, args.runs)
    name = "python -m rbee --version"
    print(f"{name:<34} {'':>8} {statistics.median(samples):>9.3f} {min(samples):>8.3f}")


if __name__ == "__main__":
    main()
