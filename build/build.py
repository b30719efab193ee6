"""Build ``rbee.pyz`` (or ``rbee-full.pyz``, ``rbee-cuda-cp3X.pyz``): one file for CPython 3.10-3.13.

Usage: ``python build/build.py [--flavour cpu|full|cuda] [--python 3.X ...] [--arch x86_64|aarch64]
[--output PATH]``, with the settings in ``build/pyz.toml``. Runs under the development Python (3.11);
uv fetches every interpreter's wheels (``--only-binary :all: --python-version 3.X
--python-platform x86_64-manylinux_2_28``), so the file needs nothing built or downloaded where it
runs.

The archive carries one site-packages per CPython (the versions in ``rbee.pythons.SUPPORTED``, or
those given with ``--python``), each resolved by pip for that interpreter. Every distinct file is
stored once, by content: pure-Python packages, ``abi3`` extensions and shared libraries that do not
differ between interpreters (ONNX Runtime's ``libonnxruntime.so``) appear once however many
interpreters use them. ``build/bootstrap.py`` explains how the file starts.

The build makes its own small bootstrap instead of shiv's because shiv's archive holds exactly one
site-packages, unpacked whole at first start by whichever interpreter runs it, compiled for that one
only, and entered through shiv's own ``__main__`` before anything of ours could check the
interpreter: it cannot pick one interpreter's packages, store a file once for several of them, or
refuse an old Python in one line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "build" / "pyz.toml"
ARCHES = ("x86_64", "aarch64")
# The oldest glibc the native wheels may need: ONNX Runtime's are manylinux_2_28 (Debian 10,
# Ubuntu 20.04, RHEL 8 and later).
MANYLINUX = "manylinux_2_28"
# Archive name -> source: the interpreter check, the bootstrap and the versions they read.
BOOT_FILES = {
    "__main__.py": ROOT / "build" / "zipapp_main.py",
    "_rbee_boot.py": ROOT / "build" / "bootstrap.py",
    "_rbee_pythons.py": ROOT / "src" / "rbee" / "pythons.py",
}
INSTALL_RECORDS = ("INSTALLER", "REQUESTED", "direct_url.json")
# Fixed timestamps: the same inputs build the same bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    """A build step failed; the message is one line for the terminal."""


@dataclass(frozen=True)
class Python:
    """One target interpreter: ``3.12`` is ABI ``cp312``."""

    major: int
    minor: int

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def abi(self) -> str:
        return f"cp{self.major}{self.minor}"


@dataclass
class Layout:
    """What the archive holds: ``entries`` (name -> file) and one listing per interpreter ABI
    (site-packages path -> entry name)."""

    entries: dict[str, Path]
    listings: dict[str, dict[str, str]]
    installed_bytes: int
    # entry name -> sha256 of its content
    digests: dict[str, str]


def boot_module(name: str) -> ModuleType:
    """Boot file ``name`` of this tree as a module (``_rbee_pythons.py`` is ``src/rbee/pythons.py``,
    not whatever ``rbee`` the build's Python imports)."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), BOOT_FILES[name])
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(*args: str) -> None:
    """Run ``python -m pip ...`` or ``python -m uv ...`` quietly; `BuildError` with its last line."""
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise BuildError(
            f"{' '.join(args[:3])} failed: {lines[-1] if lines else result.returncode}"
        )


def build_wheel(scratch: Path) -> Path:
    """rbee's own wheel, built from a copy of the tree so that the build leaves no files in it."""
    source = scratch / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    tool("pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(scratch / "wheel"), str(source))
    (wheel,) = (scratch / "wheel").glob("rbee-*.whl")
    return wheel


def install(requirements: Sequence[str], python: Python, arch: str, into: Path) -> None:
    """Install ``requirements`` and their dependencies as the wheels built for ``python`` on
    ``arch`` (manylinux, glibc 2.28 or older).

    With uv, not pip: pip's ``--python-version`` picks the target's wheels but still evaluates
    dependency markers (``exceptiongroup; python_version < '3.11'``) for the Python running it.
    """
    tool(
        "uv",
        "pip",
        "install",
        "--quiet",
        "--python",
        sys.executable,
        "--target",
        str(into),
        "--python-version",
        python.version,
        "--python-platform",
        f"{arch}-{MANYLINUX}",
        "--only-binary",
        ":all:",
        *requirements,
    )


def forget_the_install(tree: Path) -> None:
    """Remove what records this install rather than the package (the installer's name, the wheel's
    temporary path), from the files and from each ``RECORD``, so the same inputs build the same
    archive. ``RECORD`` itself stays: ``importlib.metadata`` lists a package's files from it."""
    for record in tree.glob("*.dist-info/RECORD"):
        for name in INSTALL_RECORDS:
            (record.parent / name).unlink(missing_ok=True)
        lines = record.read_text().splitlines(keepends=True)
        kept = [
            line
            for line in lines
            if line.split(",", 1)[0].rsplit("/", 1)[-1] not in INSTALL_RECORDS
        ]
        record.write_text("".join(kept))


def site_files(tree: Path) -> dict[str, Path]:
    """The files of an installed tree that the archive carries, by path inside site-packages.

    Left out: console scripts (``bin/``, with the build's interpreter in their shebangs) and
    compiled files (each interpreter compiles its own at first start).
    """
    forget_the_install(tree)
    files = {}
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree)
        if path.is_dir() or rel.parts[0] == "bin" or "__pycache__" in rel.parts:
            continue
        if path.suffix != ".pyc":
            files[rel.as_posix()] = path
    return files


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def plan(trees: Mapping[str, Mapping[str, Path]]) -> Layout:
    """Store each distinct content once, under ``site-packages/PATH`` where it first appears, else
    (another content at a path already taken) under ``site-packages-<abi>/PATH``."""
    entries: dict[str, Path] = {}
    by_content: dict[str, str] = {}
    listings: dict[str, dict[str, str]] = {}
    installed = 0
    for abi, files in trees.items():
        listing = listings.setdefault(abi, {})
        for rel, path in files.items():
            installed += path.stat().st_size
            key = digest(path)
            if (entry := by_content.get(key)) is None:
                entry = f"site-packages/{rel}"
                if entry in entries:
                    entry = f"site-packages-{abi}/{rel}"
                by_content[key] = entry
                entries[entry] = path
            listing[rel] = entry
    return Layout(entries, listings, installed, {e: k for k, e in by_content.items()})


def write_pyz(output: Path, layout: Layout, info: Mapping[str, Any], interpreter: str) -> None:
    """The zipapp: shebang, boot files, ``rbee-pyz/`` listings, and every stored file inside one
    uncompressed member, ``rbee-pyz/payload.zip`` (``PAYLOAD`` in ``build/bootstrap.py``).

    Python's zip importer reads an archive's whole directory at every start to find ``__main__``:
    7,000 entries cost each start 80 ms of CPU (a third of ``--help``), the outer archive's
    handful nothing.
    """
    tmp = output.with_name(f".{output.name}.tmp")
    payload = output.with_name(f".{output.name}.payload")
    try:
        with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as inner:
            for name, source in sorted(layout.entries.items()):
                _add(inner, name, source.read_bytes(), mode=source.stat().st_mode & 0o777)
        with tmp.open("wb") as f:
            f.write(f"#!{interpreter}\n".encode())
            # No ZIP64: the zip importers of Python 3.10-3.12 cannot read it.
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=False) as zf:
                for name, source in BOOT_FILES.items():
                    _add(zf, name, source.read_bytes())
                _add(zf, "rbee-pyz/build.json", json.dumps(info, indent=1).encode())
                for abi, listing in layout.listings.items():
                    data = json.dumps(listing, separators=(",", ":")).encode()
                    _add(zf, f"rbee-pyz/{abi}.json", data)
                entry = zipfile.ZipInfo(boot_module("_rbee_boot.py").PAYLOAD, date_time=ZIP_DATE)
                entry.external_attr = 0o100644 << 16
                entry.file_size = payload.stat().st_size
                with payload.open("rb") as src, zf.open(entry, "w") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.LargeZipFile as err:
        tmp.unlink()
        raise BuildError(f"too large for Python 3.10's zip importer (no ZIP64): {err}") from None
    finally:
        payload.unlink(missing_ok=True)
    tmp.chmod(0o755)
    tmp.replace(output)


