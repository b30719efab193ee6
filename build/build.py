"""Build ``rbee.pyz`` (or ``rbee-full.pyz``, ``rbee-cuda.pyz``) from the settings in ``shiv.toml``.

Usage: ``python build/build.py [--flavour cpu|full|cuda] [--output PATH]``. Runs shiv with the current
interpreter, which must be the Python the zipapp targets (3.11).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def shiv_command(
    settings: dict[str, object], flavour: str, output: Path, bundled: Path | None = None
) -> list[str]:
    """The shiv command line for ``flavour`` as ``shiv.toml`` describes it.

    ``bundled`` is a directory of packages installed without their dependencies, copied in too.
    """
    shiv = settings["shiv"]
    flavours = settings["flavour"]
    assert isinstance(shiv, dict)
    assert isinstance(flavours, dict)
    extras = ",".join(flavours[flavour]["extras"])
    command = [
        sys.executable,
        "-m",
        "shiv",
        "--entry-point",
        shiv["entry_point"],
        "--python",
        shiv["python"],
        "--output-file",
        str(output),
    ]
    if shiv.get("compile_pyc"):
        command.append("--compile-pyc")
    if shiv.get("reproducible"):
        command.append("--reproducible")
    if bundled is not None:
        command += ["--site-packages", str(bundled)]
    command += ["--quiet", "--disable-pip-version-check", f"{ROOT}[{extras}]"]
    return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=["cpu", "full", "cuda"], default="cpu")
    parser.add_argument("--output", type=Path, help="where to write the zipapp")
    args = parser.parse_args()
    settings = tomllib.loads((ROOT / "shiv.toml").read_text())
    output = args.output or ROOT / settings["flavour"][args.flavour]["output"]
    if sys.version_info[:2] != (3, 11):
        print(f"build: run this with Python 3.11, not {sys.version.split()[0]}", file=sys.stderr)
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundled = None
        if packages := settings["flavour"][args.flavour].get("bundle"):
            bundled = Path(tmp)
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
            pip += ["--disable-pip-version-check", "--target", tmp, *packages]
            if subprocess.run(pip, check=False).returncode != 0:
                print(f"build: could not install {', '.join(packages)}", file=sys.stderr)
                return 1
        command = shiv_command(settings, args.flavour, output, bundled)
        result = subprocess.run(command, check=False)
    if result.returncode == 0:
        size_mb = output.stat().st_size / 2**20
        print(f"built {output} ({size_mb:.0f} MB)")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
