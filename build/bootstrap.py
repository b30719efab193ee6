"""``_rbee_boot`` in rbee.pyz (copied there by build/build.py): unpack this interpreter's packages
once, put them on ``sys.path`` and run rbee's entry point.

The archive holds the site-packages of every CPython it supports, each file's content stored once;
``rbee-pyz/<abi>.json`` maps each path of one interpreter's site-packages to the entry holding it,
and ``rbee-pyz/build.json`` names the build, the entry point and the machine. The first start of an
interpreter extracts its own listing (nothing of the others) into
``$RBEE_PYZ_ROOT`` (default ``~/.cache/rbee/pyz``) under ``<build id>-<abi>``, compiles it with that
interpreter (so that later starts import ``.pyc`` even where ``PYTHONDONTWRITEBYTECODE`` is set) and
renames it into place: a directory there is complete. Later starts only check that it exists (delete
it to unpack again).
"""

from __future__ import annotations

import compileall
import fcntl
import importlib
import json
import os
import platform
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "extract", "run"]

INFO = "rbee-pyz/build.json"


def _fail(message: str) -> None:
    sys.stderr.write(f"rbee: error: {message}\n")
    sys.exit(1)


def cache_root() -> Path:
    """Where archives are unpacked: ``$RBEE_PYZ_ROOT``, else ``$XDG_CACHE_HOME/rbee/pyz``."""
    if root := os.environ.get("RBEE_PYZ_ROOT"):
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "rbee" / "pyz"


def extract(archive: str, abi: str, target: Path) -> None:
    """Unpack ``abi``'s listing of ``archive`` into ``target`` and compile it, unless done already.

    A lock keeps concurrent first starts (a hive starting several workers) from unpacking twice.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return
        scratch = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            listing: dict[str, str] = json.loads(zf.read(f"rbee-pyz/{abi}.json"))
            for path, entry in listing.items():
                dest = scratch / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                info = zf.getinfo(entry)
                with zf.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(dest, (info.external_attr >> 16) & 0o777 or 0o644)
        # ddir: tracebacks name the final directory, not the scratch one.
        compileall.compile_dir(scratch, ddir=str(target), quiet=2, workers=0)
        os.rename(scratch, target)


def run(archive: str) -> None:
    """Start rbee from ``archive`` under the running (already accepted) interpreter."""
    # The zip importer that loaded this module has read the archive's directory already. It
    # knows the archive by the path it was started with (``./rbee.pyz`` gives
    # ``/dir/./rbee.pyz``), which ``archive`` (normalized) need not equal.
    loader: Any = __spec__.loader
    info: dict[str, Any] = json.loads(loader.get_data(os.path.join(loader.archive, INFO)))
    abi = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    machine = platform.machine()
    if sys.platform != "linux" or machine != info["machine"]:
        _fail(
            f"{Path(archive).name} is built for {info['machine']} Linux; this is {machine} "
            f"{sys.platform} (build.py --arch builds for another machine)"
        )
    if abi not in info["abis"]:
        carried = ", ".join(f"{a[2]}.{a[3:]}" for a in info["abis"])
        _fail(
            f"{Path(archive).name} carries packages for CPython {carried} only; this is Python "
            f"{sys.version.split()[0]} at {sys.executable}"
        )
    target = cache_root() / f"{info['build_id']}-{abi}"
    if not target.is_dir():
        extract(archive, abi, target)
    # Before the interpreter's own site-packages, so that a host's packages never shadow ours.
    first_site = next((i for i, p in enumerate(sys.path) if p.endswith("-packages")), len(sys.path))
    sys.path.insert(first_site, str(target))
    module, _, attr = str(info["entry_point"]).partition(":")
    sys.exit(getattr(importlib.import_module(module), attr)())
