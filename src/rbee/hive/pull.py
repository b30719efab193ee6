"""Pulling a model into the hive's store from a peer's store (HTTP) or a local model directory.

A pull downloads into ``<store>/.partial-<name>/``, which survives a failed or interrupted attempt:
the next pull of the same name asks only for the missing bytes (``Range: bytes=N-``). Every file is
checked against the sha256 of the source's manifest once complete; a mismatch deletes that file
and fails the pull. Only when every file matched are they moved into a staging directory that
becomes the model (`ModelStore.staging`), so a half-pulled model is never visible.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import shutil
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Protocol

import httpx
import msgspec
import trio

from rbee.client import auth_headers, check, translate_errors
from rbee.errors import ApiError, ModelError, NotFoundError, RbeeError, UsageError
from rbee.models.store import (
    MANIFEST,
    Manifest,
    ModelStore,
    read_manifest,
    sha256_file,
    validate_name,
    write_manifest,
)
from rbee.wire.hive import QUEEN_STORE, FileEntry, Importing, Pulled, PullEvent, PullProgress

__all__ = [
    "DirectorySource",
    "GgufFile",
    "PeerSource",
    "Source",
    "import_gguf",
    "open_source",
    "pull",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WRITE_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 0.25
_SOURCE_RECORD = ".source.json"

log = logging.getLogger(__name__)


class Source(Protocol):
    """Where a pull reads a model from."""

    description: str

    async def manifest(self) -> Manifest: ...

    def read(self, filename: str, offset: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """Yield ``(position, chunk)`` from ``offset`` on; position 0 when it could not resume."""
        ...


class PeerSource:
    """A peer's store over HTTP (``GET /v1/store/models/{name}[/files/{file}]``)."""

    def __init__(self, base: str, name: str, client: httpx.AsyncClient, token: str = "") -> None:
        self.base = base
        self.name = name
        self.client = client
        self.headers = auth_headers(token)
        self.description = f"{base}/models/{name}"
        self._manifest: Manifest | None = None

    async def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = await self._fetch_manifest()
        return self._manifest

    async def _fetch_manifest(self) -> Manifest:
        url = f"{self.base}/models/{self.name}"
        with translate_errors("model source", url):
            response = await self.client.get(url, headers=self.headers)
        try:
            check(response, f"model source {url}")
        except NotFoundError:
            raise NotFoundError(
                f"the model source at {self.base} has no model {self.name!r}"
            ) from None
        except ApiError as err:
            raise UsageError(str(err)) from None
        try:
            return msgspec.json.decode(response.content, type=Manifest)
        except msgspec.DecodeError as err:
            raise UsageError(f"{url} did not answer with a model manifest: {err}") from None

    async def read(self, filename: str, offset: int) -> AsyncGenerator[tuple[int, bytes], None]:
        url = f"{self.base}/models/{self.name}/files/{filename}"
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with translate_errors("model source", url):
            async with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code == 206:
                    position = _range_start(response.headers.get("Content-Range", ""))
                    if position != offset:
                        raise ModelError(
                            f"{url} answered a range from byte {position}, not {offset}"
                        )
                elif response.is_success:
                    position = 0
                else:
                    await response.aread()
                    check(response, f"model source {url}")
                async for chunk in response.aiter_bytes(_WRITE_CHUNK):
                    yield position, chunk
                    position += len(chunk)


def _range_start(content_range: str) -> int:
    match = re.match(r"^bytes (\d+)-\d+/\d+$", content_range.strip())
    if match is None:
        raise ModelError(f"the model source answered a malformed Content-Range {content_range!r}")
    return int(match.group(1))


class DirectorySource:
    """A model directory on this host (another store, a USB disk, ...)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = str(directory)

    async def manifest(self) -> Manifest:
        try:
            return read_manifest(self.directory / MANIFEST)
        except ModelError as err:
            raise UsageError(str(err)) from None

    async def read(self, filename: str, offset: int) -> AsyncGenerator[tuple[int, bytes], None]:
        path = self.directory / filename
        try:
            f = await trio.open_file(path, "rb")
        except OSError as err:
            raise ModelError(f"cannot read {path}: {err.strerror}") from None
        async with f:
            await f.seek(offset)
            position = offset
            while chunk := await f.read(_WRITE_CHUNK):
                yield position, chunk
                position += len(chunk)


def peer_store_url(source: str) -> str:
    """``http://host:port`` or ``http://host:port/v1/store`` -> the store's base URL."""
    url = httpx.URL(source)
    path = url.path.rstrip("/")
    if not path:
        path = "/v1/store"
    return str(url.copy_with(path=path, query=None, fragment=None)).rstrip("/")