def _add(zf: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    entry = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = (0o100000 | mode) << 16
    zf.writestr(entry, data)


def build_id(layout: Layout) -> str:
    """A name for the unpacked directories: changes whenever any interpreter's files change."""
    h = hashlib.sha256()
    for source in BOOT_FILES.values():
        h.update(source.read_bytes())
    for abi, listing in sorted(layout.listings.items()):
        for rel, entry in sorted(listing.items()):
            h.update(f"{abi}\0{rel}\0{layout.digests[entry]}\n".encode())
    return h.hexdigest()[:16]


def build(
    flavour: Mapping[str, Any],
    settings: Mapping[str, Any],
    pythons: Sequence[Python],
    arch: str,
    output: Path,
) -> Layout:
    """Install every interpreter's packages, lay them out and write ``output``."""
    with tempfile.TemporaryDirectory(prefix="rbee-build-") as tmp:
        scratch = Path(tmp)
        wheel = build_wheel(scratch)
        requirement = f"rbee[{','.join(flavour['extras'])}] @ {wheel.as_uri()}"
        for python in pythons:
            install([requirement], python, arch, scratch / python.abi)
        bundled: dict[str, Path] = {}
        if packages := flavour.get("bundle"):
            # Without their own dependencies: pure Python, the same for every interpreter.
            tool(
                "uv",
                "pip",
                "install",
                "--quiet",
                "--python",
                sys.executable,
                "--no-deps",
                "--target",
                str(scratch / "bundle"),
                *packages,
            )
            bundled = site_files(scratch / "bundle")
        trees = {p.abi: {**site_files(scratch / p.abi), **bundled} for p in pythons}
        layout = plan(trees)
        info = {
            "build_id": build_id(layout),
            "entry_point": settings["entry_point"],
            "machine": arch,
            "abis": [p.abi for p in pythons],
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        write_pyz(output, layout, info, settings["interpreter"])
    return layout


def outputs(
    flavour: Mapping[str, Any], pythons: Sequence[Python], arch: str, output: Path | None
) -> list[tuple[Path, list[Python]]]:
    """Which files to write, each with its interpreters: one, or one per Python for a flavour
    with ``one_file_per_python`` (named ``<name>-cp3X.pyz``; ``--output`` then needs one
    ``--python``)."""
    default = ROOT / flavour["output"]
    if arch != "x86_64":
        default = default.with_name(f"{default.stem}-{arch}{default.suffix}")
    if not flavour.get("one_file_per_python") or (len(pythons) == 1 and output is not None):
        return [(output or default, list(pythons))]
    if output is not None:
        raise BuildError("this flavour writes one file per Python: give one --python with --output")
    return [(default.with_name(f"{default.stem}-{p.abi}{default.suffix}"), [p]) for p in pythons]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--flavour", choices=["cpu", "full", "cuda"], default="cpu")
    parser.add_argument("--python", action="append", metavar="3.X", help="only these (repeat)")
    parser.add_argument("--arch", choices=ARCHES, default="x86_64")
    parser.add_argument("--output", type=Path, help="where to write the zipapp")
    args = parser.parse_args(argv)
    settings = tomllib.loads(SETTINGS.read_text())
    flavour = settings["flavour"][args.flavour]
    supported = [Python(*v) for v in boot_module("_rbee_pythons.py").SUPPORTED]
    pythons = supported
    if args.python:
        pythons = [p for p in supported if p.version in args.python]
        if len(pythons) != len(set(args.python)):
            names = ", ".join(p.version for p in supported)
            print(f"build: --python takes {names}, not {', '.join(args.python)}", file=sys.stderr)
            return 2
    try:
        for output, targets in outputs(flavour, pythons, args.arch, args.output):
            layout = build(flavour, settings["pyz"], targets, args.arch, output)
            size_mb = output.stat().st_size / 2**20
            versions = ", ".join(p.version for p in targets)
            print(
                f"built {output} ({size_mb:.0f} MB): CPython {versions} on {args.arch}; "
                f"{len(layout.entries)} files stored for "
                f"{sum(map(len, layout.listings.values()))} installed "
                f"({layout.installed_bytes / 2**20:.0f} MB)"
            )
    except BuildError as err:
        print(f"build: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
