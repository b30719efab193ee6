"""``_rbee_boot`` in rbee.pyz (copied there by build/build.py): unpack this interpreter's packages
once, put them on ``sys.path`` and run rbee's entry point.

The archive holds the site-packages of every CPython it supports, each file's content stored once,
in an archive of its own that is one uncompressed member, ``rbee-pyz/payload.zip`` (so that the zip
importer, which reads the outer archive's directory at every start, has a handful of entries to
read); ``rbee-pyz/<abi>.json`` maps each path of one interpreter's site-packages to the payload's
entry holding it, and ``rbee-pyz/build.json`` names the build, the entry point and the machine. The first start of an
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
import io
import json
import os
import platform
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["PAYLOAD", "cache_root", "extract", "payload", "run"]

INFO = "rbee-pyz/build.json"
PAYLOAD = "rbee-pyz/payload.zip"
# A zip file's local header: 30 bytes, then the name and the extra field (lengths at 26 and 28).
_LOCAL_HEADER = 30


def _fail(message: str) -> None:
    sys.stderr.write(f"rbee: error: {message}\n")
    sys.exit(1)


def cache_root() -> Path:
    """Where archives are unpacked: ``$RBEE_PYZ_ROOT``, else ``$XDG_CACHE_HOME/rbee/pyz``."""
    if root := os.environ.get("RBEE_PYZ_ROOT"):
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "rbee" / "pyz"


class _Member(io.RawIOBase):
    """The bytes ``start`` to ``start + size`` of ``file``, as a seekable file of their own."""

    def __init__(self, file: io.BufferedIOBase, start: int, size: int) -> None:
        self._file, self._start, self._size, self._pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        self._file.seek(self._start + self._pos)
        got = self._file.readinto(view[:count]) or 0
        self._pos += got
        return got


def payload(outer: zipfile.ZipFile, file: io.BufferedIOBase) -> zipfile.ZipFile:
    """The archive in ``outer``'s uncompressed `PAYLOAD` member; ``file`` is ``outer``'s, open."""
    info = outer.getinfo(PAYLOAD)
    if info.compress_type != zipfile.ZIP_STORED:
        raise zipfile.BadZipFile(f"{PAYLOAD} is compressed: the archive is not one build.py wrote")
    file.seek(info.header_offset + 26)
    name_length, extra_length = struct.unpack("<HH", file.read(4))
    start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
    return zipfile.ZipFile(_Member(file, start, info.file_size))


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
        with open(archive, "rb") as file, zipfile.ZipFile(file) as outer:
            listing: dict[str, str] = json.loads(outer.read(f"rbee-pyz/{abi}.json"))
            with payload(outer, file) as zf:
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
