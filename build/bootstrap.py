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

Each start holds a shared lock on ``.<build>.use`` beside its directory for as long as the process
runs, and sets that file's time. A start removes the other builds' directories that no process
holds and that none started for `UNUSED_FOR_S` (an upgraded host keeps one build, not one for every
file it ever ran); taking the lock exclusively first, so a process starting one of them meanwhile
waits, and unpacks it again.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import importlib
import io
import json
import os
import platform
import shutil
import struct
import sys
import time
import zipfile
from pathlib import Path
from typing import IO, Any

__all__ = ["PAYLOAD", "UNUSED_FOR_S", "cache_root", "extract", "hold", "payload", "prune", "run"]

INFO = "rbee-pyz/build.json"
PAYLOAD = "rbee-pyz/payload.zip"
# A zip file's local header: 30 bytes, then the name and the extra field (lengths at 26 and 28).
_LOCAL_HEADER = 30
# How long an unpacked build that no process runs is kept after its last start.
UNUSED_FOR_S = 7 * 24 * 3600.0


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


_in_use: list[IO[str] | None] = []


def _use_file(target: Path) -> Path:
    return target.parent / f".{target.name}.use"


def hold(target: Path) -> IO[str] | None:
    """Mark the build unpacked (or to be unpacked) at ``target`` as run by this process until
    the returned file is closed, and as started now; None where the use file cannot be opened.

    The file is opened read-only (a shared lock needs no more), so that a root shared by several
    users works: another user's use file is locked, though its time is left as it is.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        use = os.fdopen(os.open(_use_file(target), os.O_RDONLY | os.O_CREAT, 0o644))
    except OSError:
        return None
    fcntl.flock(use, fcntl.LOCK_SH)
    with contextlib.suppress(OSError):
        os.utime(use.fileno())
    return use


def prune(root: Path, keep: str, now: float | None = None) -> list[str]:
    """Remove the builds unpacked under ``root``, except ``keep``, that no process holds (see
    `hold`) and that none started for `UNUSED_FOR_S`; return their names.

    A directory without a use file (unpacked by an older bootstrap, which held no lock) is kept:
    a process may run from it. Nothing here stops a start: a build that cannot be removed stays.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    for target in sorted(root.iterdir()) if root.is_dir() else []:
        use = _use_file(target)
        if target.name == keep or target.name.startswith(".") or not use.exists():
            continue
        try:
            if now - use.stat().st_mtime < UNUSED_FOR_S:
                continue
            with open(use, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a process runs from it
                trash = root / f".{target.name}.removed.{os.getpid()}"
                os.rename(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(target.name)
        except OSError:
            continue
    return removed


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
    # Held, not closed, until the process ends.
    _in_use.append(hold(target))
    if not target.is_dir():
        extract(archive, abi, target)
    prune(target.parent, target.name)
    # Before the interpreter's own site-packages, so that a host's packages never shadow ours.
    first_site = next((i for i, p in enumerate(sys.path) if p.endswith("-packages")), len(sys.path))
    sys.path.insert(first_site, str(target))
    module, _, attr = str(info["entry_point"]).partition(":")
    sys.exit(getattr(importlib.import_module(module), attr)())