class GgufFile:
    """A local ``.gguf`` file, converted into the store rather than copied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)


def open_source(
    source: str, name: str, client: httpx.AsyncClient, token: str = "", queen_url: str = ""
) -> Source | GgufFile:
    """The `Source` (or `GgufFile`) that ``source`` names; `UsageError` for anything else.

    `QUEEN_STORE` is the store of the queen at ``queen_url``, the one this hive reports to.
    """
    if source == QUEEN_STORE:
        if not queen_url:
            raise UsageError("this hive reports to no queen, so it cannot pull from the queen")
        source = queen_url
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        scheme = source.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise UsageError(f"unsupported model source {source!r}: use http(s):// or a local path")
        try:
            return PeerSource(peer_store_url(source), name, client, token)
        except httpx.InvalidURL as err:
            raise UsageError(f"invalid model source URL {source!r}: {err}") from None
    path = Path(source).expanduser()
    if path.is_dir() and (path / MANIFEST).is_file():
        return DirectorySource(path)
    if path.is_dir():
        raise UsageError(f"model source {path} is a directory without a {MANIFEST}")
    if path.is_file() and path.suffix.lower() == ".gguf":
        return GgufFile(path)
    if not path.exists():
        raise UsageError(f"model source {path} does not exist on this hive")
    raise UsageError(
        f"model source {path} is neither a model directory (with {MANIFEST}), a .gguf file nor "
        "an http(s) URL of a peer's store"
    )


def _check_manifest(manifest: Manifest, source: str) -> None:
    """Refuse a manifest whose file names could point outside the model directory."""
    for filename, entry in manifest.files.items():
        if (
            not filename
            or filename in (".", "..", MANIFEST)
            or filename.startswith(".")
            or "/" in filename
            or "\\" in filename
            or os.sep in filename
        ):
            raise ModelError(f"the manifest at {source} lists an invalid file name {filename!r}")
        if not _SHA256.match(entry.sha256) or entry.size < 0:
            raise ModelError(f"the manifest at {source} has a malformed entry for {filename}")


def _partial_dir(store: ModelStore, name: str) -> Path:
    return store.root / f".partial-{validate_name(name)}"


def _forget_changed(partial: Path, manifest: Manifest) -> None:
    """Drop partial files that the source has replaced since the last attempt."""
    record = partial / _SOURCE_RECORD
    previous: dict[str, FileEntry] = {}
    if record.is_file():
        try:
            previous = msgspec.json.decode(record.read_bytes(), type=dict[str, FileEntry])
        except msgspec.DecodeError:
            previous = {}
    for path in partial.iterdir():
        if path.name == _SOURCE_RECORD:
            continue
        if path.name not in manifest.files or previous.get(path.name) != manifest.files[path.name]:
            path.unlink()
    record.write_bytes(msgspec.json.encode(manifest.files))


async def _write_chunks(
    path: Path, chunks: AsyncGenerator[tuple[int, bytes], None], entry: FileEntry, filename: str
) -> AsyncGenerator[tuple[int, int], None]:
    """Append the chunks to ``path``; yield ``(done, resumed)`` after each write."""
    resumed = 0
    f = None
    try:
        async with contextlib.aclosing(chunks):
            async for position, chunk in chunks:
                if f is None:
                    resumed = position
                    # Append mode after a truncate to ``position``: a source that could not
                    # resume (position 0) starts the file over, one that could continues it.
                    f = await trio.open_file(path, "a+b")
                    await f.truncate(position)
                if position + len(chunk) > entry.size:
                    raise ModelError(f"{filename}: the source sent more than {entry.size} bytes")
                await f.write(chunk)
                yield position + len(chunk), resumed
    finally:
        if f is not None:
            await f.aclose()


async def pull(
    store: ModelStore, name: str, source: Source, precisions: Sequence[str] = ()
) -> AsyncGenerator[PullEvent, None]:
    """Install ``name`` from ``source`` with the graphs ``precisions`` (empty: every graph the
    source has); yields progress, then `Pulled` once installed.

    Errors: `ModelError` (a file is corrupted, the source misbehaved) or `ConnectError` (the
    source went away); the partial download stays for the next attempt unless it was corrupted.
    """
    validate_name(name)
    manifest = (await source.manifest()).with_precisions(precisions)
    _check_manifest(manifest, source.description)
    partial = _partial_dir(store, name)
    partial.mkdir(parents=True, exist_ok=True)
    _forget_changed(partial, manifest)
    downloaded = resumed_total = 0
    for filename, entry in manifest.files.items():
        path = partial / filename
        have = path.stat().st_size if path.exists() else 0
        if have > entry.size:
            path.unlink()
            have = 0
        resumed = have
        yield PullProgress(file=filename, done=have, total=entry.size, resumed=resumed)
        if have < entry.size:
            last = trio.current_time()
            done = have
            writes = _write_chunks(path, source.read(filename, have), entry, filename)
            async with contextlib.aclosing(writes):
                async for done, resumed in writes:
                    if trio.current_time() - last >= _PROGRESS_EVERY_S:
                        last = trio.current_time()
                        yield PullProgress(
                            file=filename, done=done, total=entry.size, resumed=resumed
                        )
            downloaded += done - resumed
            if done != entry.size:
                raise ModelError(
                    f"{filename}: the source ended after {done} of {entry.size} bytes; "
                    "pull again to resume"
                )
            yield PullProgress(file=filename, done=done, total=entry.size, resumed=resumed)
        elif not path.exists():
            path.touch()
        resumed_total += resumed
        digest = await trio.to_thread.run_sync(sha256_file, path)
        if digest != entry.sha256:
            path.unlink()
            raise ModelError(
                f"model {name}: {filename} is corrupted (its sha256 {digest[:16]}... does not match "
                f"the source manifest's {entry.sha256[:16]}...); the file was deleted, nothing was "
                "installed"
            )
    installed = msgspec.structs.replace(manifest, name=name, source=source.description)
    with store.staging(name) as scratch:
        for filename in manifest.files:
            os.replace(partial / filename, scratch / filename)
        write_manifest(scratch, installed)
    shutil.rmtree(partial, ignore_errors=True)
    yield Pulled(
        name=name,
        size_bytes=installed.size_bytes,
        downloaded_bytes=downloaded,
        resumed_bytes=resumed_total,
    )


async def import_gguf(
    store: ModelStore,
    name: str,
    source: GgufFile,
    nursery: trio.Nursery,
    precisions: Sequence[str] = (),
    *,
    claims: set[str],
) -> AsyncGenerator[PullEvent, None]:
    """Convert a local GGUF into model ``name`` with the graphs ``precisions`` (empty: all);
    yields each step, then `Pulled`. A file that cannot be imported (not a supported GGUF, no
    tokenizer) is a `ModelError` before the first step.

    The conversion runs in a thread owned by ``nursery`` (the hive's), not by this generator: a
    generator must not hold a nursery open across ``yield``, and an import whose client went away
    is still worth finishing. ``name`` is in ``claims`` from the first step of this generator until
    the conversion ends, however the generator is closed.
    """
    from rbee.models.importer import DEFAULT_PRECISIONS
    from rbee.models.importer import import_gguf as convert

    validate_name(name)
    claims.add(name)
    send, receive = trio.open_memory_channel[Importing | Manifest | RbeeError](math.inf)
    token = trio.lowlevel.current_trio_token()

    def progress(step: int, steps: int) -> None:
        event = Importing(file=source.path.name, step=step, steps=steps)
        with contextlib.suppress(trio.BrokenResourceError, trio.RunFinishedError):
            trio.from_thread.run_sync(send.send_nowait, event, trio_token=token)

    async def run() -> None:
        result: Manifest | RbeeError
        try:
            result = await trio.to_thread.run_sync(
                functools.partial(
                    convert,
                    store,
                    source.path,
                    name=name,
                    precisions=precisions or DEFAULT_PRECISIONS,
                    progress=progress,
                ),
                abandon_on_cancel=True,
            )
        except RbeeError as err:
            result = err
        except Exception as err:
            log.exception("import of %s failed", source.path)
            result = ModelError(f"import of {source.path} failed: {type(err).__name__}: {err}")
        finally:
            claims.discard(name)
        with send, contextlib.suppress(trio.BrokenResourceError):
            send.send_nowait(result)

    nursery.start_soon(run)
    with receive:
        async for item in receive:
            if isinstance(item, Importing):
                yield item
            elif isinstance(item, Manifest):
                yield Pulled(
                    name=name, size_bytes=item.size_bytes, downloaded_bytes=0, resumed_bytes=0
                )
                return
            else:
                raise item
    raise ModelError(f"import of {source.path} ended without a result")
